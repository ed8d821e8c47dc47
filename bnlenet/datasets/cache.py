"""What a worker keeps of data sets between jobs: each file fetched once, the last one decoded in memory.

A worker on another host than the store downloads a data set once, by id, into a bounded cache
directory (``DATASET_CACHE_DIR``, least recently used files evicted past
``DATASET_CACHE_MAX_BYTES``: ``bnlenet.checkpoint_storage``'s cache, which several processes of a
host share); the data set decoded for the last job stays in memory for the next. The built-in
Fashion-MNIST comes from ``load_builtin`` (the worker's ``DATA_DIR`` reader) and is never fetched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch

from bnlenet.datasets import dataset_id, read_dataset
from bnlenet.datasets.builtin import BUILTIN_ID
from bnlenet.datasets.store import DatasetStore, UnknownDataset
from models.data import ImageDataset

__all__ = ["DatasetCache"]

log = logging.getLogger(__name__)


class DatasetCache:
    """Data sets by name for training: ``get`` resolves, fetches (once) and decodes (once per process)."""

    def __init__(self, store: DatasetStore, load_builtin: Callable[[], ImageDataset]) -> None:
        self.store = store
        self.load_builtin = load_builtin
        self._lock = threading.Lock()  # one fetch at a time: a second job for the same data set waits for it
        self._last: tuple[str, ImageDataset] | None = None
        self.fetches = 0  # files read from the store or the cache directory (not from memory) by this process

    def get(self, name: str) -> tuple[str, ImageDataset]:
        """(id, data) of the data set ``name`` (an id or alias) means; ``ValueError`` saying why it cannot be had."""
        try:
            ds_id = self.store.resolve(name)
        except UnknownDataset as exc:
            raise ValueError(f"dataset {name!r} cannot be trained on: {exc}") from None
        if ds_id == BUILTIN_ID:
            return ds_id, self.load_builtin()
        with self._lock:
            if self._last is not None and self._last[0] == ds_id:
                return self._last
            started = time.perf_counter()
            try:
                path = self.store.local_file(ds_id)
            except UnknownDataset as exc:
                raise ValueError(f"dataset {name!r} cannot be trained on: {exc}") from None
            prepared = read_dataset(path)
            if dataset_id(prepared) != ds_id:  # a damaged download or a changed object: never train on it
                path.unlink(missing_ok=True)
                raise ValueError(f"dataset {ds_id!r}: the stored file does not hold the data set of that id; "
                                 "upload it again")
            data = ImageDataset(
                torch.from_numpy(prepared.train_images), torch.from_numpy(prepared.train_labels),
                torch.from_numpy(prepared.test_images), torch.from_numpy(prepared.test_labels),
                classes=tuple(prepared.classes), source=ds_id,
            )
            self._last = (ds_id, data)  # the previous one is released: one uploaded data set in memory at a time
            self.fetches += 1
            log.info("dataset %s: read %s in %.2f s", ds_id, path, time.perf_counter() - started)
            return self._last
