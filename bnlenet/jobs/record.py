"""A training job's record: its type and statuses, a fresh one, reading a stored one, and the stale rule."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Literal, TypedDict, get_args

from typing_extensions import TypedDict as ModelTypedDict  # one pydantic can read on Python 3.11 (app.schemas)

from bnlenet.jobs.errors import MalformedJob
from models.params import ParamField, params_of, stored_value_problem
from models.training import TrainConfig

__all__ = [
    "JOB_PARAMS", "STATUSES", "TERMINAL", "AttemptRecord", "JobRecord", "JobStatus", "is_stale", "load_record", "new_record", "owned",
    "params_problems",
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
TERMINAL: frozenset[JobStatus] = frozenset({"succeeded", "failed", "cancelled"})
# What a job takes: POST /train's parameters, declared once on TrainConfig (the API's request and
# response models are derived from the same declarations).
JOB_PARAMS: dict[str, ParamField] = {f.name: f for f in params_of(TrainConfig) if f.param.api}


class AttemptRecord(ModelTypedDict):
    """One run of a job (an attempt): where it started from and how far it got."""

    attempt: int  # the attempt number (the record's ``attempts`` when it ran)
    worker: str
    started_at: float
    resumed_from: int | None  # the epoch its training state resumed from (0: the first batch); None: not yet known
    saved_epoch: int | None  # the last epoch whose training state it saved; None: none


class JobRecord(TypedDict):
    """A training job as stored (JSON); times are Unix seconds."""

    job_id: str
    status: JobStatus
    params: dict[str, Any]  # the job's TrainConfig fields, as POST /train validated them
    progress: dict[str, Any] | None  # the latest models.training.Progress, as a dict
    history: list[dict[str, Any]]  # one models.training.EpochMetrics per finished epoch, as dicts
    final_test_acc: float | None  # of the model as stored and served, once it succeeded
    created_at: float
    started_at: float | None
    first_step_at: float | None  # when the first training step of the current attempt finished
    finished_at: float | None
    heartbeat_at: float | None
    worker: str | None
    worker_pid: int | None
    device: str | None
    model_id: str | None
    error: str | None
    note: str | None  # why the job was requeued, if it was
    attempts: int  # the fencing token: each run of the job is a new attempt
    # Attempts in a row, up to the last that ended, that died without saving a new epoch: what
    # MAX_ATTEMPTS limits (``bnlenet.jobs.lifecycle.fruitless_attempts``).
    fruitless_attempts: int
    attempt_log: list[AttemptRecord]  # every attempt, oldest first
    task_id: str | None
    cancel_requested: bool
    sweep_id: str | None  # the sweep this job is a trial of (``bnlenet.sweeps``), if any
    # Succeeded, but ended by its sweep's early-stopping rule before its last epoch: its model is the
    # model after the epochs it ran (``history``), with the moving averages (no precise BN, no averaging).
    stopped_early: bool


def new_record(job_id: str, params: dict[str, Any], now: float, sweep_id: str | None = None) -> JobRecord:
    """A fresh queued record."""
    return {
        "job_id": job_id, "status": "queued", "params": params, "progress": None, "history": [],
        "final_test_acc": None, "created_at": now, "started_at": None, "first_step_at": None,
        "finished_at": None, "heartbeat_at": None, "worker": None, "worker_pid": None, "device": None,
        "model_id": None, "error": None, "note": None, "attempts": 0, "fruitless_attempts": 0, "attempt_log": [],
        "task_id": None,
        "cancel_requested": False, "sweep_id": sweep_id, "stopped_early": False,
    }


def is_stale(record: JobRecord, stale_after: float, now: float | None = None) -> bool:
    """The one rule: a running job whose worker sent no heartbeat for ``stale_after`` seconds lost it."""
    if record["status"] != "running":
        return False
    now = time.time() if now is None else now
    beat = record["heartbeat_at"]
    return beat is None or now - beat >= stale_after


def owned(record: JobRecord, worker: str, attempt: int | None) -> bool:
    """Whether ``worker`` (on ``attempt``, the fencing token, when given) still runs the job."""
    return (record["status"] == "running" and record["worker"] == worker
            and (attempt is None or record["attempts"] == attempt))


def load_record(raw: Any, job_id: str = "?") -> JobRecord:
    """A stored record, checked; records written before a field existed get its empty value.

    Raises ``MalformedJob`` for anything that is not a record this code wrote (bit rot, a
    bad restore, another program's key): callers report it for that job alone.
    """
    try:
        record = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise MalformedJob(job_id, f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise MalformedJob(job_id, f"a JSON {type(record).__name__}, not an object")
    problems = [f"{name} should be {kind}" for name, (check, kind) in _SHAPE.items() if not check(record.get(name))]
    if not problems:  # parameters the API could not answer with, nor a worker run
        problems = [f"params.{name} should be {kind}" for name, kind in params_problems(record["params"]).items()]
    if problems:
        raise MalformedJob(job_id, "; ".join(problems))
    record.setdefault("final_test_acc", None)
    record.setdefault("attempt_log", [])
    record.setdefault("sweep_id", None)
    record.setdefault("stopped_early", False)
    # A record from before progress was tracked: every earlier attempt counts as fruitless, as it did then.
    record.setdefault("fruitless_attempts", max(int(record["attempts"]) - 1, 0))
    return record  # type: ignore[return-value]


def params_problems(params: dict[str, Any]) -> dict[str, str]:
    """The job parameters whose stored value is not what the parameter takes, and what it should be.

    Unknown names are not a problem: the API leaves them out, and so does a worker.
    """
    problems = {name: stored_value_problem(JOB_PARAMS[name], value) for name, value in params.items()
                if name in JOB_PARAMS}
    return {name: kind for name, kind in problems.items() if kind is not None}


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The fields every reader relies on, and what they must hold.
_SHAPE: dict[str, tuple[Callable[[Any], bool], str]] = {
    "job_id": (lambda v: isinstance(v, str), "a string"),
    "status": (lambda v: v in STATUSES, f"one of {', '.join(STATUSES)}"),
    "params": (lambda v: isinstance(v, dict), "an object"),
    "attempts": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a whole number"),
    "created_at": (is_number, "a number"),
    "history": (lambda v: isinstance(v, list), "a list"),
}
