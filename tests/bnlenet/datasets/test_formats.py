"""The readers: IDX zip, MedMNIST .npz, zips of class folders, and the one conversion /predict also uses."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnlenet.datasets import DatasetRejected, ingest
from bnlenet.datasets.limits import IngestLimits
from models.preprocess import ImageError, image_to_tensor, to_pixels
from tests.bnlenet.datasets.builders import folder_zip, idx_zip, npz_bytes, pattern, png, small_arrays, write, zip_bytes


def rejected(path: Path, **kwargs: object) -> DatasetRejected:
    with pytest.raises(DatasetRejected) as info:
        ingest(path, path.name, **kwargs)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize("gz", [True, False])
def test_formats_idx_zip_reads_the_four_files(tmp_path: Path, gz: bool) -> None:
    arrays = small_arrays()
    d = ingest(write(tmp_path / "u.zip", idx_zip(arrays, tmp_path, gz=gz)), "u.zip")
    assert np.array_equal(d.train_images, arrays["train_images"])
    assert np.array_equal(d.test_labels, arrays["test_labels"].astype(np.int64))
    assert d.train_labels.dtype == np.int64
    assert d.classes == ("0", "1", "2")
    assert d.report["format"] == "idx"
    assert d.report["split"] == {"source": "upload", "test_fraction": None, "seed": None}


def test_formats_idx_zip_with_counts_that_disagree_is_refused(tmp_path: Path) -> None:
    arrays = small_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    err = rejected(write(tmp_path / "u.zip", idx_zip(arrays, tmp_path)))
    assert err.problems == ["label and image counts disagree: train has 36 images but 35 labels"]


def test_formats_idx_zip_missing_a_file_is_refused(tmp_path: Path) -> None:
    arrays = small_arrays()
    del arrays["test_labels"]
    err = rejected(write(tmp_path / "u.zip", idx_zip(arrays, tmp_path)))
    assert err.problems == ["the zip lacks the IDX file(s) for test labels (four are needed: train-images, "
                            "train-labels, t10k-images, t10k-labels)"]


def test_formats_single_idx_file_is_refused_as_unsupported(tmp_path: Path) -> None:
    from models.data import write_idx

    path = write_idx(tmp_path / "train-images-idx3-ubyte", small_arrays()["train_images"])
    err = rejected(path)
    assert err.status == 415
    assert "is a single IDX file: send the four IDX files" in err.problems[0]


def test_formats_npz_reads_medmnist_shape(tmp_path: Path) -> None:
    arrays = small_arrays()
    arrays["train_labels"] = arrays["train_labels"][:, None]  # MedMNIST's (N, 1)
    arrays["val_images"], arrays["val_labels"] = arrays["test_images"], arrays["test_labels"]
    d = ingest(write(tmp_path / "u.npz", npz_bytes(**arrays)), "u.npz", classes=["x", "y", "z"])
    assert np.array_equal(d.train_images, arrays["train_images"])
    assert np.array_equal(d.train_labels, arrays["train_labels"][:, 0].astype(np.int64))
    assert d.classes == ("x", "y", "z")
    assert d.report["format"] == "npz"
    assert d.report["warnings"] == ["val_images, val_labels are not used: the service trains on train_* and "
                                    "evaluates on test_*"]


def test_formats_npz_rgb_and_larger_images_go_through_to_pixels(tmp_path: Path) -> None:
    arrays = small_arrays()
    rng = np.random.default_rng(0)
    arrays["train_images"] = rng.integers(0, 256, (36, 64, 64, 3), dtype=np.uint8)  # MedMNIST+ 64x64 RGB
    d = ingest(write(tmp_path / "u.npz", npz_bytes(**arrays)), "u.npz")
    expected = np.stack([to_pixels(Image.fromarray(a, mode="RGB")) for a in arrays["train_images"]])
    assert np.array_equal(d.train_images, expected)
    assert d.report["image_sizes"] == {"64x64": 36, "28x28": 12}
    assert d.report["image_modes"] == {"RGB": 36, "L": 12}


def test_formats_npz_with_nan_and_float_images_is_refused(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = dict(small_arrays())
    floats = arrays["train_images"].astype(np.float32) / 255
    floats[0, 0, 0] = np.nan
    arrays["train_images"] = floats
    arrays["test_labels"] = arrays["test_labels"].astype(np.float64)
    err = rejected(write(tmp_path / "u.npz", npz_bytes(**arrays)))
    assert err.problems == [
        "train_images holds NaN or infinite values",
        "train_images has dtype float32; images must be uint8 (0-255 pixels, as MedMNIST's)",
        "test_labels has dtype float64; labels must be integers",
    ]


def test_formats_npz_with_float_images_without_nan_is_refused_for_its_dtype(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = dict(small_arrays())
    arrays["test_images"] = arrays["test_images"].astype(np.float64)
    err = rejected(write(tmp_path / "u.npz", npz_bytes(**arrays)))
    assert err.problems == ["test_images has dtype float64; images must be uint8 (0-255 pixels, as MedMNIST's)"]


def test_formats_npz_with_a_pickled_object_array_is_refused_unloaded(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    arrays: dict[str, np.ndarray] = dict(small_arrays())
    arrays["train_labels"] = np.array([{"a": 1}] * 36, dtype=object)
    data = npz_bytes(**arrays)
    unpickled = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: unpickled.append(1))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: unpickled.append(1))
    err = rejected(write(tmp_path / "u.npz", data))
    assert err.problems == ["train_labels is an array of Python objects (a pickle), which is never loaded: "
                            "arrays must hold numbers"]
    assert unpickled == []


def test_formats_npz_with_counts_that_disagree_is_refused(tmp_path: Path) -> None:
    arrays = small_arrays()
    arrays["test_images"] = arrays["test_images"][:5]
    err = rejected(write(tmp_path / "u.npz", npz_bytes(**arrays)))
    assert err.problems == ["label and image counts disagree: test has 5 images but 12 labels"]


def test_formats_npz_with_labels_outside_the_class_list_lists_every_split(tmp_path: Path) -> None:
    arrays = small_arrays()
    err = rejected(write(tmp_path / "u.npz", npz_bytes(**arrays)), classes=["x", "y"])
    assert err.problems == [
        "labels outside the class list: train has 12 images labelled 2; the class list has 2 classes (labels 0..1)",
        "labels outside the class list: test has 4 images labelled 2; the class list has 2 classes (labels 0..1)",
    ]


def test_formats_npz_missing_and_unexpected_arrays_are_named(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = dict(small_arrays())
    del arrays["test_labels"]
    arrays["extra"] = np.zeros(3)
    err = rejected(write(tmp_path / "u.npz", npz_bytes(**arrays)))
    assert err.problems == [
        "the .npz holds arrays this service does not read: 'extra' (expected train_images, train_labels, "
        "test_images, test_labels, optionally val_images, val_labels)",
        "the .npz lacks the array(s) test_labels",
    ]


def test_formats_folder_zip_under_a_common_top_folder_with_train_and_test(tmp_path: Path) -> None:
    members = folder_zip({"cat": 10, "dog": 11}, prefix="mydata/train/")
    members.update(folder_zip({"cat": 3, "dog": 2}, prefix="mydata/test/", start=100))
    d = ingest(write(tmp_path / "u.zip", zip_bytes(members)), "u.zip")
    assert d.classes == ("cat", "dog")
    assert d.report["format"] == "zip-split"
    assert d.report["counts"] == {"train": {"cat": 10, "dog": 11}, "test": {"cat": 3, "dog": 2}}
    assert d.report["split"]["source"] == "upload"
    assert np.array_equal(d.train_images[0], pattern(0, 0)) and np.array_equal(d.test_images[-1], pattern(1, 101))


def test_formats_folder_zip_classes_in_natural_order_or_as_given(tmp_path: Path) -> None:
    members = folder_zip({"class2": 13, "class10": 13, "class1": 13})
    path = write(tmp_path / "u.zip", zip_bytes(members))
    assert ingest(path, "u.zip").classes == ("class1", "class2", "class10")
    given = ("class10", "class2", "class1")
    d2 = ingest(path, "u.zip", classes=given)
    assert d2.classes == given
    # labels follow the given order: class10's images (pattern label 1) are label 0
    assert set(d2.train_labels[[np.array_equal(img[2], pattern(1, 0)[2]) for img in d2.train_images]]) == {0}


def test_formats_folder_not_in_the_given_classes_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "u.zip", zip_bytes(folder_zip({"cat": 10, "dog": 10, "emu": 10})))
    err = rejected(path, classes=["cat", "dog"])
    assert err.problems == ["labels outside the class list: folders 'emu' are not among the classes given (cat, dog)"]


def test_formats_files_outside_class_folders_are_refused(tmp_path: Path) -> None:
    members = folder_zip({"cat": 10, "dog": 10})
    members["loose.png"] = png(pattern(0, 99))
    err = rejected(write(tmp_path / "u.zip", zip_bytes(members)))
    assert err.problems == ["files outside class folders (each image must be in a folder named for its class): "
                            "'loose.png'"]


def test_formats_broken_images_are_skipped_by_name(tmp_path: Path) -> None:
    members = folder_zip({"cat": 13, "dog": 13})
    members["cat/broken.png"] = png(pattern(0, 50))[:60]
    members["dog/empty.jpg"] = b""
    d = ingest(write(tmp_path / "u.zip", zip_bytes(members)), "u.zip")
    assert [s["name"] for s in d.report["skipped"]] == ["cat/broken.png", "dog/empty.jpg"]
    assert d.report["skipped"][1]["reason"] == "the image is empty"
    assert "the image is truncated or corrupt" in d.report["skipped"][0]["reason"]
    assert len(d.train_images) + len(d.test_images) == 26
    assert "2 file(s) skipped (see skipped)" in d.report["warnings"]


def test_formats_upload_images_convert_exactly_as_predict_does(tmp_path: Path) -> None:
    """Images of any size and mode become what /predict's image_to_tensor feeds the network."""
    rng = np.random.default_rng(1)
    odd = {
        "a/rgba.png": png(rng.integers(0, 256, (40, 30, 4)), mode="RGBA"),
        "a/rgb.jpg": _jpeg(rng.integers(0, 256, (50, 50, 3))),
        "b/big_gray.png": png(rng.integers(0, 256, (300, 200))),
        "b/tiny.bmp": _bmp(rng.integers(0, 256, (8, 8))),
    }
    members = {**folder_zip({"a": 12, "b": 12}), **odd}
    d = ingest(write(tmp_path / "u.zip", zip_bytes(members)), "u.zip")
    everything = np.concatenate([d.train_images, d.test_images])
    for data in odd.values():
        served = (image_to_tensor(data)[0, 0] * 255).round().to(torch.uint8).numpy()
        assert any(np.array_equal(served, img) for img in everything)
    assert d.report["image_sizes"] == {"28x28": 24, "200x300": 1, "30x40": 1, "50x50": 1, "8x8": 1}
    assert d.report["image_modes"] == {"L": 26, "RGB": 1, "RGBA": 1}


def test_formats_to_pixels_leaves_a_28x28_grayscale_image_unchanged() -> None:
    """Why IDX and 28x28 .npz arrays are taken whole: to_pixels would return them as they are."""
    arr = np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8)
    assert np.array_equal(to_pixels(Image.fromarray(arr, mode="L")), arr)


def test_formats_unknown_content_is_unsupported(tmp_path: Path) -> None:
    err = rejected(write(tmp_path / "u.csv", b"file,label\na.png,cat\n"))
    assert err.status == 415
    assert "is not a zip or an .npz" in err.problems[0]
    tar = io.BytesIO()
    import tarfile
    with tarfile.open(fileobj=tar, mode="w") as tf:
        tf.addfile(tarfile.TarInfo("x"), io.BytesIO(b""))
    err = rejected(write(tmp_path / "u.tar", tar.getvalue()))
    assert err.status == 415 and "is a tar archive" in err.problems[0]


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode="RGB").save(buf, format="JPEG")
    return buf.getvalue()


def _bmp(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8), mode="L").save(buf, format="BMP")
    return buf.getvalue()


def test_formats_empty_zip_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    zipfile.ZipFile(buf, "w").close()
    err = rejected(write(tmp_path / "u.zip", buf.getvalue()))
    assert "only 0 class" in err.problems[0]


def test_formats_files_beside_train_and_test_are_refused_and_val_is_unused(tmp_path: Path) -> None:
    members = folder_zip({"cat": 10, "dog": 10}, prefix="train/")
    members.update(folder_zip({"cat": 2, "dog": 2}, prefix="test/", start=100))
    members.update(folder_zip({"cat": 2}, prefix="val/", start=200))
    path = write(tmp_path / "u.zip", zip_bytes(members))
    d = ingest(path, "u.zip")
    assert d.report["counts"]["test"] == {"cat": 2, "dog": 2}
    assert d.report["warnings"] == ["folders val are not used: the service trains on train/ and evaluates on test/"]
    members["README.md"] = b"# my data"
    members["cover.png"] = png(pattern(0, 300))
    err = rejected(write(tmp_path / "u.zip", zip_bytes(members)))
    assert err.problems == [
        "files that are not images (by their suffix; accepted: .png .jpg .jpeg .gif .bmp .tif .tiff .webp .pgm "
        ".ppm .pbm .pnm): 'README.md'",
        "files outside class folders (each image must be in train/<class>/ or test/<class>/): 'cover.png'",
    ]


def test_formats_idx_images_of_another_size_go_through_to_pixels(tmp_path: Path) -> None:
    arrays = small_arrays()
    rng = np.random.default_rng(3)
    arrays["test_images"] = rng.integers(0, 256, (12, 32, 32), dtype=np.uint8)
    d = ingest(write(tmp_path / "u.zip", idx_zip(arrays, tmp_path)), "u.zip")
    expected = np.stack([to_pixels(Image.fromarray(a, mode="L")) for a in arrays["test_images"]])
    assert np.array_equal(d.test_images, expected)
    assert d.report["image_sizes"] == {"28x28": 36, "32x32": 12}


def test_formats_npz_with_a_forged_shape_is_refused_before_allocating(tmp_path: Path) -> None:
    arrays = small_arrays()
    data = npz_bytes(**arrays)
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (36, 28, 28), }"
    forged_header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000,), }"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    npy = members["train_images.npy"]
    assert header + b"    " in npy  # the header's padding has room for the longer shape
    members["train_images.npy"] = npy.replace(header + b"    ", forged_header)
    err = rejected(write(tmp_path / "u.npz", zip_bytes(members, zipfile.ZIP_STORED)))
    assert err.problems == ["train_images declares shape (1000000000000,) of uint8 (1000000000000 bytes) but holds "
                            "28224 bytes"]


@pytest.mark.parametrize(("train", "held_out", "ignored"), [
    ("train", "val", None), ("training", "testing", None), ("train", "test", "dev"), ("Train", "Validation", None),
])
def test_formats_split_folders_by_their_usual_names_are_splits_not_classes(
        tmp_path: Path, train: str, held_out: str, ignored: str | None) -> None:
    members = folder_zip({"cat": 10, "dog": 10}, prefix=f"{train}/")
    members.update(folder_zip({"cat": 2, "dog": 3}, prefix=f"{held_out}/", start=100))
    if ignored:
        members.update(folder_zip({"cat": 2}, prefix=f"{ignored}/", start=200))
    d = ingest(write(tmp_path / "u.zip", zip_bytes(members)), "u.zip")
    assert d.classes == ("cat", "dog") and d.report["format"] == "zip-split"
    assert d.report["counts"] == {"train": {"cat": 10, "dog": 10}, "test": {"cat": 2, "dog": 3}}
    if held_out.lower() not in ("test", "testing"):
        assert f"{held_out}/ is the test split (the zip has no test/)" in " ".join(d.report["warnings"])


def test_formats_class_order_is_the_same_in_every_process_and_names_are_nfc(tmp_path: Path) -> None:
    import subprocess
    import sys
    import unicodedata

    nfd = unicodedata.normalize("NFD", "café")
    members = folder_zip({"cat": 13, "Cat": 13, "dog": 13, nfd: 13})
    path = write(tmp_path / "u.zip", zip_bytes(members))
    script = (f"from pathlib import Path; from bnlenet.datasets import ingest; "
              f"d = ingest(Path({str(path)!r}), 'u.zip'); print(repr(d.classes))")
    seen = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)}).stdout.strip()
            for seed in range(6)}
    assert len(seen) == 1, seen  # natural order, ties broken the same way whatever the hash seed
    classes = eval(seen.pop())  # noqa: S307  # our own repr of a tuple of str
    assert unicodedata.normalize("NFC", "café") in classes and nfd not in classes


def test_formats_more_classes_given_than_a_lenet_tells_apart_is_refused(tmp_path: Path) -> None:
    arrays = small_arrays(per_class=1, classes=3, test_per_class=1)
    path = write(tmp_path / "u.npz", npz_bytes(**arrays))
    err = rejected(path, classes=[f"c{i}" for i in range(1001)])
    assert any("1001 classes" in p and "at most 1000" in p for p in err.problems), err.problems


def test_formats_npz_images_without_pixels_are_refused(tmp_path: Path) -> None:
    arrays = small_arrays()
    arrays["train_images"] = np.zeros((len(arrays["train_labels"]), 0, 0), np.uint8)
    err = rejected(write(tmp_path / "u.npz", npz_bytes(**arrays)))
    assert any("train_images" in p and "no pixels" in p for p in err.problems), err.problems


def test_formats_an_image_in_a_mode_that_cannot_be_made_gray_is_skipped_not_a_crash(tmp_path: Path) -> None:
    lab = io.BytesIO()
    Image.new("LAB", (28, 28)).save(lab, format="TIFF")
    members = folder_zip({"cat": 13, "dog": 13})
    members["cat/lab.tif"] = lab.getvalue()
    d = ingest(write(tmp_path / "u.zip", zip_bytes(members)), "u.zip")
    assert any(s["name"] == "cat/lab.tif" for s in d.report["skipped"]), d.report["skipped"]
    with pytest.raises(ImageError):
        image_to_tensor(lab.getvalue())  # /predict's conversion: an ImageError (a 4xx), not a ValueError (a 500)


def test_formats_every_damaged_member_is_listed_not_only_the_first(tmp_path: Path) -> None:
    members = folder_zip({"cat": 13, "dog": 13})
    members["cat/big.png"] = png(np.zeros((4000, 4000), np.uint8))  # over the pixel budget
    data = bytearray(zip_bytes(members, compression=zipfile.ZIP_STORED))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        for name in ("cat/00000.png", "dog/00003.png"):  # a byte of each one's stored data flipped
            info = zf.getinfo(name)
            start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
            data[start + 40] ^= 0xFF
    err = rejected(write(tmp_path / "u.zip", bytes(data)), limits=IngestLimits(max_image_pixels=1_000_000))
    listed = " ".join(err.problems)
    assert "'cat/00000.png' is damaged" in listed and "'dog/00003.png' is damaged" in listed, err.problems
    assert "cat/big.png" in listed, err.problems  # found too, in the same pass
