from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from models.preprocess import (
    ImageError,
    decode_image,
    image_to_pixels,
    image_to_tensor,
    load_image,
    pixels_to_tensor,
    to_model_input,
    to_pixels,
)


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _digit() -> np.ndarray:
    arr = np.zeros((28, 28), dtype=np.uint8)
    arr[5:20, 10:18] = 200
    return arr


def test_preprocess_png_28x28_is_exactly_the_training_scaling() -> None:
    arr = _digit()
    x = image_to_tensor(_encode(Image.fromarray(arr)))
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(arr).float().div(255).reshape(1, 1, 28, 28))


def test_preprocess_served_image_is_the_training_input_bit_for_bit() -> None:
    # Every uint8 value, through the served path (a PNG upload) and the training path (a batch).
    images = torch.arange(28 * 28).remainder(256).to(torch.uint8).reshape(1, 28, 28)  # (1, 28, 28)
    served = image_to_tensor(_encode(Image.fromarray(images[0].numpy())))
    assert served.dtype == torch.float32 and served.shape == (1, 1, 28, 28)
    assert torch.equal(served.view(torch.int32), to_model_input(images).view(torch.int32))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_preprocess_accepts_common_modes(mode: str) -> None:
    base = Image.fromarray(_digit())
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(_digit().astype(np.uint16) * 257)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    x = image_to_tensor(_encode(img, fmt))
    assert x.shape == (1, 1, 28, 28)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert float(x[0, 0, 10, 12]) > 0.5 > float(x[0, 0, 1, 1])  # the bright object survives


def test_preprocess_resizes_large_images() -> None:
    img = Image.fromarray(_digit()).resize((280, 280))
    assert image_to_tensor(_encode(img, "JPEG")).shape == (1, 1, 28, 28)


def test_preprocess_transparent_background_becomes_black() -> None:
    img = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    assert float(image_to_tensor(_encode(img)).max()) == 0.0


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10])
def test_preprocess_not_an_image_is_an_error(data: bytes) -> None:
    with pytest.raises(ImageError):
        image_to_tensor(data)


def test_preprocess_truncated_image_is_an_error() -> None:
    data = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)))
    with pytest.raises(ImageError):
        image_to_tensor(data[: len(data) // 2])


@pytest.mark.parametrize("side", [5000, 20000])
def test_preprocess_decompression_bomb_is_refused_before_decoding(side: int) -> None:
    data = _encode(Image.new("1", (side, side)))  # a small file declaring millions of pixels
    assert len(data) < 100_000
    with pytest.raises(ImageError, match="pixels"):
        image_to_tensor(data)


def test_preprocess_pixels() -> None:
    arr = np.random.default_rng(0).random((28, 28))
    x = pixels_to_tensor(arr.tolist())
    assert x.shape == (1, 1, 28, 28)
    torch.testing.assert_close(x.reshape(28, 28), torch.from_numpy(arr).float())


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        ([[0.0] * 28] * 27, "28x28"),
        ([[0.0] * 27] * 28, "28x28"),
        ([[float("nan")] * 28] * 28, "finite"),
        ([[2.0] * 28] * 28, r"\[0, 1\]"),
        ([[0.0] * 28] * 27 + [[0.0] * 5], "28x28"),
        ("abc", "28x28"),
    ],
)
def test_preprocess_bad_pixels_are_errors(pixels: object, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        pixels_to_tensor(pixels)  # type: ignore[arg-type]


def _noise(width: int, height: int, mode: str) -> Image.Image:
    rng = np.random.default_rng(0)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 255, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode=mode)


def test_preprocess_cheap_file_declaring_a_big_image_is_refused_before_decoding() -> None:
    # The reported attack: a small PNG of 4096x4096 RGBA pixels that takes a second to decode.
    data = _encode(Image.new("RGBA", (4096, 4096), (0, 0, 0, 0)))
    assert len(data) < 200_000
    started = time.perf_counter()
    with pytest.raises(ImageError, match="4096x4096 pixels.*1024x1024"):
        image_to_tensor(data)
    assert time.perf_counter() - started < 0.1  # the header only; decoding would take about a second


def test_preprocess_big_jpeg_decodes_at_a_reduced_scale() -> None:
    big = _noise(3000, 2000, "RGB")
    big.paste((255, 255, 255), (1000, 600, 2000, 1400))  # a bright object in the middle
    data = _encode(big, "JPEG")
    decoded = load_image(data)
    assert decoded.size == (28, 28)
    x = image_to_tensor(data)
    assert float(x[0, 0, 14, 14]) > 0.9  # the object survives the reduced decode


def test_preprocess_image_at_the_budget_is_accepted() -> None:
    assert image_to_tensor(_encode(_noise(1024, 1024, "L"))).shape == (1, 1, 28, 28)
    with pytest.raises(ImageError, match="at most 1048576 pixels"):
        image_to_tensor(_encode(_noise(1025, 1024, "L")))


def test_preprocess_image_to_tensor_is_decode_image_then_to_pixels_then_scaling() -> None:
    """One path: /predict's tensor is the dataset ingest's pixels, scaled."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 45, 4), dtype=np.uint8), "RGBA").save(buf, "PNG")
    data = buf.getvalue()
    pixels = image_to_pixels(data)
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, to_pixels(decode_image(data)))
    assert decode_image(data).size == (45, 37) and decode_image(data).mode == "RGBA"
    assert torch.equal(image_to_tensor(data), to_model_input(torch.from_numpy(pixels).unsqueeze(0)))
