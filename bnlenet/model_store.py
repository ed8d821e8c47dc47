"""The model store: trained checkpoints in one directory, shared by the API and the worker.

The one place that knows the path rule: model ``<id>`` lives in
``<CHECKPOINT_DIR>/<id>.safetensors``, and an id must match ``MODEL_ID_PATTERN`` (no path
separators, no dots), so no id can name a file outside the directory. The directory is the
registry: listing and serving work from disk alone, with Redis down.

Serving keeps the disk off the hot path: loaded models sit in a bounded LRU, each file is
verified (structure and checksum) once per (mtime, size) and the outcome cached, and "the
newest model" is recomputed at most once per ``refresh_s``, among checkpoints that verify: a
file that does not (bit rot, a bad copy, tampering) is logged and reported by ``unusable()``,
and never becomes the default model.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.export import check_export_format, export_checkpoint

__all__ = [
    "MODEL_ID_PATTERN",
    "LoadedModel",
    "ModelStore",
    "ModelUnusable",
    "NoModelYet",
    "UnknownModel",
    "valid_model_id",
]

log = logging.getLogger(__name__)

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_MODEL_ID = re.compile(MODEL_ID_PATTERN)
SUFFIX = ".safetensors"
EXPORTS_DIR = "exports"  # cached exports, under the checkpoint directory unless EXPORT_DIR names another


class UnknownModel(LookupError):
    """No model with this id (including ids that could never name one)."""


class NoModelYet(LookupError):
    """No trained model exists at all."""


class ModelUnusable(RuntimeError):
    """The model's checkpoint exists but cannot be trusted or loaded."""


def valid_model_id(model_id: str) -> bool:
    return bool(_MODEL_ID.fullmatch(model_id))


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    model: nn.Module  # eval mode, CPU
    metadata: dict[str, Any]


class ModelStore:
    """Checkpoints under ``directory``, with caches for serving."""

    def __init__(self, directory: str | os.PathLike[str], *, cache_size: int = 8, refresh_s: float = 1.0) -> None:
        self.directory = Path(directory)
        self.cache_size = cache_size
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        # id -> ((mtime, size), verified metadata or None, why not)
        self._meta: dict[str, tuple[tuple[int, int], dict[str, Any] | None, str | None]] = {}
        self._newest: str | None = None
        self._newest_at = float("-inf")

    def export_path(self, model_id: str, fmt: str, directory: str | os.PathLike[str] | None = None) -> Path:
        """Where the cached export of ``model_id`` in ``fmt`` lives (default directory: ``<checkpoints>/exports``).

        The name carries the checkpoint's checksum, so a model id whose checkpoint is replaced
        never serves the old export.
        """
        fmt = check_export_format(fmt)
        checksum = str(self.metadata(model_id).get("checksum", ""))[:16] or "nochecksum"
        root = Path(directory) if directory is not None else self.directory / EXPORTS_DIR
        return root / f"{model_id}.{checksum}.{fmt}"

    def export(self, model_id: str, fmt: str, directory: str | os.PathLike[str] | None = None) -> Path:
        """The export of ``model_id`` in ``fmt``, made on first use and cached (atomically written) after.

        ``safetensors`` is the checkpoint itself. Unknown or unusable models raise as ``metadata``
        does; the checkpoint is verified again while exporting.
        """
        fmt = check_export_format(fmt)
        if fmt == "safetensors":
            self.metadata(model_id)
            return self.path_for(model_id)
        target = self.export_path(model_id, fmt, directory)
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        source = self.path_for(model_id)
        try:
            return export_checkpoint(source, fmt, target, model_id=model_id)
        except CheckpointError as exc:
            if not source.is_file():
                raise UnknownModel(f"no model with id {model_id!r}") from exc
            reason = str(exc).replace(str(source), source.name)  # no server paths in answers
            raise ModelUnusable(f"model {model_id!r} cannot be used: {reason}") from exc

    def path_for(self, model_id: str) -> Path:
        """The checkpoint path of ``model_id``; an id that breaks the rule is an unknown model."""
        if not valid_model_id(model_id):
            raise UnknownModel(
                f"no model with id {model_id!r} (model ids are 1-64 letters, digits, '-' or '_')"
            )
        return self.directory / f"{model_id}{SUFFIX}"

    # writing
    def publish(self, model_id: str, model: nn.Module, metadata: dict[str, Any], *,
                before_commit: Callable[[], None] | None = None) -> Path:
        """Write the checkpoint atomically; it is visible whole or not at all.

        ``before_commit`` runs just before it becomes visible; raising there publishes nothing.
        """
        path = save_checkpoint(self.path_for(model_id), model, {**metadata, "model_id": model_id},
                               before_commit=before_commit)
        self._newest_at = float("-inf")  # let this process see it at once
        return path

    # metadata
    def _scan(self) -> list[tuple[str, dict[str, Any]]]:
        """(id, metadata) of every checkpoint that verifies, newest first."""
        found: list[tuple[str, dict[str, Any]]] = []
        seen: set[str] = set()
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            name = entry.name
            if not name.endswith(SUFFIX) or name.startswith("."):
                continue
            model_id = name[: -len(SUFFIX)]
            if not valid_model_id(model_id):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            seen.add(model_id)
            meta, _ = self._checked(model_id, Path(entry.path), (st.st_mtime_ns, st.st_size))
            if meta is not None:
                found.append((model_id, meta))
        with self._lock:
            for gone in set(self._meta) - seen:
                self._meta.pop(gone, None)
        found.sort(key=lambda item: (str(item[1].get("created_at", "")), item[0]), reverse=True)
        return found

    def _checked(self, model_id: str, path: Path, stamp: tuple[int, int]) -> tuple[dict[str, Any] | None, str | None]:
        """(metadata, None) for a checkpoint that verifies, else (None, why); once per file version."""
        cached = self._meta.get(model_id)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        meta: dict[str, Any] | None = None
        problem: str | None = None
        try:
            meta = load_checkpoint(path).metadata
        except CheckpointError as exc:
            problem = str(exc).replace(str(path), path.name)  # no server paths in answers
            log.warning("model %s is unusable: %s", model_id, problem)
        with self._lock:
            self._meta[model_id] = (stamp, meta, problem)
        return meta, problem

    def list(self) -> list[tuple[str, dict[str, Any]]]:
        """Every model that verifies, newest first."""
        return self._scan()

    def unusable(self) -> builtins.list[tuple[str, str]]:
        """(id, why) of every checkpoint file that does not verify, as of the last listing."""
        with self._lock:
            return sorted((i, problem) for i, (_, meta, problem) in self._meta.items() if problem is not None)

    def metadata(self, model_id: str) -> dict[str, Any]:
        path = self.path_for(model_id)
        try:
            st = path.stat()
        except OSError as exc:
            raise UnknownModel(f"no model with id {model_id!r}") from exc
        meta, problem = self._checked(model_id, path, (st.st_mtime_ns, st.st_size))
        if meta is None:
            raise ModelUnusable(f"model {model_id!r} cannot be used: {problem}")
        return meta

    def newest(self) -> str:
        """The id of the newest model that verifies, recomputed at most every ``refresh_s`` seconds."""
        now = time.monotonic()
        if now - self._newest_at >= self.refresh_s:
            models = self._scan()
            self._newest = models[0][0] if models else None
            self._newest_at = now
        if self._newest is None:
            raise NoModelYet("no trained model yet: train one with POST /train and wait for it to succeed")
        return self._newest

    # serving
    def get(self, model_id: str | None = None) -> LoadedModel:
        """A loaded model (the newest when ``model_id`` is None); loaded once, then from the LRU."""
        if model_id is None:
            model_id = self.newest()
        loaded = self._loaded.get(model_id)
        if loaded is not None:
            with self._lock:
                if model_id in self._loaded:
                    self._loaded.move_to_end(model_id)
            return loaded
        return self._load(model_id)

    def _load(self, model_id: str) -> LoadedModel:
        path = self.path_for(model_id)
        if not path.is_file():
            raise UnknownModel(f"no model with id {model_id!r}")
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as exc:
            reason = str(exc).replace(str(path), path.name)  # no server paths in answers
            raise ModelUnusable(f"model {model_id!r} cannot be used: {reason}") from exc
        model = checkpoint.model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        loaded = LoadedModel(model_id, model, checkpoint.metadata)
        with self._lock:
            self._loaded[model_id] = loaded
            self._loaded.move_to_end(model_id)
            while len(self._loaded) > self.cache_size:
                self._loaded.popitem(last=False)
        return loaded
