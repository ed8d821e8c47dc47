"""Turn user images and pixel arrays into the network's input, the way the training data looks.

Fashion-MNIST images are 28x28 grayscale, scaled to [0, 1]. Any image PIL can decode is
converted to grayscale (alpha composited onto black, the data set's background) and resized
to 28x28; pixel arrays must already be 28x28 values in [0, 1].

The network sees 28x28 pixels, so decoding has a budget (``MAX_DECODED_PIXELS``, a 1024x1024
image): a file that declares more is decoded at a reduced scale where the format allows it
(JPEG decodes at 1/2, 1/4 or 1/8 scale for the price of the smaller image) and refused
otherwise, before any pixel is decoded. A 75 KB PNG can declare 4096x4096 RGBA pixels that take
a second to decode; here it costs reading its header.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from models.lenet import IMAGE_SIZE

__all__ = [
    "MAX_DECODED_PIXELS",
    "PREPROCESSING",
    "ImageError",
    "ImageTooLarge",
    "decode_image",
    "image_to_pixels",
    "image_to_tensor",
    "load_image",
    "pixels_to_tensor",
    "to_model_input",
    "to_pixels",
]

# What ``to_model_input`` and ``load_image`` do, in words: stored with every checkpoint and export.
PREPROCESSING = {
    "size": [IMAGE_SIZE, IMAGE_SIZE],
    "color": "grayscale (PIL mode L)",
    "scale": "pixel / 255, as torchvision ToTensor",
    "layout": f"(N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}) float32",
}
MAX_DECODED_PIXELS = 1024 * 1024  # the most pixels decoded for one image (28x28 is what the network sees)


class ImageError(ValueError):
    """Input that is not a usable image or pixel array."""


class ImageTooLarge(ImageError):
    """An image that declares more pixels than are decoded (refused from its header, before decoding)."""


def to_model_input(images: Tensor) -> Tensor:
    """uint8 images ``(N, 28, 28)`` to the network's float input ``(N, 1, 28, 28)`` in [0, 1].

    The one pixel scaling: training batches, evaluation and served images all pass through it,
    so the served input is the training input bit for bit. The same scaling as torchvision's
    ``ToTensor``, which the chapter uses.
    """
    return images.unsqueeze(1).to(torch.float32).div_(255.0)  # (N, 1, 28, 28)


def load_image(data: bytes, *, max_pixels: int = MAX_DECODED_PIXELS) -> Image.Image:
    """Decode image bytes to a 28x28 grayscale PIL image within the pixel budget, refusing broken files."""
    return _to_grayscale_28(decode_image(data, max_pixels=max_pixels))


def decode_image(data: bytes, *, max_pixels: int = MAX_DECODED_PIXELS) -> Image.Image:
    """Decode image bytes as they are (size and mode unchanged) within the pixel budget, refusing broken files.

    The budget is checked on the header, before any pixel is decoded (``ImageTooLarge``).
    """
    if not data:
        raise ImageError("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                # JPEG can decode at 1/2, 1/4 or 1/8 scale; other formats decode whole or not at all.
                img.draft(img.mode, _within_budget(width, height, max_pixels))
                if img.size[0] * img.size[1] > max_pixels:
                    raise ImageTooLarge(
                        f"the image declares {width}x{height} pixels; at most {max_pixels} pixels (for example "
                        f"{math.isqrt(max_pixels)}x{math.isqrt(max_pixels)}) are decoded, and the model sees "
                        f"{IMAGE_SIZE}x{IMAGE_SIZE}: scale it down before sending (JPEG is reduced while decoding)"
                    )
            img.load()
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError("not an image in a format this service reads (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"the image is too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"the image is truncated or corrupt: {exc}") from exc
    return img


def _within_budget(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The size JPEG's reduced decoding (1/2, 1/4, 1/8) should give: the first within the budget.

    ``draft`` picks the largest scale that is at least the size asked for, so asking for a
    reduced size exactly gets that reduction.
    """
    for reduction in (2, 4, 8):
        w, h = -(-width // reduction), -(-height // reduction)
        if w * h <= max_pixels:
            return w, h
    return -(-width // 8), -(-height // 8)


def _to_grayscale_28(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16- and 32-bit grayscale: scale the full range down to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if img.mode != "L":
        try:
            img = img.convert("L")
        except ValueError as exc:  # a mode Pillow cannot make gray (LAB, say): the image's fault, not ours
            raise ImageError(f"an image in mode {img.mode} cannot be converted to grayscale: {exc}") from None
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return img


def to_pixels(img: Image.Image) -> np.ndarray:
    """A decoded image (any size or mode) to the 28x28 uint8 grayscale pixels the network sees, before scaling.

    The one conversion of an image: /predict's uploads, the command line's files and every image
    of an uploaded data set (``bnlenet.datasets``) pass through it.
    """
    return np.array(_to_grayscale_28(img), dtype=np.uint8)  # (28, 28), a copy that owns its memory


def image_to_pixels(data: bytes, *, max_pixels: int = MAX_DECODED_PIXELS) -> np.ndarray:
    """Image bytes to the network's 28x28 uint8 pixels (``decode_image`` then ``to_pixels``)."""
    return to_pixels(decode_image(data, max_pixels=max_pixels))


def image_to_tensor(data: bytes, *, max_pixels: int = MAX_DECODED_PIXELS) -> Tensor:
    """Image bytes to the network input ``(1, 1, 28, 28)`` float32 in [0, 1]."""
    arr = image_to_pixels(data, max_pixels=max_pixels)  # (28, 28)
    return to_model_input(torch.from_numpy(arr).unsqueeze(0))  # (1, 1, 28, 28)


def pixels_to_tensor(pixels: Sequence[Sequence[float]] | np.ndarray) -> Tensor:
    """A 28x28 array of numbers in [0, 1] to the network input ``(1, 1, 28, 28)``."""
    try:
        arr = np.asarray(pixels, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise ImageError(f"pixels must be a 28x28 array of numbers: {exc}") from exc
    if arr.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ImageError(f"pixels must be a 28x28 array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ImageError("pixels must be finite numbers (no NaN or infinity)")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ImageError(
            f"pixels must be in [0, 1] (pixel / 255, as the training data); got [{arr.min():g}, {arr.max():g}]"
        )
    return torch.from_numpy(arr).reshape(1, 1, IMAGE_SIZE, IMAGE_SIZE)
