"""The bounds an upload is checked against before and while it is read (``IngestLimits``)."""

from __future__ import annotations

from dataclasses import dataclass

from models.preprocess import MAX_DECODED_PIXELS

__all__ = ["IngestLimits"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class IngestLimits:
    """What one upload may hold. The defaults take Fashion-MNIST in every format with room to spare."""

    max_upload_bytes: int = 256 * MiB  # the file as sent; a 70,000-image PNG zip is about 45 MB
    max_uncompressed_bytes: int = 1024 * MiB  # all members decompressed together; Fashion-MNIST's IDX is 55 MB
    max_ratio: float = 200.0  # uncompressed / compressed per member; IDX of sparse images is ~10, a bomb ~1000
    ratio_floor_bytes: int = 1 * MiB  # the ratio is only held against members that decompress to more than this
    max_files: int = 100_000  # members of a zip (directories included); MNIST-family sets have 70,000 images
    max_image_pixels: int = MAX_DECODED_PIXELS  # per image, from its header, as /predict decodes
    max_classes: int = 1000
    min_per_class: int = 10  # training images each class needs, below which training is meaningless
    max_listed: int = 10  # examples named per problem or report entry ("and N more")
