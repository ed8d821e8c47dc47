"""``PreparedDataset``: an upload read, converted and checked, ready to store and train on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PreparedDataset"]


@dataclass(frozen=True)
class PreparedDataset:
    """Images converted exactly as /predict converts an upload, labels indexing ``classes``, and the report."""

    train_images: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray  # (N,) int64 in [0, len(classes))
    test_images: np.ndarray  # (M, 28, 28) uint8
    test_labels: np.ndarray  # (M,) int64
    classes: tuple[str, ...]
    report: dict[str, Any]  # the validation report (docs/datasets.md#the-report), JSON-able
