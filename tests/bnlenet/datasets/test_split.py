"""The service's split: seeded, stratified, every class on both sides."""

from __future__ import annotations

import numpy as np

from bnlenet.datasets.split import stratified_split


def test_split_is_stratified_seeded_and_disjoint() -> None:
    labels = np.repeat(np.arange(4), [10, 21, 3, 2])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[test], minlength=4).tolist() == [2, 4, 1, 1]  # round(n * 0.2), at least one
    assert np.bincount(labels[train], minlength=4).tolist() == [8, 17, 2, 1]
    again = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(again[1], test)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=1)[1], test)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)


def test_split_single_image_class_stays_in_train() -> None:
    train, test = stratified_split(np.array([0, 1, 1, 1, 1, 1]), 0.2, seed=0)
    assert 0 in train.tolist() and len(test) == 1
