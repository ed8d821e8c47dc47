"""The service's train/test split of a set uploaded without one: seeded and stratified by class."""

from __future__ import annotations

import numpy as np

__all__ = ["stratified_split"]


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each ascending: ``round(n * test_fraction)`` of each class's n images go to test.

    A class of two or more images keeps at least one on each side. The same labels, fraction and
    seed give the same split on any machine (numpy's PCG64 through ``default_rng``).
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    empty = np.empty(0, np.int64)
    return (np.sort(np.concatenate(train or [empty])).astype(np.int64),
            np.sort(np.concatenate(test or [empty])).astype(np.int64))
