"""Fixtures of the models/ tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.data import FashionMNIST, load_fashion_mnist


@pytest.fixture(scope="module")
def data(synthetic_data_dir: Path) -> FashionMNIST:
    """The small synthetic Fashion-MNIST, loaded once per test module."""
    return load_fashion_mnist(synthetic_data_dir, download=False)
