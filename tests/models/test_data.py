from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import CLASS_NAMES, FILES, DataError, find_data_dir, load_fashion_mnist, read_idx, write_idx
from tests.conftest import SYNTHETIC_TEST, SYNTHETIC_TRAIN, write_synthetic_fashion_mnist


def test_data_loads_gzip_idx(synthetic_data_dir: Path) -> None:
    data = load_fashion_mnist(synthetic_data_dir, download=False)
    assert data.train_images.shape == (SYNTHETIC_TRAIN, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.train_labels.shape == (SYNTHETIC_TRAIN,) and data.train_labels.dtype == torch.int64
    assert data.test_images.shape == (SYNTHETIC_TEST, 28, 28)
    assert data.classes == CLASS_NAMES and data.classes[9] == "Ankle boot"
    assert data.source == str(synthetic_data_dir)


def test_data_loads_raw_idx_in_torchvision_layout(tmp_path: Path) -> None:
    write_synthetic_fashion_mnist(tmp_path / "FashionMNIST" / "raw", gzip=False)
    data = load_fashion_mnist(tmp_path, download=False)
    assert data.source == str(tmp_path / "FashionMNIST" / "raw")
    assert len(data.train_images) == SYNTHETIC_TRAIN


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DATA_DIR reaches the loader through the settings; models/ itself never reads the environment."""
    from bnlenet.settings import Settings

    write_synthetic_fashion_mnist(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert find_data_dir(Settings().DATA_DIR) == tmp_path
    monkeypatch.setattr("models.data.SYSTEM_DIRS", ())
    assert find_data_dir() is None


def test_data_idx_round_trip(tmp_path: Path) -> None:
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    assert np.array_equal(read_idx(write_idx(tmp_path / "x.gz", arr)), arr)
    assert np.array_equal(read_idx(write_idx(tmp_path / "x", arr)), arr)


def test_data_missing_files_name_the_places_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setattr("models.data.SYSTEM_DIRS", ())
    with pytest.raises(DataError, match="Fashion-MNIST not found") as err:
        load_fashion_mnist(tmp_path, download=False)
    assert str(tmp_path) in str(err.value) and "train-images-idx3-ubyte" in str(err.value)


def test_data_truncated_file_is_named(tmp_path: Path) -> None:
    write_synthetic_fashion_mnist(tmp_path, gzip=False)
    path = tmp_path / FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="declares shape") as err:
        load_fashion_mnist(tmp_path, download=False)
    assert str(path) in str(err.value)


def test_data_corrupt_gzip_is_named(tmp_path: Path) -> None:
    write_synthetic_fashion_mnist(tmp_path)
    path = tmp_path / (FILES["test_labels"] + ".gz")
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read") as err:
        load_fashion_mnist(tmp_path, download=False)
    assert str(path) in str(err.value)


def test_data_bad_magic_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x0d\x03" + b"\x00" * 16)
    with pytest.raises(DataError, match="IDX header"):
        read_idx(path)


def test_data_label_out_of_range_is_an_error(tmp_path: Path) -> None:
    write_synthetic_fashion_mnist(tmp_path)
    write_idx(tmp_path / (FILES["test_labels"] + ".gz"), np.full(SYNTHETIC_TEST, 10, dtype=np.uint8))
    with pytest.raises(DataError, match="label 10"):
        load_fashion_mnist(tmp_path, download=False)


def test_data_count_mismatch_is_an_error(tmp_path: Path) -> None:
    write_synthetic_fashion_mnist(tmp_path)
    write_idx(tmp_path / (FILES["test_labels"] + ".gz"), np.zeros(SYNTHETIC_TEST - 1, dtype=np.uint8))
    with pytest.raises(DataError, match="labels"):
        load_fashion_mnist(tmp_path, download=False)


def test_data_gzip_decoded_once_then_read_from_the_cache(synthetic_data_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from models import data as data_module

    first = load_fashion_mnist(synthetic_data_dir, download=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 4

    def no_decoding(path: Path) -> None:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(data_module, "read_idx", no_decoding)
    second = load_fashion_mnist(synthetic_data_dir, download=False, cache_dir=tmp_path)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        a, b = getattr(first, name), getattr(second, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_data_cache_follows_a_changed_file(tmp_path: Path) -> None:
    from models.data import read_idx_cached

    path = tmp_path / "labels-idx1-ubyte.gz"
    write_idx(path, np.array([1, 2, 3], dtype=np.uint8))
    assert read_idx_cached(path, tmp_path / "cache").tolist() == [1, 2, 3]
    write_idx(path, np.array([4, 5, 6, 7], dtype=np.uint8))
    assert read_idx_cached(path, tmp_path / "cache").tolist() == [4, 5, 6, 7]


def test_data_cache_that_cannot_be_written_is_skipped(synthetic_data_dir: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    data = load_fashion_mnist(synthetic_data_dir, download=False, cache_dir=blocked / "cache")
    assert data.train_images.dtype == torch.uint8 and len(data.train_images) > 0
