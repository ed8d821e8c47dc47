"""Hostile zips: each refused before anything is stored, with a message naming the problem."""

from __future__ import annotations

import io
import struct
import time
import zipfile
from pathlib import Path

import pytest

from bnlenet.datasets import DatasetRejected, IngestLimits, ingest
from tests.bnlenet.datasets.builders import folder_zip, forge, idx_zip, png, small_arrays, write, zeros_bomb, zip_bytes

TWO_CLASSES = {"a": 12, "b": 12}


def rejected(tmp_path: Path, data: bytes, limits: IngestLimits | None = None, **kwargs: object) -> DatasetRejected:
    path = write(tmp_path / "upload.zip", data)
    with pytest.raises(DatasetRejected) as info:
        ingest(path, "upload.zip", limits=limits, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_archive_member_inflating_past_its_declared_size_is_refused(tmp_path: Path) -> None:
    members = folder_zip(TWO_CLASSES)
    members["a/forged.png"] = bytes(10 * 1024 * 1024)  # 10 MiB of zeros, deflated to ~10 KB
    forged = forge(zip_bytes(members), "a/forged.png", file_size=100)
    err = rejected(tmp_path, forged)
    assert err.status == 413
    assert err.problems == ["'a/forged.png' decompresses to more than the 100 bytes its header declares "
                            "(a forged size, as zip bombs have)"]


def test_archive_member_shorter_than_its_declared_size_is_refused(tmp_path: Path) -> None:
    members = folder_zip(TWO_CLASSES)
    forged = forge(zip_bytes(members), "a/00003.png", file_size=5000)
    err = rejected(tmp_path, forged)
    assert len(err.problems) == 1
    assert "'a/00003.png' decompresses to" in err.problems[0] and "not the 5000 its header declares" in err.problems[0]


def test_archive_zeros_bomb_is_refused_by_its_ratio_before_decompressing(tmp_path: Path) -> None:
    data = zeros_bomb("a/bomb.png", extra=folder_zip(TWO_CLASSES))
    assert len(data) < 2 * 1024 * 1024  # a gigabyte from about a megabyte
    started = time.perf_counter()
    err = rejected(tmp_path, data)
    assert time.perf_counter() - started < 5.0  # nothing was inflated
    assert err.status == 413
    assert any("compressed more than 200:1 (a zip bomb's signature)" in p and "'a/bomb.png'" in p
               for p in err.problems), err.problems


def test_archive_zeros_bomb_is_refused_by_the_total_cap(tmp_path: Path) -> None:
    data = zeros_bomb("a/bomb.png", extra=folder_zip(TWO_CLASSES))
    err = rejected(tmp_path, data, IngestLimits(max_ratio=1e9))  # the ratio cap off: the total still holds
    assert err.status == 413
    assert len(err.problems) == 1
    assert err.problems[0].startswith("the zip declares ") and "bytes uncompressed; at most 1073741824" in err.problems[0]


def test_archive_gzip_bomb_inside_an_idx_zip_is_refused(tmp_path: Path) -> None:
    import gzip

    arrays = small_arrays()
    members = {}
    good = idx_zip(arrays, tmp_path)
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["train-images-idx3-ubyte.gz"] = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=1)
    err = rejected(tmp_path, zip_bytes(members, zipfile.ZIP_STORED))
    assert err.status == 413
    assert err.problems == ["'train-images-idx3-ubyte.gz' decompresses more than 200:1 (a gzip bomb's signature)"]
    err = rejected(tmp_path, zip_bytes(members, zipfile.ZIP_STORED),
                   IngestLimits(max_ratio=1e9, max_uncompressed_bytes=16 * 1024 * 1024))
    assert err.problems == [f"the zip decompresses to more than {16 * 1024 * 1024} bytes "
                            "(a zip bomb, or a data set too large)"]


@pytest.mark.parametrize("name", ["../x.png", "a/../../x.png", "/etc/x.png", "C:/x.png", "a\\..\\..\\x.png"])
def test_archive_path_leaving_the_archive_is_refused(tmp_path: Path, name: str) -> None:
    members = folder_zip(TWO_CLASSES)
    members[name] = png(small_arrays()["train_images"][0])
    err = rejected(tmp_path, zip_bytes(members))
    assert err.problems == [f"paths that leave the archive (a '..' part or an absolute path): {name!r}"]


def test_archive_symlink_member_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in folder_zip(TWO_CLASSES).items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("a/link.png")
        link.create_system = 3  # Unix
        link.external_attr = 0o120777 << 16  # S_IFLNK | rwxrwxrwx
        zf.writestr(link, "/etc/passwd")
    err = rejected(tmp_path, buf.getvalue())
    assert err.problems == ["symbolic links, which are refused: 'a/link.png'"]


@pytest.mark.parametrize("name", ["a/inner.zip", "a/more.tar.gz", "b/data.npz"])
def test_archive_nested_archive_is_refused_by_name(tmp_path: Path, name: str) -> None:
    members = folder_zip(TWO_CLASSES)
    members[name] = zip_bytes({"x.png": b"x"})
    err = rejected(tmp_path, zip_bytes(members))
    assert err.problems == [f"nested archives, which are not opened: {name!r}"]


def test_archive_nested_archive_disguised_as_an_image_is_refused(tmp_path: Path) -> None:
    members = folder_zip(TWO_CLASSES)
    members["a/photo.png"] = zip_bytes({"x.png": b"x"})
    err = rejected(tmp_path, zip_bytes(members))
    assert err.problems == ["nested archives, which are not opened: 'a/photo.png'"]


def test_archive_non_image_files_are_refused_and_system_files_skipped(tmp_path: Path) -> None:
    members = folder_zip(TWO_CLASSES)
    members["a/notes.txt"] = b"hello"
    members["b/run.exe"] = b"MZ"
    members["__MACOSX/a/._00000.png"] = b"junk"
    members["a/.DS_Store"] = b"junk"
    err = rejected(tmp_path, zip_bytes(members))
    assert len(err.problems) == 1
    assert err.problems[0].startswith("files that are not images (by their suffix;")
    assert err.problems[0].endswith(": 'a/notes.txt', 'b/run.exe'")


def test_archive_too_many_files_is_refused_before_the_directory_is_parsed(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(100_001):
            zf.writestr(f"c{i % 2}/{i}.png", b"x")
    parsed = []
    real = zipfile.ZipFile._RealGetContents  # type: ignore[attr-defined]
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", lambda self: parsed.append(1) or real(self))
    err = rejected(tmp_path, buf.getvalue())
    assert err.status == 413
    assert err.problems == ["the zip holds 100001 entries; at most 100000 files are accepted (too many files)"]
    assert parsed == []  # refused from the end record, before 100,001 entries were parsed


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` 8-bit grayscale pixels, with no pixel data."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_archive_huge_image_is_refused_from_its_header(tmp_path: Path) -> None:
    members = folder_zip(TWO_CLASSES)
    members["b/huge.png"] = _png_header(20000, 20000)
    started = time.perf_counter()
    err = rejected(tmp_path, zip_bytes(members))
    assert time.perf_counter() - started < 5.0  # 400 megapixels were never decoded
    assert len(err.problems) == 1
    assert err.problems[0].startswith("images too large to decode (more than 1048576 pixels declared in the header): "
                                      "'b/huge.png' (the image is too large: Image size (400000000 pixels)")


def test_archive_image_over_the_service_budget_is_refused_from_its_header(tmp_path: Path) -> None:
    members = folder_zip(TWO_CLASSES)
    members["b/big.png"] = _png_header(3000, 2000)  # under PIL's own bomb limit, over the 1024x1024 budget
    err = rejected(tmp_path, zip_bytes(members))
    assert err.problems == ["images too large to decode (more than 1048576 pixels declared in the header): "
                            "'b/big.png' (the image declares 3000x2000 pixels; at most 1048576 pixels (for example "
                            "1024x1024) are decoded, and the model sees 28x28: scale it down before sending (JPEG is "
                            "reduced while decoding))"]


def test_archive_encrypted_member_is_refused(tmp_path: Path) -> None:
    data = zip_bytes(folder_zip(TWO_CLASSES))
    at = data.find(b"PK\x01\x02")
    forged = bytearray(data)
    struct.pack_into("<H", forged, at + 8, 1)  # general purpose flag bit 0: encrypted
    err = rejected(tmp_path, bytes(forged))
    assert err.problems == ["encrypted members, which cannot be read: 'a/00000.png'"]


def test_archive_every_structural_problem_is_listed_at_once(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in folder_zip(TWO_CLASSES).items():
            zf.writestr(name, data)
        zf.writestr("../escape.png", b"x")
        link = zipfile.ZipInfo("b/link.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "x")
    err = rejected(tmp_path, buf.getvalue())
    assert err.problems == ["paths that leave the archive (a '..' part or an absolute path): '../escape.png'",
                            "symbolic links, which are refused: 'b/link.png'"]


def test_archive_upload_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    err = rejected(tmp_path, zip_bytes(folder_zip(TWO_CLASSES)), IngestLimits(max_upload_bytes=1000))
    assert err.status == 413
    assert err.problems[0].endswith("bytes; at most 1000 are accepted")
