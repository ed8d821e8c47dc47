"""The stored form: deterministic bytes, read back whole, and an id that ignores the upload's format."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bnlenet.datasets import PreparedDataset, dataset_bytes, dataset_id, ingest, read_dataset
from tests.bnlenet.datasets.builders import idx_zip, npz_bytes, small_arrays, write


def _dataset(tmp_path: Path) -> PreparedDataset:
    return ingest(write(tmp_path / "u.npz", npz_bytes(**small_arrays())), "u.npz", classes=["a", "b", "c"])


def test_bundle_bytes_are_deterministic_and_read_back(tmp_path: Path) -> None:
    d = _dataset(tmp_path)
    data = dataset_bytes(d)
    assert dataset_bytes(d) == data
    back = read_dataset(data)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert np.array_equal(getattr(back, name), getattr(d, name))
        assert getattr(back, name).dtype == getattr(d, name).dtype
    assert back.classes == d.classes and back.report == d.report
    assert read_dataset(write(tmp_path / "stored.npz", data)).classes == d.classes
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # an ordinary .npz
        assert np.array_equal(npz["train_images"], d.train_images)


def test_bundle_id_ignores_the_report_and_the_upload_format(tmp_path: Path) -> None:
    d = _dataset(tmp_path)
    from_idx = ingest(write(tmp_path / "u.zip", idx_zip(small_arrays(), tmp_path)), "u.zip", classes=["a", "b", "c"])
    assert from_idx.report["format"] == "idx" and d.report["format"] == "npz"
    assert dataset_id(from_idx) == dataset_id(d)
    assert dataset_id(d).startswith("ds-") and len(dataset_id(d)) == 19
    renamed = PreparedDataset(d.train_images, d.train_labels, d.test_images, d.test_labels, ("a", "b", "x"), d.report)
    assert dataset_id(renamed) != dataset_id(d)
    relabelled = PreparedDataset(d.train_images, d.train_labels[::-1].copy(), d.test_images, d.test_labels,
                                 d.classes, d.report)
    assert dataset_id(relabelled) != dataset_id(d)


def test_bundle_read_refuses_wrong_shapes_and_labels(tmp_path: Path) -> None:
    d = _dataset(tmp_path)
    bad = PreparedDataset(d.train_images, d.train_labels + 5, d.test_images, d.test_labels, d.classes, d.report)
    with pytest.raises(ValueError, match="stored train_labels fall outside the 3 classes"):
        read_dataset(dataset_bytes(bad))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("meta.json", "{}")
    with pytest.raises(ValueError, match="not a stored dataset"):
        read_dataset(buf.getvalue())
