"""What a sweep's trials add up to: per setting, the served models' accuracy across seeds, and the best trial.

Pure functions over the trials as ``SweepOut`` lists them. A setting's statistics count its
trials that ran to the end (succeeded, not stopped early): a stopped trial's model is the
model after fewer epochs, which would pull a setting's mean down for a reason that is not the
setting. The standard deviation is the sample one (n - 1), 0 for a single trial.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["best_trial", "settings_summary"]


def _counted(trial: dict[str, Any]) -> bool:
    return trial["status"] == "succeeded" and trial["final_test_acc"] is not None and not trial["stopped_early"]


def settings_summary(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per setting, in the order settings first appear: trials counted, mean, std, min, max (None: none)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for trial in trials:
        groups.setdefault(trial["setting"], []).append(trial)
    out = []
    for setting, members in groups.items():
        accs = [t["final_test_acc"] for t in members if _counted(t)]
        params = {k: v for k, v in members[0]["params"].items() if k != "seed"}
        out.append({
            "setting": setting, "params": params, "trials": len(accs),
            "mean": statistics.fmean(accs) if accs else None,
            "std": (statistics.stdev(accs) if len(accs) > 1 else 0.0) if accs else None,
            "min": min(accs) if accs else None, "max": max(accs) if accs else None,
        })
    return out


def best_trial(trials: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The succeeded trial whose served model scores highest (the first on a tie); None before any succeeded."""
    done = [t for t in trials if t["status"] == "succeeded" and t["final_test_acc"] is not None]
    if not done:
        return None
    best = max(done, key=lambda t: t["final_test_acc"])
    return {"job_id": best["job_id"], "params": best["params"], "final_test_acc": best["final_test_acc"],
            "model_id": best["model_id"]}
