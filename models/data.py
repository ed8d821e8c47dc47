"""A data set of 28x28 grayscale images as uint8 tensors (``ImageDataset``), and Fashion-MNIST from its IDX files.

Looks in the directory it is given (the callers pass the ``DATA_DIR`` setting; nothing here
reads the environment), then the usual places: the directory that Debian's and Ubuntu's
``dataset-fashion-mnist`` package fills, and torchvision's ``<root>/FashionMNIST/raw/``. Falls
back to torchvision's downloader when allowed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CLASS_NAMES",
    "DataError",
    "FashionMNIST",
    "ImageDataset",
    "find_data_dir",
    "load_fashion_mnist",
    "parse_idx",
    "read_idx",
    "read_idx_cached",
    "write_idx",
]

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
DECODED_CACHE_DIR = Path.home() / ".cache" / "bnlenet" / "decoded"  # read_idx_cached's arrays
_IDX_UBYTE = 0x08  # the only element type Fashion-MNIST uses


class DataError(RuntimeError):
    """The data set is missing or malformed."""


@dataclass(frozen=True)
class ImageDataset:
    """A whole data set as tensors: images ``(N, 28, 28)`` uint8, labels ``(N,)`` int64 in ``[0, len(classes))``.

    Fashion-MNIST (``load_fashion_mnist``) or any uploaded data set (``bnlenet.datasets``); a
    LeNet trained on it has ``len(classes)`` outputs.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: tuple[str, ...] = CLASS_NAMES
    source: str = ""


FashionMNIST = ImageDataset  # the name it had when Fashion-MNIST was the only data set


def candidate_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where the IDX files are looked for, in order."""
    roots = [Path(data_dir)] if data_dir else []
    roots.extend(SYSTEM_DIRS)
    dirs: list[Path] = []
    for root in roots:
        for d in (root, root / "FashionMNIST" / "raw", root / "fashion-mnist"):
            if d not in dirs:
                dirs.append(d)
    return dirs


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first candidate directory that holds all four IDX files, gzip or raw."""
    for d in candidate_dirs(data_dir):
        if all(_find_file(d, stem) for stem in FILES.values()):
            return d
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip or raw) of unsigned bytes, validating its header and size."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """The array of an IDX file's bytes (unsigned bytes, 1 or 3 dimensions), validating its header and size."""
    if len(raw) < 4:
        raise DataError(f"{name} is too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_UBYTE or ndim not in (1, 3):
        raise DataError(f"{name} does not have an IDX header of unsigned bytes (magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name} is truncated inside its header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{name} declares shape {shape} ({expected} bytes of data) but holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file, gzipped when the name ends in ``.gz``."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, _IDX_UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)
    return path


def _cache_file(path: Path, cache_dir: Path) -> Path:
    """Where the decoded array of ``path`` is kept: named for its absolute path, size and modification time."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir / f"{path.name.removesuffix('.gz')}-{key}.npy"


def read_idx_cached(path: Path, cache_dir: Path | None) -> np.ndarray:
    """``read_idx``, with a gzipped file's decoded array kept in ``cache_dir`` as ``.npy`` for the next process.

    Decompressing the training images takes about 0.3 s of every ``bnlenet train``; loading the
    cached array, tens of milliseconds. A file that changes (size or modification time) gets a
    new cache entry; a cache that cannot be written is skipped.
    """
    if cache_dir is None or path.suffix != ".gz":
        return read_idx(path)
    try:
        cached = _cache_file(path, cache_dir)
    except OSError:
        return read_idx(path)  # which names the problem
    try:
        loaded: np.ndarray = np.load(cached, allow_pickle=False)
        return loaded
    except (OSError, ValueError):
        pass  # not cached yet, or a damaged entry: decode again
    array = read_idx(path)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as f:
            np.save(f, array, allow_pickle=False)
        partial.replace(cached)  # whole or absent: a reader never sees half an array
    except OSError:
        pass
    return array


def _load_split(directory: Path, images_stem: str, labels_stem: str, cache_dir: Path | None) -> tuple[Tensor, Tensor]:
    images_path = _find_file(directory, images_stem)
    labels_path = _find_file(directory, labels_stem)
    assert images_path is not None and labels_path is not None
    images = read_idx_cached(images_path, cache_dir)
    labels = read_idx_cached(labels_path, cache_dir)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path} holds images of shape {images.shape[1:]}, expected (28, 28)")
    if labels.ndim != 1:
        raise DataError(f"{labels_path} is not a label file (shape {labels.shape})")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if len(labels) and int(labels.max()) >= len(CLASS_NAMES):
        raise DataError(f"{labels_path} has label {int(labels.max())}; labels must be 0..{len(CLASS_NAMES) - 1}")
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"{images_path} or {labels_path} did not decode to unsigned bytes")
    return torch.from_numpy(np.array(images)), torch.from_numpy(labels.astype(np.int64))


def _download(root: Path) -> Path | None:
    """Let torchvision fetch the IDX files into ``root``; None when it cannot."""
    try:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        TorchvisionFashionMNIST(str(root), train=True, download=True)
        TorchvisionFashionMNIST(str(root), train=False, download=True)
    except Exception:  # no network, no torchvision: the caller reports where it looked
        return None
    return find_data_dir(root)


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None, *, download: bool = True,
    cache_dir: str | os.PathLike[str] | None = DECODED_CACHE_DIR,
) -> ImageDataset:
    """Load the four IDX files from the first place that has them all.

    With ``download``, falls back to torchvision's downloader into ``data_dir`` (or
    ``~/.cache/bnlenet``) when no place has them. Gzipped files are decoded once and kept in
    ``cache_dir`` (``read_idx_cached``; None: decode every time).
    """
    cache = Path(cache_dir) if cache_dir is not None else None
    directory = find_data_dir(data_dir)
    if directory is None and download:
        root = Path(data_dir or Path.home() / ".cache" / "bnlenet")
        directory = _download(root)
    if directory is None:
        looked = ", ".join(str(d) for d in candidate_dirs(data_dir))
        raise DataError(
            "Fashion-MNIST not found: need "
            + ", ".join(f"{stem}[.gz]" for stem in FILES.values())
            + f" in one of: {looked}. Set DATA_DIR, or install Debian's dataset-fashion-mnist"
            + (", or allow the download" if not download else "; the download failed too")
        )
    train = _load_split(directory, FILES["train_images"], FILES["train_labels"], cache)
    test = _load_split(directory, FILES["test_images"], FILES["test_labels"], cache)
    return ImageDataset(*train, *test, classes=CLASS_NAMES, source=str(directory))
