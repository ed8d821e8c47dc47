"""The validation report's fields, and the refusals that list every problem at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bnlenet.datasets import DatasetRejected, IngestLimits, ingest
from tests.bnlenet.datasets.builders import folder_zip, npz_bytes, pattern, png, small_arrays, write, zip_bytes


def test_report_counts_duplicates_overlap_and_imbalance(tmp_path: Path) -> None:
    members = folder_zip({"cat": 30, "dog": 12}, prefix="train/")
    members.update(folder_zip({"cat": 3, "dog": 3}, prefix="test/", start=500))
    members["train/cat/copy.png"] = png(pattern(0, 1))  # a duplicate of train/cat/00001.png
    members["test/dog/leak.png"] = png(pattern(1, 4))  # also in train as train/dog/00004.png
    d = ingest(write(tmp_path / "u.zip", zip_bytes(members)), "u.zip")
    r = d.report
    json.dumps(r)  # JSON-able
    assert r["counts"] == {"train": {"cat": 31, "dog": 12}, "test": {"cat": 3, "dog": 4}}
    assert r["duplicates"] == {"count": 1, "examples": [["train/cat/00001.png", "train/cat/copy.png"]]}
    assert r["train_test_overlap"] == {"count": 1, "examples": [["train/dog/00004.png", "test/dog/leak.png"]]}
    assert r["imbalance"] == {"max_over_min": round(31 / 12, 4)}
    assert r["warnings"] == ["1 exact duplicate image(s) within a split",
                             "1 test image(s) also in train: the test accuracy overstates"]
    assert set(r) == {"format", "classes", "counts", "split", "image_sizes", "image_modes", "skipped", "duplicates",
                      "train_test_overlap", "imbalance", "warnings"}


def test_report_warns_of_strong_imbalance_and_untested_classes(tmp_path: Path) -> None:
    members = folder_zip({"a": 120, "b": 10}, prefix="train/")
    members.update(folder_zip({"a": 3}, prefix="test/", start=900))
    d = ingest(write(tmp_path / "u.zip", zip_bytes(members)), "u.zip")
    assert d.report["imbalance"]["max_over_min"] == 12.0
    assert d.report["warnings"] == [
        "classes with no test images (their accuracy is not measured): b",
        "classes are imbalanced: the largest has 12.0 times the training images of the smallest",
    ]


def test_report_refuses_one_class_with_too_few_images_listing_both(tmp_path: Path) -> None:
    with pytest.raises(DatasetRejected) as info:
        ingest(write(tmp_path / "u.zip", zip_bytes(folder_zip({"only": 5}, prefix="x/"))), "u.zip")
    assert info.value.status == 422
    assert info.value.problems == [
        "only 1 class (only): training needs at least two",
        "classes with fewer than 10 training images: 'only' (4, after the service's split sent 1 of its 5 to the "
        "test split, test_fraction 0.2): send more images, or a smaller test_fraction"]
    assert info.value.report is not None and info.value.report["counts"]["train"] == {"only": 4}


def test_report_refuses_an_empty_test_split(tmp_path: Path) -> None:
    arrays = small_arrays()
    arrays["test_images"], arrays["test_labels"] = arrays["test_images"][:0], arrays["test_labels"][:0]
    with pytest.raises(DatasetRejected) as info:
        ingest(write(tmp_path / "u.npz", npz_bytes(**arrays)), "u.npz")
    assert info.value.problems == ["the test split is empty"]


def test_report_refuses_a_class_given_but_absent_and_labels_outside(tmp_path: Path) -> None:
    arrays = small_arrays(classes=3)
    arrays["train_labels"] = arrays["train_labels"].copy()
    arrays["train_labels"][0] = 7
    with pytest.raises(DatasetRejected) as info:
        ingest(write(tmp_path / "u.npz", npz_bytes(**arrays)), "u.npz", classes=["a", "b", "c", "d"],
               limits=IngestLimits(min_per_class=12))
    assert info.value.problems == [
        "labels outside the class list: train has 1 images labelled 7; the class list has 4 classes (labels 0..3)",
        "classes with fewer than 12 training images: 'a' (11), 'd' (0)",
    ]


def test_report_refuses_bad_arguments(tmp_path: Path) -> None:
    path = write(tmp_path / "u.zip", zip_bytes(folder_zip({"a": 12, "b": 12})))
    with pytest.raises(DatasetRejected) as info:
        ingest(path, "u.zip", classes=["a", "a", " "], test_fraction=1.0)
    assert info.value.problems == ["test_fraction must be between 0 and 1 (exclusive), got 1.0",
                                   "class names must be non-empty strings", "class names repeat: a"]


def test_report_conflicting_labels_for_identical_images_count_as_duplicates(tmp_path: Path) -> None:
    arrays = small_arrays()
    arrays["train_images"] = arrays["train_images"].copy()
    arrays["train_images"][13] = arrays["train_images"][0]  # the same pixels under class 1
    d = ingest(write(tmp_path / "u.npz", npz_bytes(**arrays)), "u.npz")
    assert d.report["duplicates"] == {"count": 1, "examples": [["train[0]", "train[13]"]]}
    assert np.array_equal(d.train_images[13], d.train_images[0])


def test_report_says_the_service_split_took_images_a_class_needed(tmp_path: Path) -> None:
    # Ten images a class are ten before the split: the message says the split took two of each.
    with pytest.raises(DatasetRejected) as info:
        ingest(write(tmp_path / "u.zip", zip_bytes(folder_zip({"cat": 10, "dog": 12}))), "u.zip")
    assert info.value.problems == [
        "classes with fewer than 10 training images: 'cat' (8, after the service's split sent 2 of its 10 to the "
        "test split, test_fraction 0.2): send more images, or a smaller test_fraction"]
