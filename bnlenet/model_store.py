"""The model store: trained checkpoints and their aliases, shared by the API, the workers and the CLI.

Checkpoints live in a ``bnlenet.checkpoint_storage``: a local directory (the embedded default)
or an S3-compatible bucket, which lets workers on other hosts publish to the API. The storage
is the registry: listing and serving need nothing else, Redis included. A model id must match
``MODEL_ID_PATTERN`` (no path separators, no dots), so no id can name anything outside it.

Aliases (``production``, ``champion``) point at model ids, and may be given wherever a model id
is: a name is a model id if such a model exists, else an alias. ``get(None)`` serves the model
the ``default_alias`` points at when that alias exists, else the newest model.

Serving keeps the storage off the hot path: loaded models sit in a bounded LRU; the listing of
models and aliases is refreshed at most once per ``refresh_s`` (so an alias moved or a model
deleted by any process takes effect everywhere within about that time); each checkpoint version
is verified (structure and checksum) once and the outcome cached. A file that does not verify
(bit rot, a bad copy, tampering) is logged, reported by ``unusable()``, and never served or
chosen by default. When the storage cannot be reached, loaded models go on being served from
the last listing, and the rest raise ``ObjectStoreUnavailable``.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from bnlenet import metrics
from bnlenet.checkpoint_storage import CheckpointStorage, LocalStorage, ObjectStoreUnavailable, open_storage
from models.checkpoint import CheckpointError, checkpoint_bytes, load_checkpoint
from models.export import check_export_format, export_bytes_in_subprocess
from models.files import write_atomically

if TYPE_CHECKING:
    from bnlenet.settings import Settings

__all__ = [
    "MODEL_ID_PATTERN",
    "AliasConflict",
    "LoadedModel",
    "ModelStore",
    "ModelUnusable",
    "NoModelYet",
    "ObjectStoreUnavailable",
    "UnknownModel",
    "valid_model_id",
]

log = logging.getLogger(__name__)

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_MODEL_ID = re.compile(MODEL_ID_PATTERN)
_CACHE_HIT, _CACHE_MISS = metrics.MODEL_CACHE.labels("hit"), metrics.MODEL_CACHE.labels("miss")


class UnknownModel(LookupError):
    """No model or alias with this name (including names that could never be one)."""


class NoModelYet(LookupError):
    """No trained model exists at all."""


class ModelUnusable(RuntimeError):
    """The model's checkpoint exists but cannot be trusted or loaded."""


class AliasConflict(RuntimeError):
    """An alias change that would make a name ambiguous or leave an alias dangling."""


def valid_model_id(model_id: str) -> bool:
    return bool(_MODEL_ID.fullmatch(model_id))


def _check_name(name: str, what: str = "model") -> str:
    if not valid_model_id(name):
        raise UnknownModel(f"no {what} named {name!r} ({what} names are 1-64 letters, digits, '-' or '_', "
                           "starting with a letter or digit)")
    return name


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    model: nn.Module  # eval mode, CPU
    metadata: dict[str, Any]
    version: str = ""  # the storage's version of the checkpoint it was loaded from


@dataclass
class _Listing:
    versions: dict[str, str] = field(default_factory=dict)  # model id -> version
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> model id
    at: float = float("-inf")  # time.monotonic() of the last successful refresh
    down: str | None = None  # why the last refresh failed, when it did
    newest: str | None = None  # computed on first use
    newest_known: bool = False


class ModelStore:
    """Checkpoints in ``storage`` (a directory path is a local one), with caches for serving."""

    def __init__(self, storage: CheckpointStorage | str | os.PathLike[str], *, cache_size: int = 8,
                 refresh_s: float = 1.0, default_alias: str | None = None, background: bool = False) -> None:
        self.storage: CheckpointStorage = (
            LocalStorage(storage) if isinstance(storage, str | os.PathLike) else storage
        )
        self.cache_size = cache_size
        self.refresh_s = refresh_s
        self.default_alias = default_alias
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        # id -> (version, verified metadata or None, why not)
        self._meta: dict[str, tuple[str, dict[str, Any] | None, str | None]] = {}
        self._listing: _Listing | None = None
        # A serving process lists in a thread of its own, so that no request waits on the storage.
        self.background = background
        self._refresher: threading.Thread | None = None
        self._closed = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings, *, background: bool = False) -> ModelStore:
        """The store ``CHECKPOINT_DIR`` names, with the settings' caches (``background``: for serving)."""
        storage = open_storage(settings.CHECKPOINT_DIR, cache_dir=settings.MODEL_CACHE_DIR,
                               max_cache_bytes=settings.MODEL_CACHE_MAX_BYTES,
                               upload_retry_s=settings.OBJECT_STORE_RETRY_S)
        return cls(storage, cache_size=settings.MODEL_CACHE_SIZE, refresh_s=settings.NEWEST_MODEL_REFRESH_S,
                   default_alias=settings.DEFAULT_MODEL_ALIAS or None, background=background)

    def close(self) -> None:
        """Stop the background listing, if one runs."""
        self._closed.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)

    @property
    def location(self) -> str:
        return self.storage.location

    # the listing
    def _current(self) -> _Listing:
        """The listing, refreshed when older than ``refresh_s``; a stale one while the storage is down."""
        listing = self._listing
        if listing is None:
            with self._refreshing:
                if self._listing is None:
                    self._refresh(None)
            assert self._listing is not None
            return self._listing
        if self.background:
            if self._refresher is None and not self._closed.is_set():
                with self._lock:
                    if self._refresher is None:
                        self._refresher = threading.Thread(target=self._refresh_forever, daemon=True,
                                                           name="model-store-listing")
                        self._refresher.start()
            return self._listing or listing
        if time.monotonic() - listing.at >= self.refresh_s:
            if listing.down is not None:
                # Down at the last look: ask again off the request path, serve what we know meanwhile.
                if self._refreshing.acquire(blocking=False):
                    threading.Thread(target=self._refresh_and_release, daemon=True).start()
            elif self._refreshing.acquire(blocking=False):  # one refresher; the others use the last listing
                try:
                    self._refresh(listing)
                finally:
                    self._refreshing.release()
        return self._listing or listing

    def _refresh_forever(self) -> None:
        while not self._closed.wait(max(0.0, self.refresh_s - (time.monotonic() - self._listing_at()))):
            with self._refreshing:
                try:
                    self._refresh(self._listing)
                except Exception:  # never let the listing thread die: serving goes on from the last listing
                    log.exception("listing the model store failed")
                    time.sleep(self.refresh_s)

    def _listing_at(self) -> float:
        listing = self._listing
        return listing.at if listing is not None else float("-inf")

    def _refresh_and_release(self) -> None:
        try:
            self._refresh(self._listing)
        finally:
            self._refreshing.release()

    def _refresh(self, previous: _Listing | None) -> None:
        try:
            versions, aliases = self.storage.versions(), self.storage.aliases()
        except ObjectStoreUnavailable as exc:
            if previous is None:
                raise
            if previous.down is None:
                log.warning("model store unreachable, serving from the last listing: %s", exc)
            previous.down, previous.at = str(exc), time.monotonic()
            return
        if previous is not None and previous.down is not None:
            log.info("model store %s reachable again", self.location)
        listing = _Listing({i: v for i, v in versions.items() if valid_model_id(i)}, aliases, time.monotonic())
        self._listing = listing
        with self._lock:  # what another process deleted or replaced stops being served here
            for model_id in list(self._loaded):
                if listing.versions.get(model_id) != self._loaded[model_id].version:
                    self._loaded.pop(model_id, None)
            for gone in set(self._meta) - set(listing.versions):
                self._meta.pop(gone, None)

    def _invalidate(self) -> None:
        """List again now, after this process changed the storage, so that it sees its own change at once."""
        listing = self._listing
        if listing is None:
            return
        listing.at, listing.newest_known = float("-inf"), False
        with self._refreshing:
            try:
                self._refresh(self._listing)
            except ObjectStoreUnavailable:
                pass  # the next look tries again

    def resolve(self, name: str) -> str:
        """The model id ``name`` means: itself when such a model exists, else the model its alias points at."""
        _check_name(name)
        listing = self._current()
        if name in listing.versions:
            return name
        if name in listing.aliases:
            return listing.aliases[name]
        if listing.down is not None:  # it may exist: the store cannot say
            raise ObjectStoreUnavailable(f"{name!r} is not among the models listed before the model store became "
                                         f"unreachable, so it cannot be looked up now: {listing.down}")
        if self.storage.version(name) is not None:  # published since the last listing
            return name
        raise UnknownModel(f"no model or alias named {name!r}")

    def aliases(self) -> dict[str, str]:
        """Every alias and the model id it points at, as of the last listing."""
        return dict(self._current().aliases)

    def aliases_of(self, model_id: str) -> builtins.list[str]:
        return sorted(a for a, target in self._current().aliases.items() if target == model_id)

    # metadata
    def _checked(self, model_id: str, version: str | None) -> tuple[dict[str, Any] | None, str | None, str]:
        """(metadata, None, version) for a checkpoint that verifies, else (None, why, version); once per version."""
        cached = self._meta.get(model_id)
        if cached is not None and version is not None and cached[0] == version:
            return cached[1], cached[2], version
        try:
            path, version = self.storage.fetch(model_id, version)
        except FileNotFoundError:
            raise UnknownModel(f"no model with id {model_id!r}") from None
        cached = self._meta.get(model_id)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2], version
        meta: dict[str, Any] | None = None
        problem: str | None = None
        try:
            meta = load_checkpoint(path).metadata
        except CheckpointError as exc:
            problem = str(exc).replace(str(path), f"{model_id}.safetensors")  # no server paths in answers
            log.warning("model %s is unusable: %s", model_id, problem)
        with self._lock:
            self._meta[model_id] = (version, meta, problem)
        return meta, problem, version

    def list(self) -> builtins.list[tuple[str, dict[str, Any]]]:
        """Every model that verifies, newest first."""
        found = []
        for model_id, version in self._current().versions.items():
            try:
                meta, _, _ = self._checked(model_id, version)
            except (UnknownModel, ObjectStoreUnavailable):
                continue  # deleted since the listing, or not fetchable now
            if meta is not None:
                found.append((model_id, meta))
        found.sort(key=lambda item: (str(item[1].get("created_at", "")), item[0]), reverse=True)
        return found

    def unusable(self) -> builtins.list[tuple[str, str]]:
        """(id, why) of every checkpoint that does not verify, as of the last listing."""
        with self._lock:
            return sorted((i, problem) for i, (_, meta, problem) in self._meta.items() if problem is not None)

    def metadata(self, name: str) -> dict[str, Any]:
        """The verified metadata of the model ``name`` (an id or an alias) means."""
        return self._verified(self.resolve(name))[0]

    def _verified(self, model_id: str) -> tuple[dict[str, Any], str]:
        """The metadata and version of ``model_id``'s checkpoint, which verifies; ModelUnusable otherwise."""
        meta, problem, version = self._checked(model_id, self._current().versions.get(model_id))
        if meta is None:
            raise ModelUnusable(f"model {model_id!r} cannot be used: {problem}")
        return meta, version

    def newest(self) -> str:
        """The id of the newest model that verifies, as of the last listing (computed once per listing)."""
        listing = self._current()
        if not listing.newest_known:
            models = self.list()
            listing.newest, listing.newest_known = (models[0][0] if models else None), True
        if listing.newest is None:
            raise NoModelYet("no trained model yet: train one with POST /train and wait for it to succeed")
        return listing.newest

    def default(self) -> str:
        """The model served when none is named: the default alias's when it exists, else the newest."""
        if self.default_alias:
            target = self._current().aliases.get(self.default_alias)
            if target is not None:
                return target
        return self.newest()

    def local_checkpoint(self, name: str) -> Path:
        """A local file holding the verified checkpoint of the model ``name`` means (a download for S3)."""
        model_id = self.resolve(name)
        _, version = self._verified(model_id)
        try:  # the version just verified: a cached copy, not a second download
            path, _ = self.storage.fetch(model_id, version)
        except FileNotFoundError:
            raise UnknownModel(f"no model with id {model_id!r}") from None
        return path

    # writing
    def publish(self, model_id: str, model: nn.Module, metadata: dict[str, Any], *,
                before_commit: Callable[[], None] | None = None) -> str:
        """Store the checkpoint atomically; it is listed whole or not at all. Returns where it went.

        ``before_commit`` runs just before it becomes visible; raising there publishes nothing.
        """
        _check_name(model_id)
        payload = checkpoint_bytes(model, {**metadata, "model_id": model_id})
        where = self.storage.publish(model_id, payload, before_commit)
        self._invalidate()  # let this process see it at once
        return where

    def delete(self, name: str) -> str:
        """Remove the model's checkpoint; returns its id. Refused while an alias points at it.

        This process stops serving it at once, the others within ``refresh_s``.
        """
        model_id = self.resolve(name)
        pointing = sorted(a for a, target in self.storage.aliases().items() if target == model_id)
        if pointing:
            raise AliasConflict(f"model {model_id!r} is what alias(es) {', '.join(pointing)} point at: move or "
                                f"delete {'them' if len(pointing) > 1 else 'it'} first "
                                "(PUT or DELETE /models/{id}/aliases/{alias})")
        if not self.storage.delete(model_id):
            raise UnknownModel(f"no model with id {model_id!r}")
        with self._lock:
            self._loaded.pop(model_id, None)
            self._meta.pop(model_id, None)
        self._invalidate()
        return model_id

    def set_alias(self, alias: str, name: str) -> str:
        """Point ``alias`` at the model ``name`` means (which must verify); returns that model's id."""
        _check_name(alias, "alias")
        model_id = self.resolve(name)
        self.metadata(model_id)  # 409 for a model that cannot be served
        if alias == model_id or self.storage.version(alias) is not None:
            raise AliasConflict(f"{alias!r} is a model id; an alias must not shadow a model: choose another name")
        self.storage.set_alias(alias, model_id)
        self._invalidate()
        return model_id

    def delete_alias(self, alias: str) -> None:
        _check_name(alias, "alias")
        if not self.storage.delete_alias(alias):
            raise UnknownModel(f"no alias named {alias!r}")
        self._invalidate()

    # exports
    def export_path(self, name: str, fmt: str, directory: str | os.PathLike[str] | None = None) -> Path:
        """Where the cached export of a model in ``fmt`` lives (default directory: the storage's exports dir).

        The name carries the checkpoint's checksum, so a model id whose checkpoint is replaced
        never serves the old export.
        """
        fmt = check_export_format(fmt)
        model_id = self.resolve(name)
        checksum = str(self.metadata(model_id).get("checksum", ""))[:16] or "nochecksum"
        root = Path(directory) if directory is not None else self.storage.exports_dir
        return root / f"{model_id}.{checksum}.{fmt}"

    def export(self, name: str, fmt: str, directory: str | os.PathLike[str] | None = None) -> Path:
        """The export of a model in ``fmt``, made on first use and cached (atomically written) after.

        ``safetensors`` is the checkpoint itself. Unknown or unusable models raise as ``metadata``
        does; the checkpoint is verified again while exporting.
        """
        fmt = check_export_format(fmt)
        model_id = self.resolve(name)
        source = self.local_checkpoint(model_id)
        if fmt == "safetensors":
            return source
        target = self.export_path(model_id, fmt, directory)
        if target.is_file():
            return target
        try:
            checkpoint = load_checkpoint(source)
        except CheckpointError as exc:
            reason = str(exc).replace(str(source), f"{model_id}.safetensors")  # no server paths in answers
            raise ModelUnusable(f"model {model_id!r} cannot be used: {reason}") from exc
        # In a child process: torch.export patches process-wide state, which breaks the forward
        # passes a serving process runs in other threads meanwhile (models.export).
        payload = export_bytes_in_subprocess(checkpoint.model, checkpoint.metadata, fmt, model_id=model_id)
        return write_atomically(target, payload)

    # serving
    def get(self, name: str | None = None) -> LoadedModel:
        """A loaded model (the default one when ``name`` is None); loaded once, then from the LRU."""
        if name is None:
            model_id = self.default()
        else:
            model_id = name if name in self._loaded else self.resolve(name)
        loaded = self._loaded.get(model_id)
        if loaded is not None:
            self._current()  # at most once per refresh_s: drops models deleted or replaced elsewhere
            loaded = self._loaded.get(model_id)
        if loaded is not None:
            _CACHE_HIT.inc()
            with self._lock:
                if model_id in self._loaded:
                    self._loaded.move_to_end(model_id)
            return loaded
        _CACHE_MISS.inc()
        started = time.perf_counter()
        try:
            loaded = self._load(model_id)
        except (UnknownModel, ModelUnusable, ObjectStoreUnavailable):
            metrics.MODEL_LOADS.labels("error").inc()
            raise
        metrics.MODEL_LOADS.labels("ok").inc()
        metrics.MODEL_LOAD_SECONDS.observe(time.perf_counter() - started)
        return loaded

    def _load(self, model_id: str) -> LoadedModel:
        try:
            path, version = self.storage.fetch(model_id, self._current().versions.get(model_id))
        except FileNotFoundError:
            raise UnknownModel(f"no model with id {model_id!r}") from None
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as exc:
            reason = str(exc).replace(str(path), f"{model_id}.safetensors")  # no server paths in answers
            raise ModelUnusable(f"model {model_id!r} cannot be used: {reason}") from exc
        model = checkpoint.model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        loaded = LoadedModel(model_id, model, checkpoint.metadata, version)
        with self._lock:
            self._loaded[model_id] = loaded
            self._loaded.move_to_end(model_id)
            while len(self._loaded) > self.cache_size:
                self._loaded.popitem(last=False)
        return loaded
