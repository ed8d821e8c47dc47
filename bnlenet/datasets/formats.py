"""The upload formats, each read into pixels and labels: a zip of class folders, the four IDX files, a MedMNIST .npz.

Which one is decided from the content (a zip whose members are ``.npy`` arrays is an ``.npz``; one
whose members are IDX files is the MNIST family's; any other zip holds class folders); the file
name is only a hint in messages. Every image becomes 28x28 uint8 through ``models.preprocess``'s
``decode_image`` and ``to_pixels``, the path /predict takes, so an upload trains on what serving sees.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bnlenet.datasets.archive import ARCHIVE_SUFFIXES, Archive, Member, archive_magic, gunzip, listed
from bnlenet.datasets.errors import UNPROCESSABLE, UNSUPPORTED, DatasetRejected
from bnlenet.datasets.limits import IngestLimits
from models.data import DataError, parse_idx
from models.lenet import IMAGE_SIZE
from models.preprocess import ImageError, ImageTooLarge, decode_image, to_pixels

__all__ = ["IMAGE_SUFFIXES", "Parsed", "Split", "natural_key", "read_upload"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm")
SPLIT_DIRS = ("train", "test")
_SPLIT_NAMES = {"train": "train", "training": "train", "test": "test", "testing": "test"}  # folder -> split
# A held-out folder: the test split where the zip has no test/ folder, else not used.
_HELD_OUT_DIRS = ("val", "valid", "validation", "dev")
NPZ_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
NPZ_OPTIONAL = ("val_images", "val_labels")


@dataclass
class Split:
    """One split's images, converted, with labels as indices into the class list (-1: not in it)."""

    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64
    names: list[str] | None = None  # per image, for the report; None: "<split>[i]"

    def name(self, split: str, i: int) -> str:
        return self.names[i] if self.names is not None else f"{split}[{i}]"


@dataclass
class Parsed:
    """What a reader found: the splits (test None when the service splits), the classes, and what the report needs."""

    format: str
    classes: tuple[str, ...]
    train: Split
    test: Split | None
    image_sizes: Counter[str] = field(default_factory=Counter)
    image_modes: Counter[str] = field(default_factory=Counter)
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # refusals found while reading (labels outside the list...)


def natural_key(name: str) -> tuple[list[object], str]:
    """Sort key that puts ``class2`` before ``class10``; names it cannot tell apart (``Cat``, ``cat``) by
    their text, so the order never depends on the process (a set's order does)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)], name


def class_name(name: str) -> str:
    """A class's name as stored: Unicode NFC (macOS writes folder names decomposed, most tools composed)."""
    return unicodedata.normalize("NFC", name)


def read_upload(path: Path, filename: str, classes: Sequence[str] | None, limits: IngestLimits) -> Parsed:
    """Read an upload of any accepted format; DatasetRejected when it is hostile or unreadable."""
    with open(path, "rb") as f:
        head = f.read(512)
    kind = archive_magic(head)
    if kind != "zip":
        if head[:2] == b"\x00\x00" and len(head) >= 4 and head[2] == 0x08:
            raise DatasetRejected([f"{filename!r} is a single IDX file: send the four IDX files (train and test "
                                   "images and labels, gzipped or not) together in one zip"], UNSUPPORTED)
        if kind == "gzip":
            raise DatasetRejected([f"{filename!r} is a single gzip file: send the four IDX files together in one zip"],
                                  UNSUPPORTED)
        what = f"a {kind} archive" if kind else "not a zip or an .npz"
        raise DatasetRejected([f"{filename!r} is {what}: accepted are a zip of class folders, a zip of the four IDX "
                               "files, or a MedMNIST-style .npz"], UNSUPPORTED)
    if classes is not None:
        if len(classes) > limits.max_classes:
            raise DatasetRejected([f"{len(classes)} classes given; at most {limits.max_classes} are accepted "
                                   "(a LeNet's outputs)"])
        classes = [class_name(c) for c in classes]
    archive = Archive.open(path, limits)
    try:
        names = [m.name for m in archive.members]
        if names and all(n.endswith(".npy") for n in names):
            return _read_npz(archive, classes, limits)
        if names and all(_is_idx_name(n) for n in names):
            return _read_idx_zip(archive, classes, limits)
        return _read_folders(archive, classes, limits)
    finally:
        archive.close()


# --- IDX (the MNIST family) and .npz: arrays ---------------------------------------------------

def _is_idx_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return "ubyte" in base or re.search(r"idx[13]", base) is not None


def _idx_role(name: str) -> str | None:
    base = name.rsplit("/", 1)[-1].lower()
    split = "train" if "train" in base else "test" if ("t10k" in base or "test" in base) else None
    kind = "images" if ("images" in base or "idx3" in base) else "labels" if ("labels" in base or "idx1" in base) else None
    return f"{split}_{kind}" if split and kind else None


def _read_idx_zip(archive: Archive, classes: Sequence[str] | None, limits: IngestLimits) -> Parsed:
    roles: dict[str, Member] = {}
    problems = []
    for m in archive.members:
        role = _idx_role(m.name)
        if role is None:
            problems.append(f"cannot tell which IDX file {m.name!r} is (its name should say train or t10k/test, "
                            "and images or labels)")
        elif role in roles:
            problems.append(f"two files for {role.replace('_', ' ')}: {roles[role].name!r} and {m.name!r}")
        else:
            roles[role] = m
    missing = [r.replace("_", " ") for r in NPZ_ARRAYS if r not in roles]
    if missing:
        problems.append(f"the zip lacks the IDX file(s) for {', '.join(missing)} (four are needed: "
                        "train-images, train-labels, t10k-images, t10k-labels)")
    if problems:
        raise DatasetRejected(problems)
    arrays = {}
    for role in NPZ_ARRAYS:
        m = roles[role]
        data = archive.read(m)
        if data[:2] == b"\x1f\x8b":
            data = gunzip(data, m.name, limits, archive)
        try:
            arrays[role] = parse_idx(data, repr(m.name))
        except DataError as exc:
            problems.append(str(exc))
            continue
        want = 3 if role.endswith("images") else 1
        if arrays[role].ndim != want:
            problems.append(f"{m.name!r} holds a {arrays[role].ndim}-dimensional array; {role.replace('_', ' ')} "
                            f"must be {want}-dimensional")
    if problems:
        raise DatasetRejected(problems)
    return _from_arrays("idx", arrays, classes, limits, [])


def _read_npz(archive: Archive, classes: Sequence[str] | None, limits: IngestLimits) -> Parsed:
    by_key = {m.name.removesuffix(".npy"): m for m in archive.members}
    problems = []
    unexpected = sorted(set(by_key) - set(NPZ_ARRAYS) - set(NPZ_OPTIONAL))
    if unexpected:
        problems.append(f"the .npz holds arrays this service does not read: {listed(unexpected, limits)} "
                        f"(expected {', '.join(NPZ_ARRAYS)}, optionally {', '.join(NPZ_OPTIONAL)})")
    missing = [k for k in NPZ_ARRAYS if k not in by_key]
    if missing:
        problems.append(f"the .npz lacks the array(s) {', '.join(missing)}")
    if problems:
        raise DatasetRejected(problems)
    arrays: dict[str, np.ndarray] = {}
    for key in NPZ_ARRAYS:
        loaded = _load_npy(key, archive.read(by_key[key]))
        if isinstance(loaded, str):
            problems.append(loaded)
        else:
            arrays[key] = loaded
    for key, arr in arrays.items():
        problems.extend(_array_problems(key, arr))
    if problems:
        raise DatasetRejected(problems)
    ignored = [k for k in NPZ_OPTIONAL if k in by_key]
    warnings = [f"{', '.join(ignored)} are not used: the service trains on train_* and evaluates on test_*"] if ignored else []
    arrays = {k: (a.reshape(len(a)) if k.endswith("labels") else a) for k, a in arrays.items()}
    return _from_arrays("npz", arrays, classes, limits, warnings)


def _load_npy(key: str, data: bytes) -> np.ndarray | str:
    """One ``.npy`` member's array, or the problem with it; its header is checked against its size first.

    ``read_array`` allocates the shape its header declares before reading, so a forged shape
    would ask for any amount of memory; and an object dtype would be a pickle.
    """
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        return f"{key} is not a readable .npy array: {exc}"
    if dtype.hasobject:
        return f"{key} is an array of Python objects (a pickle), which is never loaded: arrays must hold numbers"
    declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if declared != len(data) - f.tell():
        return f"{key} declares shape {shape} of {dtype} ({declared} bytes) but holds {len(data) - f.tell()} bytes"
    f.seek(0)
    try:
        return np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        return f"{key} is not a readable .npy array: {exc}"


def _array_problems(key: str, arr: np.ndarray) -> list[str]:
    """Dtype, NaN and shape problems of one .npz array, each naming it."""
    out = []
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        out.append(f"{key} holds NaN or infinite values")
    if key.endswith("images"):
        if arr.dtype != np.uint8:
            out.append(f"{key} has dtype {arr.dtype}; images must be uint8 (0-255 pixels, as MedMNIST's)")
        if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (1, 3, 4))):
            out.append(f"{key} has shape {arr.shape}; images must be (N, H, W) or (N, H, W, 1|3|4)")
        elif 0 in arr.shape[1:3]:
            out.append(f"{key} has shape {arr.shape}: images with no pixels (H and W must be at least 1)")
    else:
        if arr.dtype.kind not in "iu":
            out.append(f"{key} has dtype {arr.dtype}; labels must be integers")
        if not (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)):
            out.append(f"{key} has shape {arr.shape}; labels must be (N,) or (N, 1), one class per image "
                       "(multi-label sets are not supported)")
    return out


def _from_arrays(fmt: str, arrays: dict[str, np.ndarray], classes: Sequence[str] | None,
                 limits: IngestLimits, warnings: list[str]) -> Parsed:
    problems = []
    for split in SPLIT_DIRS:
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            problems.append(f"label and image counts disagree: {split} has {n_img} images but {n_lab} labels")
    if problems:
        raise DatasetRejected(problems)
    labels = {s: arrays[f"{s}_labels"].astype(np.int64) for s in SPLIT_DIRS}
    top = max((int(v.max()) for v in labels.values() if len(v)), default=-1)
    if classes is None:
        if top >= limits.max_classes:
            raise DatasetRejected([f"labels go up to {top}; at most {limits.max_classes} classes are accepted"])
        names = tuple(str(i) for i in range(top + 1))
    else:
        names = tuple(classes)
    parsed = Parsed(fmt, names, Split(np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), labels["train"]), None,
                    warnings=list(warnings))
    for split in SPLIT_DIRS:
        lab = labels[split]
        outside = (lab < 0) | (lab >= len(names))
        if outside.any():
            bad = sorted({int(v) for v in lab[outside]})
            parsed.problems.append(
                f"labels outside the class list: {split} has {int(outside.sum())} images labelled "
                f"{', '.join(map(str, bad[: limits.max_listed]))}; the class list has {len(names)} classes "
                f"(labels 0..{len(names) - 1})")
            lab = np.where(outside, -1, lab)
        images = _arrays_to_pixels(arrays[f"{split}_images"], parsed)
        if split == "train":
            parsed.train = Split(images, lab)
        else:
            parsed.test = Split(images, lab)
    return parsed


def _arrays_to_pixels(arr: np.ndarray, parsed: Parsed) -> np.ndarray:
    """(N, H, W[, C]) uint8 to (N, 28, 28) as /predict converts: each image through ``to_pixels``.

    28x28 grayscale arrays already are what ``to_pixels`` returns (it leaves a 28x28 mode-L image
    unchanged; a test checks it), so they are taken whole.
    """
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    n = len(arr)
    h, w = arr.shape[1], arr.shape[2]
    mode = {3: "L", 4: {3: "RGB", 4: "RGBA"}.get(arr.shape[-1], "?")}[arr.ndim] if arr.ndim == 4 else "L"
    parsed.image_sizes[f"{w}x{h}"] += n
    parsed.image_modes[mode] += n
    if arr.ndim == 3 and (h, w) == (IMAGE_SIZE, IMAGE_SIZE):
        return np.ascontiguousarray(arr, dtype=np.uint8)
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i in range(n):
        out[i] = to_pixels(Image.fromarray(np.ascontiguousarray(arr[i]), mode=mode))
    return out


# --- a zip of class folders ----------------------------------------------------------------------

def _strip_common_top(members: list[Member]) -> list[tuple[tuple[str, ...], Member]]:
    """Members' path parts without the folders every member shares, as long as each keeps a folder and a file."""
    items = [(m.parts, m) for m in members]
    while items and len({p[0] for p, _ in items}) == 1 and all(len(p) >= 3 for p, _ in items):
        items = [(p[1:], m) for p, m in items]
    return items


def _read_folders(archive: Archive, classes: Sequence[str] | None, limits: IngestLimits) -> Parsed:
    items = _strip_common_top(archive.members)
    warnings: list[str] = []
    problems: list[str] = []
    roles = _split_roles({p[0] for p, _ in items if len(p) > 1}, warnings)
    by_split = roles is not None
    if roles is not None:
        kept_items, splits = [], []
        for p, m in items:
            role = roles.get(p[0], "") if len(p) > 1 else ""  # a file beside train/ and test/ is outside them
            if role is None:
                continue  # a held-out folder beside test/
            kept_items.append((p[1:] if role else p, m))
            splits.append(role or "train")
        items = kept_items
    else:
        splits = ["train"] * len(items)
    outside, non_images, nested = [], [], []
    wanted: list[tuple[str, str, Member]] = []  # (split, class folder, member)
    for (parts, m), split in zip(items, splits, strict=True):
        suffix = Path(parts[-1]).suffix.lower()
        if suffix in ARCHIVE_SUFFIXES:
            nested.append(m.name)
        elif suffix not in IMAGE_SUFFIXES:
            non_images.append(m.name)
        elif len(parts) < 2:
            outside.append(m.name)
        else:
            wanted.append((split, class_name(parts[0]), m))
    if nested:
        problems.append(_nested_problem(nested, limits))
    if non_images:
        problems.append(f"files that are not images (by their suffix; accepted: {' '.join(IMAGE_SUFFIXES)}): "
                        f"{listed(non_images, limits)}")
    if outside:
        where = "train/<class>/ or test/<class>/" if by_split else "a folder named for its class"
        problems.append(f"files outside class folders (each image must be in {where}): {listed(outside, limits)}")
    folders = sorted({c for _, c, _ in wanted}, key=natural_key)
    if classes is None:
        names = tuple(folders)
        if len(names) > limits.max_classes:
            problems.append(f"the zip has {len(names)} class folders; at most {limits.max_classes} are accepted")
    else:
        names = tuple(classes)
        stray = [f for f in folders if f not in names]
        if stray:
            problems.append(f"labels outside the class list: folders {listed(stray, limits)} are not among the "
                            f"classes given ({', '.join(names)})")
    if problems:
        raise DatasetRejected(problems)
    index = {c: i for i, c in enumerate(names)}
    parsed = Parsed("zip-split" if by_split else "zip-folders", names,
                    Split(np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.empty(0, np.int64)), None,
                    warnings=warnings)
    parsed.skipped.extend({"name": n, "reason": "a file the operating system adds"} for n in archive.system_files)
    huge: list[str] = []
    damaged: list[str] = []
    for split in SPLIT_DIRS if by_split else ("train",):
        result = _decode([(c, m) for s, c, m in wanted if s == split], index, archive, parsed, nested, huge, damaged)
        if split == "train":
            parsed.train = result
        else:
            parsed.test = result
    problems.extend(damaged)
    if nested:
        problems.append(_nested_problem(nested, limits))
    if huge:
        problems.append(f"images too large to decode (more than {limits.max_image_pixels} pixels declared in the "
                        f"header): {listed(huge, limits, quote=False)}")
    if problems:
        raise DatasetRejected(problems)
    return parsed


def _split_roles(tops: set[str], warnings: list[str]) -> dict[str, str | None] | None:
    """The split each top folder holds (None: not used), when the top folders are splits; None when they are classes.

    Splits by their usual names: ``train``/``training`` and ``test``/``testing``; a held-out folder
    (``val``, ``valid``, ``validation``, ``dev``) is the test split where there is no test folder.
    """
    known = {t: t.lower() for t in tops}
    if not tops or any(n not in _SPLIT_NAMES and n not in _HELD_OUT_DIRS for n in known.values()):
        return None
    roles: dict[str, str | None] = {t: _SPLIT_NAMES.get(n) for t, n in known.items()}
    if "train" not in roles.values():
        return None
    if "test" not in roles.values():
        held_out = sorted((t for t, r in roles.items() if r is None), key=lambda t: _HELD_OUT_DIRS.index(known[t]))
        if not held_out:
            return None
        roles[held_out[0]] = "test"
        warnings.append(f"{held_out[0]}/ is the test split (the zip has no test/)")
    unused = sorted(t for t, r in roles.items() if r is None)
    if unused:
        warnings.append(f"folders {', '.join(unused)} are not used: the service trains on train/ and evaluates on "
                        "test/")
    return roles


def _nested_problem(names: list[str], limits: IngestLimits) -> str:
    return f"nested archives, which are not opened: {listed(names, limits)}"


def _decode(chosen: list[tuple[str, Member]], index: dict[str, int], archive: Archive, parsed: Parsed,
            nested: list[str], huge: list[str], damaged: list[str]) -> Split:
    """One split's members decoded and converted, one member in memory at a time.

    Broken images go to ``parsed.skipped``; archives in disguise to ``nested``, images over the
    pixel budget to ``huge`` and members the zip itself holds damaged to ``damaged`` (refusals,
    listed by the caller with every other problem). A bomb stops the reading at once.
    """
    pixels = np.empty((len(chosen), IMAGE_SIZE, IMAGE_SIZE), np.uint8)  # bounded by max_files
    labels: list[int] = []
    kept: list[str] = []
    for cls, m in chosen:
        try:
            data = archive.read(m)
        except DatasetRejected as exc:
            if exc.status != UNPROCESSABLE:
                raise  # too large: nothing more is read
            damaged.extend(exc.problems)
            continue
        if archive_magic(data) is not None:
            nested.append(m.name)
            continue
        try:
            img = decode_image(data, max_pixels=archive.limits.max_image_pixels)
            converted = to_pixels(img)
        except ImageTooLarge as exc:
            huge.append(f"{m.name!r} ({exc})")
            continue
        except ImageError as exc:
            parsed.skipped.append({"name": m.name, "reason": str(exc)})
            continue
        parsed.image_sizes[f"{img.size[0]}x{img.size[1]}"] += 1
        parsed.image_modes[img.mode] += 1
        pixels[len(kept)] = converted
        labels.append(index[cls])
        kept.append(m.name)
    return Split(pixels[: len(kept)].copy() if len(kept) < len(chosen) else pixels,
                 np.asarray(labels, dtype=np.int64), kept)
