"""How many threads a training run on the CPU uses inside each operation: the cores it is given.

The count, unless the caller names one (``TRAINING_THREADS``, ``bnlenet train --threads``):

* the cores the process may run on: its CPU affinity (``taskset``, ``docker --cpuset-cpus``),
  capped by its cgroup's CPU quota (``docker --cpus``, a Kubernetes limit: ``cpu.max``),
  never ``os.cpu_count()``, which counts the host's; at least one.

Not fewer when other processes keep some of those cores busy: the count would then change
from run to run, and with it a seed's model in the last bits (a resumed job, a test comparing
two runs); passive waits (below) already make a busy core cost little.

LeNet's operations on a batch of 256 last 0.05-2 ms each, and every split one ends at an
OpenMP barrier. GNU OpenMP (PyTorch's on Linux) spins there by default; when another process
holds the core of the thread a barrier waits for, the spinning threads burn the time slices
that thread needs, and a step on two threads took 2-40x longer than on one. So the process
entry points (the CLI, the worker) call ``quiet_openmp_waits`` before torch loads: a waiting
thread sleeps at once and gives its core away. On this project's loaded 2-core machine two
spinning threads ran at 0.09-0.34x of one thread, two passive ones at 3.7-5.2x of it beside a
busy loop on the same cores (``bench/cpu_threads.py``, bench/RESULTS.md).

Results depend in the last bits on how operations are split between threads: a seed gives the
same model for the same thread count, which the checkpoint records (``engine.threads``).
``OMP_NUM_THREADS`` set in the environment is respected as an explicit choice.

This module imports torch only inside ``training_threads``, so that an entry point can call
``quiet_openmp_waits`` before anything loads torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "QUIET_OPENMP_WAITS",
    "cgroup_cpu_quota",
    "cpu_quota",
    "quiet_openmp_waits",
    "training_threads",
    "usable_cores",
]

# Read once, when the OpenMP runtime loads (with torch): a thread at a barrier sleeps at once
# instead of spinning (GNU: OMP_WAIT_POLICY; Intel's runtime, if a build uses it: KMP_BLOCKTIME).
QUIET_OPENMP_WAITS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def quiet_openmp_waits(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set ``QUIET_OPENMP_WAITS`` in the environment where not set already; what it set.

    Call it before torch is imported: the runtime reads these once, as it loads. Child
    processes inherit them either way.
    """
    env = os.environ if environ is None else environ
    added = {k: v for k, v in QUIET_OPENMP_WAITS.items() if k not in env}
    env.update(added)
    return added


def cpu_quota(cpu_max: str) -> float | None:
    """Cores a cgroup v2 ``cpu.max`` line allows (``"150000 100000"``: 1.5); None when unlimited (``"max ..."``)."""
    parts = cpu_max.split()
    if not parts or parts[0] == "max":
        return None
    period = float(parts[1]) if len(parts) > 1 else 100000.0
    quota = float(parts[0])
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """This process's CPU quota in cores: the smallest ``cpu.max`` on its cgroup v2 path (v1's
    ``cpu.cfs_quota_us`` where there is no v2); None when unlimited or unknown."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    quotas: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2: check the cgroup and every ancestor
            d = root / path.lstrip("/")
            while True:
                try:
                    q = cpu_quota((d / "cpu.max").read_text())
                except OSError:
                    q = None
                if q is not None:
                    quotas.append(q)
                if d == root or root not in d.parents:
                    break
                d = d.parent
        elif "cpu" in controllers.split(","):  # v1
            for mount in (root / "cpu", root / "cpu,cpuacct"):
                d = mount / path.lstrip("/")
                try:
                    quota = int((d / "cpu.cfs_quota_us").read_text())
                    period = int((d / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                if quota > 0 and period > 0:
                    quotas.append(quota / period)
                break
    return min(quotas) if quotas else None


def usable_cores(affinity: set[int] | None = None, quota: float | None = None, *, read_quota: bool = True) -> int:
    """Cores this process may use: its affinity set, capped by its cgroup quota (rounded down, at least 1).

    ``affinity`` and ``quota`` default to this process's (``os.sched_getaffinity``, the cgroup's
    ``cpu.max``); pass them to compute for another. A quota of 1.5 cores gives 1: a second
    thread would spend every period's last third throttled, and a barrier waits for it.
    """
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if quota is None and read_quota:
        quota = cgroup_cpu_quota()
    cores = max(1, len(affinity))
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return cores


@contextmanager
def training_threads(device: torch.device, threads: int | None = None) -> Iterator[int]:
    """Within the block, CPU operations use ``threads`` threads (None or 0: chosen as the module says);
    restored after. Yields the count the run uses (on other devices, and under an explicit
    ``OMP_NUM_THREADS``, torch's own, untouched)."""
    import torch

    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        yield torch.get_num_threads()
        return
    if threads:
        count = threads
    else:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        count = usable_cores(cpus)
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)

