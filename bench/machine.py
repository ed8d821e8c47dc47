"""Where a benchmark ran: CPU model, core count, torch version, accelerator."""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["cpu_model", "describe", "gpu_name"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The first CUDA device's name, or None without one."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def describe() -> str:
    """One line: CPU, cores, torch (and CUDA) versions, accelerator."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = gpu_name()
    accel = f"GPU {gpu} (CUDA {torch.version.cuda})" if gpu else "no GPU"
    return (
        f"CPU {cpu_model()}, {cores} cores, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}; {accel}; Python {platform.python_version()}"
    )
