"""Where a run computes: choosing the device, and the process-wide CUDA switches while training there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["DEVICE_PATTERN", "cuda_settings", "resolve_device", "synchronize"]

DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]{1,2})?"  # what a run's ``device`` may name


def resolve_device(device: str | torch.device | None) -> torch.device:
    """CUDA when present for None or "auto"; otherwise the named device, checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
    return dev


@contextlib.contextmanager
def cuda_settings(device: torch.device, *, tf32: bool) -> Iterator[None]:
    """While training on CUDA: cuDNN times its algorithms once for the fixed shapes, and fp32
    matmuls use TF32 tensor cores when ``tf32`` (PyTorch's default already does so for
    convolutions). Both are process-wide switches, restored on exit; nothing changes on the CPU.
    """
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = previous


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a clock reads work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
