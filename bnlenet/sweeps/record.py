"""A sweep's record and its status, derived from its trials' statuses (never stored on its own)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal, TypedDict, get_args

from bnlenet.jobs.record import TERMINAL, JobRecord, JobStatus
from bnlenet.sweeps.summary import best_trial, settings_summary

__all__ = ["SWEEP_STATUSES", "SweepRecord", "SweepStatus", "TrialRef", "load_sweep", "new_sweep", "sweep_finished_at",
           "sweep_status", "sweep_view", "trial_view"]

SweepStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
SWEEP_STATUSES: tuple[SweepStatus, ...] = get_args(SweepStatus)


class TrialRef(TypedDict):
    """One trial as the sweep keeps it: its job and the values the sweep gave it."""

    job_id: str
    params: dict[str, Any]  # the swept values only; the job record holds all its parameters
    setting: str  # the swept values less the seed (``bnlenet.sweeps.spec.setting_of``)


class SweepRecord(TypedDict):
    """A sweep as stored (JSON): the request as checked, and its trials in order."""

    sweep_id: str
    name: str | None
    created_at: float
    method: str
    parameters: dict[str, Any]
    base: dict[str, Any]
    max_trials: int | None
    seed: int
    objective: str
    early_stopping: dict[str, Any] | None
    pack: bool
    trials: list[TrialRef]
    cancel_requested: bool


def new_sweep(sweep_id: str, request: dict[str, Any], trials: list[TrialRef], now: float) -> SweepRecord:
    """A fresh record for a checked request (``SweepSpec.as_dict()``)."""
    return {"sweep_id": sweep_id, "name": request["name"], "created_at": now, "method": request["method"],
            "parameters": request["parameters"], "base": request["base"], "max_trials": request["max_trials"],
            "seed": request["seed"], "objective": request["objective"], "early_stopping": request["early_stopping"],
            "pack": request["pack"], "trials": trials, "cancel_requested": False}


def load_sweep(raw: Any) -> SweepRecord:
    record = json.loads(raw)
    if not isinstance(record, dict) or not isinstance(record.get("trials"), list):
        raise ValueError("not a sweep record")
    return record  # type: ignore[return-value]


def sweep_status(trials: Sequence[JobStatus | None], cancel_requested: bool) -> SweepStatus:
    """The sweep's status from its trials' (None: a trial's job is gone).

    Queued while every trial waits; running while any has started and any has not ended;
    once all ended: cancelled if the sweep was cancelled (or any trial was), else failed if any
    trial failed, else succeeded. A trial whose job was deleted counts as cancelled.
    """
    statuses = ["cancelled" if s is None else s for s in trials]
    if statuses and all(s == "queued" for s in statuses):
        return "cancelled" if cancel_requested else "queued"
    if not all(s in TERMINAL for s in statuses):
        return "running"
    if cancel_requested or "cancelled" in statuses:
        return "cancelled"
    return "failed" if "failed" in statuses else "succeeded"


def sweep_finished_at(finished: Sequence[float | None], status: SweepStatus) -> float | None:
    """When the last trial ended, once the sweep has."""
    if status not in TERMINAL:
        return None
    times = [t for t in finished if t is not None]
    return max(times) if times else None


def trial_view(ref: TrialRef, job: JobRecord | None) -> dict[str, Any]:
    """One trial as ``GET /sweeps/{id}`` lists it (its job gone: cancelled, nothing known)."""
    if job is None:
        return {**ref, "status": "cancelled", "epochs_run": 0, "final_test_acc": None, "stopped_early": False,
                "model_id": None}
    return {**ref, "status": job["status"], "epochs_run": len(job["history"]), "final_test_acc": job["final_test_acc"],
            "stopped_early": job["stopped_early"], "model_id": job["model_id"]}


def sweep_view(record: SweepRecord, jobs: Sequence[JobRecord | None]) -> dict[str, Any]:
    """The sweep as ``GET /sweeps/{id}`` answers: the record, its trials, its status, the best trial, per setting."""
    trials = [trial_view(ref, job) for ref, job in zip(record["trials"], jobs, strict=True)]
    status = sweep_status([None if j is None else j["status"] for j in jobs], record["cancel_requested"])
    return {
        "id": record["sweep_id"], "name": record["name"], "status": status, "created_at": record["created_at"],
        "finished_at": sweep_finished_at([None if j is None else j["finished_at"] for j in jobs], status),
        "method": record["method"], "parameters": record["parameters"], "base": record["base"],
        "max_trials": record["max_trials"], "seed": record["seed"], "objective": record["objective"],
        "early_stopping": record["early_stopping"], "pack": record["pack"],
        "cancel_requested": record["cancel_requested"],
        "trials": trials, "best": best_trial(trials), "settings": settings_summary(trials),
    }
