"""How the training process uses the C heap (glibc): keep large buffers while training, give them back after.

A training step on the CPU allocates and frees many activation-sized buffers (a few MB each).
glibc serves those with ``mmap`` and returns them with ``munmap`` on every free, so each
step pays fresh page faults for every temporary; that alone made the from-scratch BN's
reductions ~7x slower than their arithmetic. Raising the mmap threshold keeps such buffers in
the heap for reuse. After a job, ``release_memory`` hands the heap's free pages back so an
idle worker returns to its idle size. Both do nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any

__all__ = ["keep_large_buffers", "release_memory"]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_LARGE_BUFFER_BYTES = 256 << 20  # buffers below this come from the heap, not fresh mmaps


def _load_glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018  # glibc only: musl and macOS have none
        libc.mallopt  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


_glibc = _load_glibc()
_tuned = False


def keep_large_buffers() -> None:
    """Let the heap keep freed activation-sized buffers for reuse (once per process)."""
    global _tuned
    if _glibc is None or _tuned:
        return
    _glibc.mallopt(_M_MMAP_THRESHOLD, _LARGE_BUFFER_BYTES)
    _glibc.mallopt(_M_TRIM_THRESHOLD, 2 * _LARGE_BUFFER_BYTES)  # no trimming at every free either
    _tuned = True


def release_memory() -> None:
    """Collect garbage and hand the heap's free pages back to the system (a finished job's memory)."""
    gc.collect()
    if _glibc is not None:
        _glibc.malloc_trim(0)
