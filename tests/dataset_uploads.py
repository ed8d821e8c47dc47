"""Uploads the dataset tests send: real images (Fashion-MNIST's, scikit-learn's digits) packed as people pack them."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from models.data import CLASS_NAMES, load_fashion_mnist, write_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # the real data set (Debian's package)
IDX_NAMES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def fashion_mnist_subset(labels: Sequence[int] | None = None, train: int = 600, test: int = 100,
                         ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The first ``train``/``test`` real Fashion-MNIST images of the classes ``labels`` (all: every class),
    relabelled 0..k-1 in that order; and the class names."""
    data = load_fashion_mnist(FASHION_MNIST_DIR, download=False)
    keep = list(range(10)) if labels is None else list(labels)
    out: dict[str, np.ndarray] = {}
    for split, n in (("train", train), ("test", test)):
        images = getattr(data, f"{split}_images").numpy()
        original = getattr(data, f"{split}_labels").numpy()
        chosen = np.flatnonzero(np.isin(original, keep))[:n]
        remap = {old: new for new, old in enumerate(keep)}
        out[f"{split}_images"] = images[chosen]
        out[f"{split}_labels"] = np.array([remap[int(v)] for v in original[chosen]], dtype=np.uint8)
    return out, tuple(CLASS_NAMES[k] for k in keep)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def folder_zip(arrays: dict[str, np.ndarray], classes: Sequence[str], *, split: bool = True) -> bytes:
    """A zip of PNG class folders: ``train/<class>/*.png`` and ``test/<class>/*.png`` (``split``), else one
    set ``<class>/*.png`` of both (the service splits it). Class names are made folder-safe ('/' -> '-')."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for part in ("train", "test"):
            for i, (image, label) in enumerate(zip(arrays[f"{part}_images"], arrays[f"{part}_labels"], strict=True)):
                folder = classes[int(label)].replace("/", "-")
                prefix = f"{part}/" if split else ""
                zf.writestr(f"{prefix}{folder}/{part}-{i:05d}.png", png(image))
    return buf.getvalue()


def idx_zip(arrays: dict[str, np.ndarray], scratch: Path) -> bytes:
    """The four gzipped IDX files of the MNIST family, in a zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for key, stem in IDX_NAMES.items():
            path = write_idx(scratch / f"{stem}.gz", arrays[key])
            zf.write(path, path.name)
    return buf.getvalue()


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    """MedMNIST's shape: ``train_images``, ``train_labels``, ``test_images``, ``test_labels``."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def digits(size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``load_digits`` (1,797 8x8 handwritten digits, UCI), upscaled to ``size`` and stretched
    to 0..255 (white strokes on black, as Fashion-MNIST's), with their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.stack([
        np.asarray(Image.fromarray((img * (255 / 16)).astype(np.uint8), mode="L").resize((size, size),
                   Image.Resampling.BILINEAR))
        for img in bunch.images
    ])
    return images, bunch.target.astype(np.int64)


def digits_zip() -> bytes:
    """``load_digits`` as a zip of PNG class folders named for the digits, one set the service splits."""
    images, labels = digits()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            zf.writestr(f"digits/{DIGIT_NAMES[int(label)]}/{i:04d}.png", png(image))
    return buf.getvalue()
