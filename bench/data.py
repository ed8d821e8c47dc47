"""The benchmarks' Fashion-MNIST: where the ``DATA_DIR`` setting points, else the usual places.

``models/data.py`` reads no environment; the benchmarks, like the worker and the command line,
hand it the settings' directory (``scripts/gpu_check.sh`` points ``DATA_DIR`` at its carried copy,
and ``bench.process_speed`` at a subset for its child processes).
"""

from __future__ import annotations

from bnlenet.settings import Settings
from models.data import FashionMNIST, load_fashion_mnist

__all__ = ["fashion_mnist"]


def fashion_mnist(*, download: bool | None = None) -> FashionMNIST:
    """Load it from ``DATA_DIR`` or the usual places; downloads as ``DATA_DOWNLOAD`` says unless ``download`` is given."""
    settings = Settings()
    return load_fashion_mnist(settings.DATA_DIR, download=settings.DATA_DOWNLOAD if download is None else download)
