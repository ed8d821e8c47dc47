"""Early stopping: whether a trial that is behind the others stops after its latest epoch.

Pure functions over the trials' per-epoch objective (each epoch's ``test_acc`` from the job
histories; higher is better): the worker calls ``should_stop`` after each epoch with this trial's
curve and the curves of the sweep's other trials so far.

- Median stopping (Golovin et al. 2017, Google Vizier): after epoch k >= ``min_epochs``, a trial
  stops when its best value so far is below the median, over the other trials that reached
  epoch k, of their running averages up to k.
- ASHA (asynchronous successive halving, Li et al. 2020): rungs at ``min_epochs * rf**i``
  epochs; at a rung, a trial stops unless its value there is at least the (1 - 1/rf) quantile
  of the values the other trials recorded at that rung (the top 1/rf go on). A trial that
  reaches a rung first goes on: there is nobody to compare with.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bnlenet.sweeps.spec import StoppingRule

__all__ = ["asha_stop", "median_stop", "rungs", "should_stop"]

Curve = Sequence[float]


def should_stop(rule: StoppingRule, trial: Curve, others: Sequence[Curve]) -> str | None:
    """Why the trial stops after its latest epoch (``len(trial)``), or None when it goes on."""
    if rule.type == "median":
        return median_stop(trial, others, min_epochs=rule.min_epochs)
    return asha_stop(trial, others, min_epochs=rule.min_epochs, reduction_factor=rule.reduction_factor)


def median_stop(trial: Curve, others: Sequence[Curve], *, min_epochs: int = 1) -> str | None:
    epoch = len(trial)
    if epoch < min_epochs:
        return None
    averages = [statistics.fmean(o[:epoch]) for o in others if len(o) >= epoch]
    if not averages:
        return None
    median = statistics.median(averages)
    best = max(trial)
    if best < median:
        return (f"median rule: best test_acc {best:.4f} by epoch {epoch} is below the median {median:.4f} of "
                f"{len(averages)} other trial(s)' running averages at that epoch")
    return None


def rungs(min_epochs: int, reduction_factor: int, epochs: int) -> list[int]:
    """The epochs at which ASHA compares trials, up to ``epochs``."""
    out, rung = [], min_epochs
    while rung <= epochs:
        out.append(rung)
        rung *= reduction_factor
    return out


def asha_stop(trial: Curve, others: Sequence[Curve], *, min_epochs: int = 1, reduction_factor: int = 3) -> str | None:
    epoch = len(trial)
    if epoch not in rungs(min_epochs, reduction_factor, epoch):
        return None
    recorded = [o[epoch - 1] for o in others if len(o) >= epoch]
    if not recorded:
        return None
    cutoff = _quantile(recorded, 1 - 1 / reduction_factor)
    value = trial[epoch - 1]
    if value < cutoff:
        return (f"ASHA: test_acc {value:.4f} at rung epoch {epoch} is below the cutoff {cutoff:.4f} that keeps the "
                f"top 1/{reduction_factor} of {len(recorded) + 1} trial(s)")
    return None


def _quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation (numpy's default)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
