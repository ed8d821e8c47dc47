"""How many threads a training run on the CPU uses inside each operation: one, unless told otherwise.

LeNet's operations on a batch of 256 last 0.05-2 ms each. Split over OpenMP threads, every one
of them ends at a barrier, and GNU OpenMP (PyTorch's on Linux) spins while it waits. When other
processes share the cores (the API beside the worker, other jobs, the chapter pipeline's own
loader processes), the thread the barrier waits for is often descheduled, and a training step
that took 20 ms on one thread took 50-750 ms on two. One thread has no barrier. On this
project's shared 2-core machine (load average 6-12) the same ``bnlenet train`` run took 8-12 s
on one thread against 41-92 s on two (bench/RESULTS.md); a dedicated, quiet machine gives up
at most the second core's share.

The count is fixed rather than chosen by load: results depend (in the last bits) on how
operations are split between threads, and a seed must give the same model every time.
``OMP_NUM_THREADS`` set in the environment is respected as an explicit choice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["TRAINING_THREADS", "training_threads"]

TRAINING_THREADS = 1


@contextmanager
def training_threads(device: torch.device) -> Iterator[None]:
    """Within the block, CPU operations use ``TRAINING_THREADS`` threads (CPU devices only); restored after."""
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)
