"""Archives built in the tests: PNG bytes, zips of members, forged zip headers, IDX and .npz files."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from models.data import write_idx


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8), mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def pattern(label: int, i: int, size: int = 28) -> np.ndarray:
    """A distinct image per (label, i): a bar at the class's place and a few bits of the index."""
    img = np.zeros((size, size), np.uint8)
    img[(label * 2) % size, :] = 200
    img[-1, :16] = [(i >> b & 1) * 255 for b in range(16)]
    return img


def zip_bytes(members: Mapping[str, bytes | zipfile.ZipInfo], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def folder_zip(classes: Mapping[str, int], prefix: str = "", start: int = 0) -> dict[str, bytes]:
    """Members ``<prefix><class>/<i>.png`` with ``n`` distinct images per class."""
    out = {}
    for label, (name, n) in enumerate(classes.items()):
        for i in range(start, start + n):
            out[f"{prefix}{name}/{i:05d}.png"] = png(pattern(label, i))
    return out


def forge(data: bytes, name: str, *, file_size: int | None = None, method: int | None = None,
          crc: int | None = None) -> bytes:
    """Rewrite a member's declared fields in both its local header and its central directory entry."""
    out = bytearray(data)
    encoded = name.encode()
    for sig, name_len_at, fields in ((b"PK\x03\x04", 26, {"method": 8, "crc": 14, "size": 22}),
                                     (b"PK\x01\x02", 28, {"method": 10, "crc": 16, "size": 24})):
        header_len = 30 if sig == b"PK\x03\x04" else 46
        at = 0
        while (at := out.find(sig, at)) != -1:
            n = struct.unpack_from("<H", out, at + name_len_at)[0]
            if bytes(out[at + header_len: at + header_len + n]) == encoded:
                if file_size is not None:
                    struct.pack_into("<I", out, at + fields["size"], file_size)
                if method is not None:
                    struct.pack_into("<H", out, at + fields["method"], method)
                if crc is not None:
                    struct.pack_into("<I", out, at + fields["crc"], crc)
            at += 4
    return bytes(out)


def zeros_bomb(name: str, gib: int = 1, extra: Mapping[str, bytes] | None = None) -> bytes:
    """A zip whose member ``name`` inflates to ``gib`` GiB of zeros from about 1 MB.

    The deflate stream is one fully flushed 1 MiB segment of zeros repeated (a full flush makes
    each segment independent), stored and then relabelled as deflated with the true size.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    stream = segment * (1024 * gib) + b"\x03\x00"  # an empty final block ends the stream
    members: dict[str, bytes | zipfile.ZipInfo] = dict(extra or {})
    members[name] = stream
    raw = zip_bytes(members, compression=zipfile.ZIP_STORED)
    return forge(raw, name, file_size=(1 << 30) * gib, method=zipfile.ZIP_DEFLATED)


def idx_zip(arrays: Mapping[str, np.ndarray], tmp: Path, gz: bool = True) -> bytes:
    """A zip of the four IDX files (``train_images`` ... keys), gzipped when ``gz``."""
    names = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
    members = {}
    for key, arr in arrays.items():
        path = write_idx(tmp / (names[key] + (".gz" if gz else "")), arr)
        members[path.name] = path.read_bytes()
    return zip_bytes(members, compression=zipfile.ZIP_STORED)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def small_arrays(per_class: int = 12, classes: int = 3, test_per_class: int = 4) -> dict[str, np.ndarray]:
    """Distinct images of ``classes`` classes, train and test."""
    def split(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(classes), n).astype(np.uint8)
        images = np.stack([pattern(int(c), offset + i) for i, c in enumerate(labels)])
        return images, labels
    tri, trl = split(per_class, 0)
    tei, tel = split(test_per_class, 10_000)
    return {"train_images": tri, "train_labels": trl, "test_images": tei, "test_labels": tel}
