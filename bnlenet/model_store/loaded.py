"""Models loaded for serving: a bounded LRU per process, so that a served model touches no storage."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["LoadedModel", "LoadedModels"]


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    model: nn.Module  # eval mode, CPU, no gradients
    metadata: dict[str, Any]
    version: str = ""  # the storage's version of the checkpoint it was loaded from


class LoadedModels:
    """The ``size`` most recently used loaded models."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    def get(self, model_id: str) -> LoadedModel | None:
        loaded = self._models.get(model_id)
        if loaded is not None:
            with self._lock:
                if model_id in self._models:
                    self._models.move_to_end(model_id)
        return loaded

    def put(self, loaded: LoadedModel) -> None:
        with self._lock:
            self._models[loaded.model_id] = loaded
            self._models.move_to_end(loaded.model_id)
            while len(self._models) > self.size:
                self._models.popitem(last=False)

    def drop(self, model_id: str) -> None:
        with self._lock:
            self._models.pop(model_id, None)

    def keep(self, versions: Mapping[str, str]) -> None:
        """Drop every model whose checkpoint is gone or replaced (not at its version in ``versions``)."""
        with self._lock:
            for model_id in [i for i, m in self._models.items() if versions.get(i) != m.version]:
                del self._models[model_id]
