"""``ModelStore``: checkpoints and aliases in a storage, with what serving needs kept in memory.

It composes the concepts of this package: the listing (one refresh rule), the verification of
each checkpoint version, the aliases' rules and the LRU of loaded models. It does its job and
nothing else: it emits no metrics (the API observes it through ``cached`` and ``load``,
``app.metrics.MeteredModelStore``) and knows nothing of Redis (the edges announce changes to
other processes, ``bnlenet.model_news``).
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from bnlenet.checkpoint_storage import CheckpointStorage, LocalStorage, ObjectStoreUnavailable, open_storage
from bnlenet.model_store import aliases
from bnlenet.model_store.errors import NoModelYet, UnknownModel, check_name, fetch, read
from bnlenet.model_store.listing import Listing, Snapshot
from bnlenet.model_store.loaded import LoadedModel, LoadedModels
from bnlenet.model_store.verification import Verifications
from models.checkpoint import checkpoint_bytes

if TYPE_CHECKING:
    from bnlenet.settings import Settings

__all__ = ["MISS_REFRESH_S", "ModelStore"]

# A name not in the listing, or no model at all, lists the storage again before the answer says so,
# at most this often per process, so that a flood of misses cannot become a flood of listings.
MISS_REFRESH_S = 0.1


class ModelStore:
    """Checkpoints in ``storage`` (a directory path is a local one), with caches for serving."""

    def __init__(self, storage: CheckpointStorage | str | os.PathLike[str], *, cache_size: int = 8,
                 refresh_s: float = 1.0, default_alias: str | None = None, background: bool = False) -> None:
        self.storage: CheckpointStorage = (
            LocalStorage(storage) if isinstance(storage, str | os.PathLike) else storage
        )
        self.default_alias = default_alias
        # A serving process lists in a thread of its own, so that no request waits on the storage.
        self.listing = Listing(self.storage, refresh_s=refresh_s, background=background, on_listed=self._listed)
        self.verifications = Verifications(self.storage)
        self.loaded = LoadedModels(cache_size)
        # The newest model of one listing, and whether every model listed could be read to tell.
        self._newest: tuple[Snapshot, str | None, bool] | None = None

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
        self.listing.close()

    @property
    def location(self) -> str:
        return self.storage.location

    def refresh_soon(self, then: Callable[[bool], None]) -> None:
        """List the storage again in the background, in a look that starts now; ``then(listed)`` once done
        (and, in a serving store, once the newest model is known)."""
        def listed(ok: bool) -> None:  # and, in a serving store, every listed checkpoint was verified
            known = self._newest
            warm = not self.listing.background or (known is not None and known[0] is self.listing.current()
                                                   and known[2])
            then(ok and warm)

        self.listing.refresh_soon(listed)

    def _listed(self, snapshot: Snapshot) -> None:
        """A new listing: what another process deleted or replaced stops being served here."""
        self.loaded.keep(snapshot.versions)
        self.verifications.keep(snapshot.versions)
        if self.listing.background:  # the listing thread verifies new checkpoints, not a request
            self._newest_in(snapshot)

    def _after_write(self) -> None:
        """List again now, after this process changed the storage, so that it sees its own change at once."""
        if self.listing.listed:
            self.listing.refresh()

    def _after_miss(self, snapshot: Snapshot) -> Snapshot:
        """A fresh listing when ``snapshot`` may be missing something (rate-limited), else ``snapshot``."""
        if snapshot.down is None and time.monotonic() - snapshot.at >= MISS_REFRESH_S:
            return self.listing.refresh()
        return snapshot

    # names
    def resolve(self, name: str) -> str:
        """The model id ``name`` means: itself when such a model exists, else the model its alias points at."""
        check_name(name)
        snapshot = self.listing.current()
        found = aliases.model_named(snapshot, name)
        if found is None:
            snapshot = self._after_miss(snapshot)
            found = aliases.model_named(snapshot, name)
        if found is not None:
            return found
        if snapshot.down is not None:  # it may exist: the store cannot say
            raise ObjectStoreUnavailable(f"{name!r} is not among the models listed before the model store became "
                                         f"unreachable, so it cannot be looked up now: {snapshot.down}")
        if self.storage.version(name) is not None:  # published since the last listing
            return name
        raise UnknownModel(f"no model or alias named {name!r}")

    def aliases(self) -> dict[str, str]:
        """Every alias and the model id it points at, as of the last listing."""
        return dict(self.listing.current().aliases)

    def aliases_of(self, model_id: str) -> builtins.list[str]:
        return aliases.pointing_at(self.listing.current().aliases, model_id)

    # metadata
    def list(self) -> builtins.list[tuple[str, dict[str, Any]]]:
        """Every model that verifies, newest first."""
        return self._models_in(self.listing.current())

    def _models_in(self, snapshot: Snapshot) -> builtins.list[tuple[str, dict[str, Any]]]:
        return self._read_models(snapshot)[0]

    def _read_models(self, snapshot: Snapshot) -> tuple[builtins.list[tuple[str, dict[str, Any]]], bool]:
        """The models of ``snapshot`` that verify, newest first, and whether every one could be read."""
        found, complete = [], True
        for model_id, version in snapshot.versions.items():
            try:
                meta = self.verifications.check(model_id, version).metadata
            except (UnknownModel, ObjectStoreUnavailable):
                complete = False
                continue  # deleted since the listing, or not fetchable now
            if meta is not None:
                found.append((model_id, meta))
        found.sort(key=lambda item: (str(item[1].get("created_at", "")), item[0]), reverse=True)
        return found, complete

    def children(self) -> dict[str, builtins.list[str]]:
        """Each parent's children (the models whose metadata names it as ``parent``), oldest first, as of
        the last listing; a deleted parent's children are listed under its id still."""
        found: dict[str, builtins.list[str]] = {}
        for model_id, meta in reversed(self.list()):
            parent = meta.get("parent")
            if isinstance(parent, str):
                found.setdefault(parent, []).append(model_id)
        return found

    def unusable(self) -> builtins.list[tuple[str, str]]:
        """(id, why) of every checkpoint that does not verify, as of the last listing."""
        return self.verifications.unusable()

    def metadata(self, name: str) -> dict[str, Any]:
        """The verified metadata of the model ``name`` (an id or an alias) means."""
        model_id = self.resolve(name)
        return self.verifications.check(model_id, self.listing.current().versions.get(model_id)).usable(model_id)

    def newest(self) -> str:
        """The id of the newest model that verifies, as of the last listing (computed once per listing)."""
        snapshot = self.listing.current()
        newest = self._newest_in(snapshot)
        if newest is None:
            newest = self._newest_in(self._after_miss(snapshot))
        if newest is None:
            raise NoModelYet("no trained model yet: train one with POST /train and wait for it to succeed")
        return newest

    def _newest_in(self, snapshot: Snapshot) -> str | None:
        known = self._newest
        if known is not None and known[0] is snapshot:
            return known[1]
        models, complete = self._read_models(snapshot)
        newest = models[0][0] if models else None
        self._newest = (snapshot, newest, complete)
        return newest

    def default(self) -> str:
        """The model served when none is named: the default alias's when it exists and verifies, else the newest.

        A promoted checkpoint damaged since is listed under ``unusable`` and never blocks the
        unnamed predictions (it is still what the alias names, and asked by it, answers why).
        """
        if self.default_alias:
            snapshot = self.listing.current()
            target = snapshot.aliases.get(self.default_alias)
            if target is not None:
                try:
                    if self.verifications.check(target, snapshot.versions.get(target)).metadata is None:
                        return self.newest()  # fails verification
                except (UnknownModel, ObjectStoreUnavailable):
                    pass  # gone since the listing, or cannot tell now: serving it says which
                return target
        return self.newest()

    def local_checkpoint(self, name: str) -> Path:
        """A local file holding the verified checkpoint of the model ``name`` means (a download for S3)."""
        model_id = self.resolve(name)
        verdict = self.verifications.check(model_id, self.listing.current().versions.get(model_id))
        verdict.usable(model_id)
        return fetch(self.storage, model_id, verdict.version)[0]  # the version verified: a cached copy

    # writing
    def publish(self, model_id: str, model: nn.Module, metadata: dict[str, Any], *,
                before_commit: Callable[[], None] | None = None) -> str:
        """Store the checkpoint atomically; it is listed whole or not at all. Returns where it went.

        ``before_commit`` runs just before it becomes visible; raising there publishes nothing.
        """
        check_name(model_id)
        payload = checkpoint_bytes(model, {**metadata, "model_id": model_id})
        where = self.storage.publish(model_id, payload, before_commit)
        self._after_write()
        return where

    def delete(self, name: str) -> str:
        """Remove the model's checkpoint; returns its id. Refused while an alias points at it."""
        model_id = self.resolve(name)
        aliases.check_not_pointed_at(self.storage, model_id)
        if not self.storage.delete(model_id):
            raise UnknownModel(f"no model with id {model_id!r}")
        self.loaded.drop(model_id)
        self.verifications.forget(model_id)
        self._after_write()
        return model_id

    def set_alias(self, alias: str, name: str) -> str:
        """Point ``alias`` at the model ``name`` means (which must verify); returns that model's id."""
        check_name(alias, "alias")
        model_id = self.resolve(name)
        self.metadata(model_id)  # 409 for a model that cannot be served
        aliases.check_not_shadowing(alias, model_id, self.storage)
        self.storage.set_alias(alias, model_id)
        self._after_write()
        return model_id

    def delete_alias(self, alias: str) -> None:
        check_name(alias, "alias")
        if not self.storage.delete_alias(alias):
            raise UnknownModel(f"no alias named {alias!r}")
        self._after_write()

    # serving
    def get(self, name: str | None = None) -> LoadedModel:
        """A loaded model (the default one when ``name`` is None); loaded once, then from the LRU."""
        if name is None:
            model_id = self.default()
        else:
            model_id = name if name in self.loaded else self.resolve(name)
        return self.cached(model_id) or self.load(model_id)

    def cached(self, model_id: str) -> LoadedModel | None:
        """``model_id`` from the LRU, if it is there and its checkpoint is still the one listed."""
        if model_id in self.loaded:
            self.listing.current()  # at most once per refresh_s: drops models deleted or replaced elsewhere
        return self.loaded.get(model_id)

    def load(self, model_id: str) -> LoadedModel:
        """Read, verify and load ``model_id``'s checkpoint into the LRU."""
        path, version = fetch(self.storage, model_id, self.listing.current().versions.get(model_id))
        checkpoint = read(path, model_id)
        model = checkpoint.model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        loaded = LoadedModel(model_id, model, checkpoint.metadata, version)
        self.loaded.put(loaded)
        return loaded
