"""Devices to run a test on: the CPU always, CUDA where there is a GPU (``pytest -m cuda`` picks those)."""

from __future__ import annotations

import pytest
import torch

__all__ = ["CUDA", "DEVICES", "needs_cuda"]

# Without a GPU these are skipped with the reason; scripts/gpu_check.sh runs them on one.
needs_cuda = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh runs it on one)"),
]
CUDA = pytest.param("cuda", marks=needs_cuda, id="cuda")
DEVICES = ["cpu", CUDA]
