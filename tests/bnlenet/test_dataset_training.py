"""Fashion-MNIST repacked as people upload it (IDX, .npz) is the built-in data set, and trains to the same model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlenet.datasets import PreparedDataset, dataset_id, ingest
from bnlenet.datasets.builtin import BUILTIN_ID, BUILTIN_INFO_FILE
from bnlenet.datasets.cache import DatasetCache
from bnlenet.datasets.store import DatasetStore
from bnlenet.settings import Settings
from models.data import CLASS_NAMES, ImageDataset, load_fashion_mnist
from models.training import TrainConfig, train
from tests.dataset_uploads import FASHION_MNIST_DIR, fashion_mnist_subset, folder_zip, idx_zip, npz


def _tensors(prepared: PreparedDataset) -> ImageDataset:
    arrays = [np.array(a) for a in (prepared.train_images, prepared.train_labels, prepared.test_images,
                                    prepared.test_labels)]  # writable copies, as torch wants
    return ImageDataset(*map(torch.from_numpy, arrays), classes=prepared.classes)


def test_builtin_id_is_the_id_of_fashion_mnist_s_images_labels_and_classes():
    data = load_fashion_mnist(FASHION_MNIST_DIR, download=False)
    prepared = PreparedDataset(data.train_images.numpy(), data.train_labels.numpy(), data.test_images.numpy(),
                               data.test_labels.numpy(), CLASS_NAMES, {})
    assert dataset_id(prepared) == BUILTIN_ID


@pytest.mark.slow
def test_builtin_record_is_what_the_ingest_makes_of_the_real_files():
    from scripts.builtin_dataset import builtin_record

    assert builtin_record(str(FASHION_MNIST_DIR)) == json.loads(BUILTIN_INFO_FILE.read_text())


def test_fashion_mnist_as_idx_and_npz_trains_to_the_builtin_s_model(tmp_path: Path):
    arrays, names = fashion_mnist_subset(train=1200, test=200)
    (tmp_path / "idx").mkdir()
    (tmp_path / "fm.zip").write_bytes(idx_zip(arrays, tmp_path / "idx"))
    (tmp_path / "fm.npz").write_bytes(npz(arrays))
    as_idx = ingest(tmp_path / "fm.zip", "fm.zip", classes=names)
    as_npz = ingest(tmp_path / "fm.npz", "fm.npz", classes=names)
    assert dataset_id(as_idx) == dataset_id(as_npz)
    builtin = ImageDataset(torch.from_numpy(arrays["train_images"]),
                           torch.from_numpy(arrays["train_labels"].astype(np.int64)),
                           torch.from_numpy(arrays["test_images"]), torch.from_numpy(arrays["test_labels"].astype(np.int64)),
                           classes=names)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.9, swa_epochs=0, device="cpu", threads=1)
    reference = train(config, builtin).model.state_dict()
    for prepared in (as_idx, as_npz):
        state = train(config, _tensors(prepared)).model.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference)


def _examples(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """A split as a sorted list of (label, pixels): equal for the same examples in any order."""
    return sorted(bytes([int(label)]) + np.asarray(image, dtype=np.uint8).tobytes()
                  for image, label in zip(images, labels, strict=True))


@pytest.mark.slow
def test_fashion_mnist_as_png_folders_trains_to_the_builtin_s_accuracy(tmp_path: Path):
    data = load_fashion_mnist(FASHION_MNIST_DIR, download=False)
    arrays = {key: getattr(data, key).numpy().astype(np.uint8)
              for key in ("train_images", "train_labels", "test_images", "test_labels")}
    names = tuple(name.replace("/", "-") for name in CLASS_NAMES)  # folder names cannot hold '/'
    (tmp_path / "fm.zip").write_bytes(folder_zip(arrays, names))
    prepared = ingest(tmp_path / "fm.zip", "fm.zip", classes=names)
    # All 70,000 PNGs decoded by /predict's path to the very pixels of the IDX files, in the zip's order.
    for split in ("train", "test"):
        assert _examples(getattr(prepared, f"{split}_images"), getattr(prepared, f"{split}_labels")) == \
            _examples(arrays[f"{split}_images"], arrays[f"{split}_labels"])
    # Another order is another shuffle: the same accuracy within a seed's spread, not the same model.
    config = TrainConfig(epochs=2, device="cpu")
    builtin = train(config, data).final_test_acc
    uploaded = train(config, _tensors(prepared)).final_test_acc
    assert builtin is not None and uploaded is not None and builtin > 0.8
    assert abs(uploaded - builtin) < 0.03, (uploaded, builtin)


def test_dataset_cache_reads_a_stored_dataset_once_and_keeps_it(tmp_path: Path):
    arrays, names = fashion_mnist_subset((0, 1, 7), train=60, test=15)
    (tmp_path / "set.npz").write_bytes(npz(arrays))
    prepared = ingest(tmp_path / "set.npz", "set.npz", classes=names)
    settings = Settings(CHECKPOINT_DIR=str(tmp_path / "store"), DATASET_CACHE_DIR=tmp_path / "cache")
    store = DatasetStore.from_settings(settings)
    info, created = store.add(prepared, name="three")
    assert created and store.add(prepared)[1] is False  # the same content: one data set
    assert sorted(p.name for p in (tmp_path / "store" / "datasets").glob("ds-*")) == \
        [f"{info['id']}.json", f"{info['id']}.npz"]

    def no_builtin() -> ImageDataset:
        raise AssertionError("the built-in data set was not asked for")

    cache = DatasetCache(DatasetStore.from_settings(settings), no_builtin)
    ds_id, data = cache.get("three")
    assert ds_id == info["id"] and data.classes == names and len(data.train_labels) == 60
    assert torch.equal(data.train_images, torch.from_numpy(arrays["train_images"]))
    assert cache.get(ds_id)[1] is data and cache.fetches == 1
    with pytest.raises(ValueError, match="no-such"):
        cache.get("no-such")
