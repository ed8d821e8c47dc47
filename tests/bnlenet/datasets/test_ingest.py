"""Real data through ingest: Fashion-MNIST repacked three ways, and scikit-learn's handwritten digits."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bnlenet.datasets import dataset_bytes, dataset_id, ingest, read_dataset
from models.data import CLASS_NAMES, DataError, FashionMNIST, find_data_dir, load_fashion_mnist
from tests.bnlenet.datasets.builders import npz_bytes, png, write, zip_bytes

FOLDERS = tuple(name.replace("/", "-") for name in CLASS_NAMES)  # "T-shirt/top" cannot be a folder name


@pytest.fixture(scope="module")
def fashion() -> FashionMNIST:
    try:
        return load_fashion_mnist(download=False)
    except DataError as exc:
        pytest.skip(f"the real Fashion-MNIST cannot be had here: {exc}")


def _fashion_idx_zip(tmp_path: Path) -> Path:
    source = find_data_dir()
    assert source is not None
    members = {f"fashion-mnist/{p.name}": p.read_bytes() for p in sorted(source.iterdir()) if "ubyte" in p.name}
    return write(tmp_path / "fashion.zip", zip_bytes(members, zipfile.ZIP_STORED))


def test_ingest_fashion_mnist_as_idx_and_npz_is_the_builtin_data(tmp_path: Path, fashion: FashionMNIST) -> None:
    from_idx = ingest(_fashion_idx_zip(tmp_path), "fashion.zip", classes=CLASS_NAMES)
    npz = npz_bytes(train_images=fashion.train_images.numpy(),
                    train_labels=fashion.train_labels.numpy().astype(np.uint8)[:, None],  # MedMNIST's (N, 1) uint8
                    test_images=fashion.test_images.numpy(), test_labels=fashion.test_labels.numpy())
    from_npz = ingest(write(tmp_path / "fashion.npz", npz), "fashion.npz", classes=CLASS_NAMES)
    for d in (from_idx, from_npz):
        assert d.train_images.tobytes() == fashion.train_images.numpy().tobytes()
        assert d.train_labels.tobytes() == fashion.train_labels.numpy().tobytes()
        assert d.test_images.tobytes() == fashion.test_images.numpy().tobytes()
        assert d.test_labels.tobytes() == fashion.test_labels.numpy().tobytes()
        assert d.classes == CLASS_NAMES
        assert d.report["counts"]["train"] == dict.fromkeys(CLASS_NAMES, 6000)
        assert d.report["counts"]["test"] == dict.fromkeys(CLASS_NAMES, 1000)
        assert d.report["image_sizes"] == {"28x28": 70000}
    assert dataset_id(from_idx) == dataset_id(from_npz)
    assert dataset_id(read_dataset(dataset_bytes(from_idx))) == dataset_id(from_idx)


def test_ingest_fashion_subset_as_png_folders_round_trips(tmp_path: Path, fashion: FashionMNIST) -> None:
    members: dict[str, bytes] = {}
    expected = {}
    for split, images, labels, per_class in (("train", fashion.train_images, fashion.train_labels, 30),
                                             ("test", fashion.test_images, fashion.test_labels, 5)):
        chosen = np.concatenate([np.flatnonzero(labels.numpy() == c)[:per_class] for c in range(len(CLASS_NAMES))])
        names = {f"{split}/{FOLDERS[int(labels[i])]}/{i:05d}.png": int(i) for i in chosen}
        for name, i in names.items():
            members[name] = png(images[i].numpy())
        order = sorted(names)  # the zip's members are read in name order
        expected[split] = (images.numpy()[[names[n] for n in order]], labels.numpy()[[names[n] for n in order]])
    d = ingest(write(tmp_path / "subset.zip", zip_bytes(members)), "subset.zip", classes=FOLDERS)
    assert d.report["format"] == "zip-split"
    assert d.report["counts"] == {"train": dict.fromkeys(FOLDERS, 30), "test": dict.fromkeys(FOLDERS, 5)}
    assert np.array_equal(d.train_images, expected["train"][0]) and np.array_equal(d.train_labels, expected["train"][1])
    assert np.array_equal(d.test_images, expected["test"][0]) and np.array_equal(d.test_labels, expected["test"][1])
    back = read_dataset(dataset_bytes(d))
    assert np.array_equal(back.train_images, d.train_images) and back.classes == FOLDERS
    as_npz = ingest(write(tmp_path / "subset.npz", npz_bytes(
        train_images=expected["train"][0], train_labels=expected["train"][1],
        test_images=expected["test"][0], test_labels=expected["test"][1])), "subset.npz", classes=FOLDERS)
    assert dataset_id(as_npz) == dataset_id(d)  # the same images, labels and classes: one dataset


def test_ingest_sklearn_digits_as_png_folders_split_by_the_service(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()  # 1,797 8x8 handwritten digits (UCI), values 0..16
    members = {}
    pixels = {}
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        small = Image.fromarray((img * (255 / 16)).round().astype(np.uint8), mode="L")
        big = np.asarray(small.resize((28, 28), Image.Resampling.BILINEAR))
        name = f"digits/{label}/{i:04d}.png"
        members[name] = png(big)
        pixels[name] = big
    zipped = write(tmp_path / "digits.zip", zip_bytes(members))
    d = ingest(zipped, "digits.zip", test_fraction=0.2, seed=7)
    assert d.classes == tuple(str(k) for k in range(10))
    assert d.report["format"] == "zip-folders"
    assert d.report["split"] == {"source": "service", "test_fraction": 0.2, "seed": 7}
    per_class = np.bincount(digits.target, minlength=10)
    test_counts = [int(round(n * 0.2)) for n in per_class]
    assert [d.report["counts"]["test"][str(k)] for k in range(10)] == test_counts
    train_counts = [int(n - t) for n, t in zip(per_class, test_counts, strict=True)]
    assert [d.report["counts"]["train"][str(k)] for k in range(10)] == train_counts
    assert np.bincount(d.test_labels, minlength=10).tolist() == test_counts
    assert len(d.train_images) + len(d.test_images) == 1797
    # every image is the PNG's pixels under its folder's label, each exactly once
    seen: dict[tuple[bytes, int], int] = {}
    for images, labels in ((d.train_images, d.train_labels), (d.test_images, d.test_labels)):
        for img, label in zip(images, labels, strict=True):
            seen.setdefault((img.tobytes(), int(label)), 0)
            seen[(img.tobytes(), int(label))] += 1
    want: dict[tuple[bytes, int], int] = {}
    for name, big in pixels.items():
        key = (big.tobytes(), int(name.split("/")[1]))
        want[key] = want.get(key, 0) + 1
    assert seen == want
    again = ingest(zipped, "digits.zip", test_fraction=0.2, seed=7)
    assert dataset_id(again) == dataset_id(d)
    other = ingest(zipped, "digits.zip", test_fraction=0.2, seed=8)
    assert dataset_id(other) != dataset_id(d)
    assert io.BytesIO(dataset_bytes(d)).getbuffer().nbytes > 0
