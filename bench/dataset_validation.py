"""Validating an uploaded data set: Fashion-MNIST's 70,000 images as a zip of PNG folders, an IDX zip and an .npz.

Each upload is built on disk first (the PNG zip member by member, so building it never holds
more than one image), then ``bnlenet.datasets.ingest`` reads, converts, checks and reports it,
as ``POST /datasets`` does off the event loop. The table gives seconds per 10,000 images and the
most memory one ingest held (tracemalloc, in a separate untimed run).
"""

from __future__ import annotations

import io
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.data import fashion_mnist
from bnlenet.datasets import dataset_id, ingest
from models.data import CLASS_NAMES, FashionMNIST, write_idx

TITLE = "Dataset validation: seconds per 10,000 images, by upload format (issue 21)"
NOTES = (
    "`ingest` only (the upload already on disk): zip checks from the central directory, members streamed and "
    "size-checked, every image decoded and converted by `models.preprocess` (`decode_image` + `to_pixels`, "
    "/predict's path), duplicates and train/test overlap hashed, the report built. The PNG zip holds "
    "`train/<class>/<n>.png` and `test/<class>/<n>.png` (8-bit grayscale PNGs, deflated); the IDX zip the four "
    "gzipped files as the data set ships them; the .npz MedMNIST's four arrays, uncompressed. One process, "
    "one thread. `peak MB`: the most memory one ingest held at once (Python and numpy allocations, traced in a "
    "separate untimed run): the converted arrays (55 MB for 70,000 images) plus one member at a time. IDX and npz rounds: the best of 3; PNG: one. The PNG zip's id differs from the other two by "
    "design: a zip's images are taken in member-name order (class folder by class folder), so its arrays are the "
    "same images in another order."
)
FOLDERS = tuple(name.replace("/", "-") for name in CLASS_NAMES)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def build_png_zip(path: Path, data: FashionMNIST, n_train: int, n_test: int) -> Path:
    """The first ``n_train``/``n_test`` images as ``train/<class>/<i>.png`` members, written one at a time."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for split, images, labels, n in (("train", data.train_images, data.train_labels, n_train),
                                         ("test", data.test_images, data.test_labels, n_test)):
            for i in range(n):
                zf.writestr(f"{split}/{FOLDERS[int(labels[i])]}/{i:05d}.png", _png(images[i].numpy()))
    return path


def build_idx_zip(path: Path, data: FashionMNIST, n_train: int, n_test: int, tmp: Path) -> Path:
    arrays = {"train-images-idx3-ubyte.gz": data.train_images[:n_train], "train-labels-idx1-ubyte.gz":
              data.train_labels[:n_train], "t10k-images-idx3-ubyte.gz": data.test_images[:n_test],
              "t10k-labels-idx1-ubyte.gz": data.test_labels[:n_test]}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, tensor in arrays.items():
            zf.write(write_idx(tmp / name, tensor.numpy().astype(np.uint8)), name)
    return path


def build_npz(path: Path, data: FashionMNIST, n_train: int, n_test: int) -> Path:
    np.savez(path, train_images=data.train_images[:n_train].numpy(),
             train_labels=data.train_labels[:n_train].numpy().astype(np.uint8)[:, None],
             test_images=data.test_images[:n_test].numpy(), test_labels=data.test_labels[:n_test].numpy())
    return path


def _peak_mb(path: Path) -> float:
    """The most memory one ingest of ``path`` held at once (Python and numpy allocations), in MB."""
    tracemalloc.start()
    try:
        ingest(path, path.name, classes=FOLDERS)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def run(quick: bool) -> list[dict[str, Any]]:
    data = fashion_mnist()
    n_train, n_test = (6000, 1000) if quick else (len(data.train_images), len(data.test_images))
    n = n_train + n_test
    rows = []
    ids = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        started = time.perf_counter()
        uploads = {
            "IDX zip (gzipped)": build_idx_zip(tmp / "idx.zip", data, n_train, n_test, tmp),
            "npz": build_npz(tmp / "data.npz", data, n_train, n_test),
            "PNG folders zip": build_png_zip(tmp / "png.zip", data, n_train, n_test),
        }
        build_s = time.perf_counter() - started
        for fmt, path in uploads.items():
            rounds = []
            for _ in range(1 if fmt.startswith("PNG") else 3):
                t0 = time.perf_counter()
                d = ingest(path, path.name, classes=FOLDERS)
                rounds.append(time.perf_counter() - t0)
            seconds = min(rounds)
            ids[fmt] = dataset_id(d)
            rows.append({"format": fmt, "images": n, "upload MB": path.stat().st_size / 1e6,
                         "seconds": seconds, "s / 10,000 images": seconds / n * 10_000,
                         "images/s": n / seconds, "peak MB": _peak_mb(path), "id": ids[fmt]})
        del d
    same = ids["IDX zip (gzipped)"] == ids["npz"]
    rows.append({"format": f"(building the three uploads: {build_s:.1f} s; IDX and npz give one id: {same})"})
    return rows
