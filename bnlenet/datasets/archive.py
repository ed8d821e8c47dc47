"""Reading an uploaded zip without trusting it: every member checked from the central directory, then streamed.

Before any member is decompressed: the number of entries (from the end record, before the
central directory is parsed), each name (no ``..``, no absolute path), no symlinks, no encrypted
members, each member's declared size against its compressed size (``max_ratio``) and the declared
total (``max_uncompressed_bytes``). While a member is read: its actual bytes against its declared
size (a member that inflates past what its header says is a forged header, the classic zip bomb)
and the running total against the cap. gzip streams inside (IDX files) get the same treatment.
"""

from __future__ import annotations

import copy
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from bnlenet.datasets.errors import TOO_LARGE, UNPROCESSABLE, UNSUPPORTED, DatasetRejected
from bnlenet.datasets.limits import IngestLimits

__all__ = ["ARCHIVE_SUFFIXES", "Archive", "Member", "archive_magic", "gunzip", "listed"]

CHUNK = 1 << 16
ARCHIVE_SUFFIXES = (".zip", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".7z", ".rar", ".jar", ".zst", ".npz", ".lzma")
_MAGIC = {b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"\x1f\x8b": "gzip", b"7z\xbc\xaf": "7z", b"Rar!": "rar",
          b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
# Files that operating systems add to archives; skipped (and reported), never refused.
_SYSTEM_NAMES = {".ds_store", "thumbs.db", "desktop.ini", ".directory"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_S_IFMT, _S_IFLNK = 0o170000, 0o120000


def archive_magic(data: bytes) -> str | None:
    """The archive kind these bytes start with, or None; tar by its ``ustar`` marker at offset 257."""
    for magic, kind in _MAGIC.items():
        if data.startswith(magic):
            return kind
    return "tar" if data[257:262] == b"ustar" else None


def listed(items: list[str], limits: IngestLimits, *, quote: bool = True) -> str:
    """``'a', 'b' and 3 more``: names in a problem sentence, at most ``max_listed``."""
    shown = ", ".join(repr(i) if quote else i for i in items[: limits.max_listed])
    more = len(items) - limits.max_listed
    return shown + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class Member:
    """One file of the archive: its checked name (POSIX, no leading ``./``) and its zip entry."""

    name: str
    info: zipfile.ZipInfo

    @property
    def parts(self) -> tuple[str, ...]:
        return PurePosixPath(self.name).parts


@dataclass
class Archive:
    """An opened, checked zip: its file members, the system files it skipped, and a decompression budget."""

    zf: zipfile.ZipFile
    members: list[Member]
    system_files: list[str]
    limits: IngestLimits
    decompressed: int = field(default=0)

    @classmethod
    def open(cls, path: Path, limits: IngestLimits) -> Archive:
        """Open ``path`` as a zip and check every entry from its central directory; DatasetRejected listing all."""
        with open(path, "rb") as f:
            entries = _declared_entries(f)
        if entries is not None and entries > limits.max_files:
            raise DatasetRejected([f"the zip holds {entries} entries; at most {limits.max_files} files are accepted "
                                   "(too many files)"], TOO_LARGE)
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise DatasetRejected([f"the upload is not a readable zip: {exc}"], UNSUPPORTED) from exc
        try:
            return cls._checked(zf, limits)
        except BaseException:
            zf.close()
            raise

    @classmethod
    def _checked(cls, zf: zipfile.ZipFile, limits: IngestLimits) -> Archive:
        infos = zf.infolist()
        too_large: list[str] = []
        problems: list[str] = []
        if len(infos) > limits.max_files:
            too_large.append(f"the zip holds {len(infos)} entries; at most {limits.max_files} files are accepted "
                             "(too many files)")
        unsafe, links, encrypted, ratios = [], [], [], []
        members, system = [], []
        declared = 0
        for info in infos:
            raw = info.filename
            name = raw.replace("\\", "/")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if name.startswith("/") or _DRIVE.match(name) or ".." in parts:
                unsafe.append(raw)
                continue
            if (info.external_attr >> 16) & _S_IFMT == _S_IFLNK:
                links.append(raw)
                continue
            if info.is_dir() or not parts:
                continue
            if info.flag_bits & 0x1:
                encrypted.append(raw)
            declared += info.file_size
            if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                ratios.append(f"{raw!r} ({info.file_size} bytes from {info.compress_size}, "
                              f"{info.file_size / max(info.compress_size, 1):.0f}:1)")
            if parts[0] == "__MACOSX" or parts[-1].lower() in _SYSTEM_NAMES or parts[-1].startswith("._"):
                system.append("/".join(parts))
                continue
            members.append(Member("/".join(parts), info))
        if unsafe:
            problems.append(f"paths that leave the archive (a '..' part or an absolute path): {listed(unsafe, limits)}")
        if links:
            problems.append(f"symbolic links, which are refused: {listed(links, limits)}")
        if encrypted:
            problems.append(f"encrypted members, which cannot be read: {listed(encrypted, limits)}")
        if ratios:
            too_large.append(f"members compressed more than {limits.max_ratio:.0f}:1 (a zip bomb's signature): "
                             f"{listed(ratios, limits, quote=False)}")
        if declared > limits.max_uncompressed_bytes:
            too_large.append(f"the zip declares {declared} bytes uncompressed; at most {limits.max_uncompressed_bytes} "
                             "are accepted (a zip bomb, or a data set too large)")
        if too_large or problems:
            raise DatasetRejected(too_large + problems, TOO_LARGE if too_large else UNPROCESSABLE)
        members.sort(key=lambda m: m.name)
        return cls(zf, members, system, limits)

    def read(self, member: Member) -> bytes:
        """The member's bytes, stopping as soon as they exceed its declared size or the total budget."""
        info = member.info
        # zipfile stops at the declared size (and then fails the CRC); asking for one byte more
        # shows a member that inflates past its header, which is then refused by name. zipfile's
        # CRC check would fire at that byte, so the CRC is checked here instead.
        probe = copy.copy(info)
        probe.file_size = info.file_size + 1
        del probe.CRC
        out = bytearray()
        try:
            with self.zf.open(probe) as f:
                while chunk := f.read(CHUNK):
                    out += chunk
                    self._count(len(chunk))
                    if len(out) > info.file_size:
                        raise DatasetRejected(
                            [f"{member.name!r} decompresses to more than the {info.file_size} bytes its header "
                             "declares (a forged size, as zip bombs have)"], TOO_LARGE)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
            raise DatasetRejected([f"{member.name!r} cannot be read from the zip: {exc}"]) from exc
        if len(out) != info.file_size:
            raise DatasetRejected([f"{member.name!r} decompresses to {len(out)} bytes, not the {info.file_size} "
                                   "its header declares (a forged or damaged archive)"])
        if zlib.crc32(out) != info.CRC:
            raise DatasetRejected([f"{member.name!r} is damaged: its CRC-32 does not match the zip's"])
        return bytes(out)

    def _count(self, n: int) -> None:
        self.decompressed += n
        if self.decompressed > self.limits.max_uncompressed_bytes:
            raise DatasetRejected([f"the zip decompresses to more than {self.limits.max_uncompressed_bytes} bytes "
                                   "(a zip bomb, or a data set too large)"], TOO_LARGE)

    def close(self) -> None:
        self.zf.close()


def gunzip(data: bytes, name: str, limits: IngestLimits, archive: Archive | None = None) -> bytes:
    """Decompress a gzip stream (concatenated members too) within the ratio and total caps, chunk by chunk."""
    out = bytearray()
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(31)
            buf = rest
            while buf:
                chunk = d.decompress(buf, CHUNK)
                buf = d.unconsumed_tail
                _gzip_budget(out, chunk, len(data), name, limits, archive)
                if d.eof:
                    break
            else:
                chunk = d.flush()
                _gzip_budget(out, chunk, len(data), name, limits, archive)
                if not d.eof:
                    raise DatasetRejected([f"{name!r} is a truncated gzip stream"])
            rest = d.unused_data
    except zlib.error as exc:
        raise DatasetRejected([f"{name!r} is not a readable gzip stream: {exc}"]) from exc
    return bytes(out)


def _gzip_budget(out: bytearray, chunk: bytes, compressed: int, name: str, limits: IngestLimits,
                 archive: Archive | None) -> None:
    out += chunk
    if archive is not None:
        archive._count(len(chunk))
    elif len(out) > limits.max_uncompressed_bytes:
        raise DatasetRejected([f"{name!r} decompresses to more than {limits.max_uncompressed_bytes} bytes"], TOO_LARGE)
    if len(out) > limits.ratio_floor_bytes and len(out) > limits.max_ratio * max(compressed, 1):
        raise DatasetRejected([f"{name!r} decompresses more than {limits.max_ratio:.0f}:1 (a gzip bomb's signature)"],
                              TOO_LARGE)


def _declared_entries(f: IO[bytes]) -> int | None:
    """The entry count the zip's end record declares, read before the central directory is parsed."""
    end_record = getattr(zipfile, "_EndRecData", None)  # stable since Python 2; absent -> the parsed count decides
    if end_record is None:
        return None
    try:
        rec = end_record(f)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return int(rec[4]) if rec else None  # _ECD_ENTRIES_TOTAL
