"""Each checkpoint version verified once (structure and checksum): its metadata, or why it cannot be used.

A file that does not verify (bit rot, a bad copy, tampering) is logged once per version and
reported by ``unusable()``; the store never serves it or chooses it by default.
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bnlenet.checkpoint_storage import CheckpointStorage
from bnlenet.model_store.errors import ModelUnusable, fetch, read

__all__ = ["Verdict", "Verifications"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    version: str
    metadata: dict[str, Any] | None  # None: it does not verify
    problem: str | None = None  # why not

    def usable(self, model_id: str) -> dict[str, Any]:
        """The metadata; ModelUnusable when the checkpoint does not verify."""
        if self.metadata is None:
            raise ModelUnusable(model_id, str(self.problem))
        return self.metadata


class Verifications:
    """The verdict on each model's checkpoint, per version."""

    def __init__(self, storage: CheckpointStorage) -> None:
        self.storage = storage
        self._lock = threading.Lock()
        self._verdicts: dict[str, Verdict] = {}

    def check(self, model_id: str, version: str | None) -> Verdict:
        """The verdict on ``version`` (None: whatever the storage holds now); UnknownModel when it is gone."""
        cached = self._verdicts.get(model_id)
        if cached is not None and version is not None and cached.version == version:
            return cached
        path, version = fetch(self.storage, model_id, version)
        cached = self._verdicts.get(model_id)
        if cached is not None and cached.version == version:
            return cached
        try:
            verdict = Verdict(version, read(path, model_id).metadata)
        except ModelUnusable as exc:
            log.warning("model %s is unusable: %s", model_id, exc.reason)
            verdict = Verdict(version, None, exc.reason)
        with self._lock:
            self._verdicts[model_id] = verdict
        return verdict

    def unusable(self) -> builtins.list[tuple[str, str]]:
        """(id, why) of every checkpoint seen not to verify."""
        with self._lock:
            return sorted((i, str(v.problem)) for i, v in self._verdicts.items() if v.metadata is None)

    def keep(self, model_ids: Iterable[str]) -> None:
        """Forget the models not among ``model_ids`` (gone from the storage)."""
        keep = set(model_ids)
        with self._lock:
            for gone in set(self._verdicts) - keep:
                del self._verdicts[gone]

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._verdicts.pop(model_id, None)
