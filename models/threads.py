"""How many threads a training run on the CPU uses inside each operation: the cores it is given.

The count, unless the caller names one (``TRAINING_THREADS``, ``bnlenet train --threads``):

* at most the cores the process may run on: its CPU affinity (``taskset``, ``docker
  --cpuset-cpus``), capped by its cgroup's CPU quota (``docker --cpus``, a Kubernetes limit:
  ``cpu.max``), never ``os.cpu_count()``, which counts the host's; at least one;
* step by step, that many or one, whichever the steps' measured times say is faster now
  (``models.thread_tuner``): a busy process on the same cores sends the run to one thread.

LeNet's operations on a batch of 256 last 0.05-2 ms each, and every split one ends at an
OpenMP barrier. GNU OpenMP (PyTorch's on Linux) spins there 300,000 rounds before it sleeps.
Spinning is what makes two threads pay on free cores (1.6-1.75x one thread on this project's
2-core machine); sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) made two threads no faster than
one. Beside a busy process, spinning starves the thread that shares its core: 0.06x of one
thread at GNU's count, 0.45x at 10,000 rounds (bench/RESULTS.md). So the entry points (the
CLI, the worker) call ``short_openmp_waits`` before torch loads: 10,000 rounds, as fast as
300,000 on free cores and the least harm for the steps the tuner spends finding out that the
cores are busy.

Results depend in the last bits on how operations are split between threads: a seed gives the
same model for the same thread count, or the same thread schedule, which the checkpoint records
(``engine.threads``, ``engine.thread_schedule``). ``OMP_NUM_THREADS`` set in the environment is
respected as an explicit choice (a fixed count).

This module imports torch only inside ``training_threads``, so that an entry point can call
``short_openmp_waits`` before anything loads torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from models.thread_tuner import ThreadTuner

__all__ = [
    "OPENMP_WAITS",
    "cgroup_cpu_quota",
    "cpu_quota",
    "short_openmp_waits",
    "training_threads",
    "usable_cores",
]

# Read once, when the OpenMP runtime loads (with torch): a thread at a barrier spins 10,000
# rounds (GNU OpenMP: GOMP_SPINCOUNT; Intel's runtime, if a build uses it: KMP_BLOCKTIME, ms).
OPENMP_WAITS: dict[str, str] = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}


def short_openmp_waits(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set ``OPENMP_WAITS`` in the environment where no wait policy is set already; what it set.

    Call it before torch is imported: the runtime reads these once, as it loads. Child
    processes inherit them either way. An ``OMP_WAIT_POLICY`` of the user's leaves all alone.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env:
        return {}
    added = {k: v for k, v in OPENMP_WAITS.items() if k not in env}
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
def training_threads(device: torch.device, threads: int | None = None, *, recorded: Iterable[Iterable[int]] = (),
                     replay: Iterable[Iterable[int]] | None = None) -> Iterator[ThreadTuner]:
    """Within the block, the thread count of each CPU step comes from the yielded ``ThreadTuner``; restored after.

    ``threads`` (None or 0: automatic): a fixed count, or every usable core adapting between
    it and one thread as the steps' times say (``models.thread_tuner``). ``recorded``: the
    schedule so far of a resumed run; ``replay``: a schedule to follow (a run reproduced bit for
    bit). On other devices, and under an explicit ``OMP_NUM_THREADS``, torch's own count, untouched.
    """
    import torch

    from models.thread_tuner import ThreadTuner

    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        count = torch.get_num_threads()
        yield ThreadTuner(count, lambda _count: None, recorded=recorded, replay=[(0, count)])
        return
    most = threads or usable_cores()
    fixed = [(0, most)] if threads else None
    before = torch.get_num_threads()
    torch.set_num_threads(most)
    try:
        yield ThreadTuner(most, torch.set_num_threads, recorded=recorded, replay=replay if replay is not None else fixed)
    finally:
        torch.set_num_threads(before)
