"""A dataset's stored form (canonical bytes), reading it back, and its content id.

The stored form is an ``.npz`` that ``numpy.load(allow_pickle=False)`` opens: the four arrays as
``.npy`` members plus ``meta.json`` ({format_version, classes, report}), written with fixed member
order and timestamps so the same dataset gives the same bytes. The id hashes only the arrays and
the class names, so the same images, labels and classes uploaded as a zip of PNGs or as IDX files
are one dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from bnlenet.datasets.dataset import PreparedDataset
from models.lenet import IMAGE_SIZE

__all__ = ["FORMAT_VERSION", "dataset_bytes", "dataset_id", "read_dataset"]

FORMAT_VERSION = 1
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
_META = "meta.json"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest timestamp: no clock in the bytes


def _canonical(d: PreparedDataset) -> dict[str, np.ndarray]:
    return {
        "train_images": np.ascontiguousarray(d.train_images, dtype=np.uint8),
        "train_labels": np.ascontiguousarray(d.train_labels, dtype=np.int64),
        "test_images": np.ascontiguousarray(d.test_images, dtype=np.uint8),
        "test_labels": np.ascontiguousarray(d.test_labels, dtype=np.int64),
    }


def dataset_id(d: PreparedDataset) -> str:
    """``ds-`` and 16 hex digits of a SHA-256 over the arrays (shape, dtype, bytes) and the class names."""
    h = hashlib.sha256(b"bnlenet-dataset-v1\n")
    h.update(json.dumps(list(d.classes), ensure_ascii=False).encode() + b"\n")
    for name, arr in _canonical(d).items():
        h.update(f"{name} {arr.dtype.str} {arr.shape}\n".encode())
        h.update(arr.tobytes())
    return "ds-" + h.hexdigest()[:16]


def dataset_bytes(d: PreparedDataset) -> bytes:
    """The canonical stored form: a deterministic .npz (no pickle) with the arrays and ``meta.json``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, arr in _canonical(d).items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, version=(1, 0), allow_pickle=False)
            zf.writestr(info, member.getvalue())
        meta = {"format_version": FORMAT_VERSION, "classes": list(d.classes), "report": d.report}
        info = zipfile.ZipInfo(_META, date_time=_EPOCH)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        zf.writestr(info, json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
    return buf.getvalue()


def read_dataset(payload: bytes | Path) -> PreparedDataset:
    """The dataset of ``dataset_bytes``' output (bytes or a file), its shapes, dtypes and labels checked."""
    source: Any = io.BytesIO(payload) if isinstance(payload, bytes | bytearray) else payload
    try:
        with zipfile.ZipFile(source) as zf:
            meta = json.loads(zf.read(_META))
            arrays = {}
            for name in ARRAYS:
                with zf.open(f"{name}.npy") as f:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
    except (KeyError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValueError(f"not a stored dataset: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"stored dataset format {meta.get('format_version')!r}; this version reads {FORMAT_VERSION}")
    classes = tuple(str(c) for c in meta["classes"])
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"stored {split}_images is {images.dtype} {images.shape}, not (N, 28, 28) uint8")
        if labels.dtype != np.int64 or labels.shape != (len(images),):
            raise ValueError(f"stored {split}_labels is {labels.dtype} {labels.shape}, not ({len(images)},) int64")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"stored {split}_labels fall outside the {len(classes)} classes")
    return PreparedDataset(classes=classes, report=meta.get("report", {}), **arrays)
