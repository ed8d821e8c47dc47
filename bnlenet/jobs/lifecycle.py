"""A job's lifecycle, queued -> running -> succeeded | failed | cancelled, as plain functions on a record.

Each transition takes the record as read and returns the record to write, or None when nothing
changes; none of them touches Redis, reads the clock or has side effects (``now`` is passed in),
so ``JobStore`` can apply one inside a transaction (which may run it more than once) and tests
can call them on a dict. A worker's writes (``beat``, ``first_step``, ``resumed``, ``add_epoch``,
its ``finish``) apply only ``as_owner``: while that worker, on that attempt, still runs the job.

``MAX_ATTEMPTS`` stops a job that kills its worker every time. An attempt that saved a new epoch
of training state before dying has not done that: it moved the job on, and the next attempt
resumes from there. So the limit counts only *fruitless* attempts, in a row: each attempt that
ended without an outcome (killed, crashed, lost its lease) adds one, unless it saved an epoch
beyond the one it resumed from, which starts the count again from zero (``fruitless_attempts``).
A job that dies every time is still stopped after ``MAX_ATTEMPTS`` deaths; one that progresses
between deaths runs to its end, as each death costs at most the epochs since its last save.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnlenet.jobs.errors import JobFinished
from bnlenet.jobs.record import TERMINAL, AttemptRecord, JobRecord, JobStatus, is_stale, owned

__all__ = [
    "add_epoch", "as_owner", "beat", "claim", "finish", "first_step", "fruitless_attempts", "lost_message",
    "made_progress", "published", "reap", "request_cancel", "resumed",
]

Record = JobRecord


def claim(r: Record, *, worker: str, pid: int, task_id: str | None, max_attempts: int, stale_after: float,
          owner_gone: Callable[[Record], bool], now: float,
          published: dict[str, Any] | None = None) -> tuple[Record | None, str | None]:
    """Mark the job running for this delivery, unless it should not run: (new record, why not; None: run it).

    A delivery does not run a job that ended, was cancelled, or is running under another live
    delivery (fresh heartbeat and ``owner_gone`` false). Each run is a new attempt; once
    ``max_attempts`` attempts in a row died without progress (``fruitless_attempts``) the job
    fails, as its worker keeps dying. ``published``: the metadata of the job's checkpoint, if one
    exists; a running job whose worker died after publishing its attempt's model succeeded, as
    ``reap`` records it (a redelivery can come before the reaper).
    """
    if r["status"] in TERMINAL:
        return None, f"job already {r['status']}"
    mine = _this_attempts_model(r, published)
    if mine is not None and r["status"] == "running" and (is_stale(r, stale_after, now) or owner_gone(r)):
        return _succeeded_from(r, mine, now), "its model was published"
    if r["cancel_requested"]:
        return {**r, "status": "cancelled", "finished_at": now}, "cancelled before it started"
    if r["status"] == "running" and not is_stale(r, stale_after, now) and not owner_gone(r):
        return None, f"running under another live worker ({r['worker']})"
    fruitless = fruitless_attempts(r)
    if fruitless >= max_attempts:
        return {**r, "status": "failed", "finished_at": now, "fruitless_attempts": fruitless,
                "error": lost_message(fruitless)}, "attempts exhausted"
    attempts = int(r["attempts"]) + 1
    entry: AttemptRecord = {"attempt": attempts, "worker": worker, "started_at": now, "resumed_from": None,
                            "saved_epoch": None}
    return {
        **r, "status": "running", "attempts": attempts, "started_at": now, "first_step_at": None,
        "heartbeat_at": now, "worker": worker, "worker_pid": pid, "task_id": task_id or r["task_id"], "error": None,
        "progress": None, "history": [], "fruitless_attempts": fruitless,
        "attempt_log": [*r["attempt_log"], entry],
    }, None


def _current(r: Record) -> AttemptRecord | None:
    """The log entry of the record's latest attempt, if it has one."""
    log = r["attempt_log"]
    return log[-1] if log and log[-1]["attempt"] == r["attempts"] else None


def made_progress(r: Record) -> bool:
    """Whether the latest attempt saved a training state beyond the epoch it resumed from."""
    entry = _current(r)
    return entry is not None and entry["saved_epoch"] is not None and entry["saved_epoch"] > (entry["resumed_from"] or 0)


def fruitless_attempts(r: Record) -> int:
    """The fruitless attempts in a row once the latest attempt is over without an outcome (0 before the first).

    Called when the latest attempt has died (a new claim, the reaper): it adds one, unless it
    saved a new epoch, which resets the count.
    """
    if int(r["attempts"]) == 0:
        return 0
    return 0 if made_progress(r) else int(r["fruitless_attempts"]) + 1


def _with_current(r: Record, **fields: Any) -> Record:
    entry = _current(r)
    if entry is None:
        return r
    return {**r, "attempt_log": [*r["attempt_log"][:-1], {**entry, **fields}]}  # type: ignore[typeddict-item]


def as_owner(r: Record, worker: str, attempt: int | None, step: Callable[[Record], Record | None]) -> Record | None:
    """``step`` applied only while ``worker`` (on ``attempt``, the fencing token) runs the job, else no change.

    A worker that no longer owns it (declared lost and requeued, or it ended) must never
    resurrect a finished job or overwrite its successor.
    """
    return step(r) if owned(r, worker, attempt) else None


def beat(r: Record, *, progress: dict[str, Any] | None, now: float) -> Record:
    """The worker is alive (and, with ``progress``, where it is)."""
    new: Record = {**r, "heartbeat_at": now}
    if progress is not None:
        new["progress"] = progress
    return new


def first_step(r: Record, *, at: float, progress: dict[str, Any], now: float) -> Record:
    """The current attempt's first training step finished at ``at``."""
    return {**r, "first_step_at": at, "progress": progress, "heartbeat_at": now}


def resumed(r: Record, *, epoch: int, history: list[dict[str, Any]], now: float) -> Record:
    """The attempt continues from the training state of ``epoch`` (0: from the start), whose ``history`` it takes.

    The history is the state's, not appended to what an earlier attempt recorded: each epoch is listed once.
    """
    return {**_with_current(r, resumed_from=epoch), "history": list(history), "heartbeat_at": now}


def add_epoch(r: Record, *, metrics: dict[str, Any], progress: dict[str, Any], now: float,
              saved_epoch: int | None = None) -> Record:
    """One more finished epoch, with its metrics (and ``saved_epoch``: the epoch whose state the attempt has saved)."""
    new = _with_current(r, saved_epoch=saved_epoch) if saved_epoch is not None else r
    return {**new, "history": [*r["history"], metrics], "progress": progress, "heartbeat_at": now}


def finish(r: Record, status: JobStatus, *, now: float, model_id: str | None = None, error: str | None = None,
           device: str | None = None, final_test_acc: float | None = None, note: str | None = None,
           stopped_early: bool = False) -> Record | None:
    """How the job ended (``stopped_early``: succeeded, ended by its sweep's rule); no change once it ended."""
    if status not in TERMINAL:
        raise ValueError(f"{status!r} is not a final status")
    if r["status"] in TERMINAL:
        return None
    if stopped_early and status != "succeeded":
        raise ValueError("only a job that succeeded can have stopped early")
    new: Record = {**r, "status": status, "finished_at": now, "model_id": model_id, "error": error,
                   "final_test_acc": final_test_acc, "stopped_early": stopped_early}
    if device is not None:
        new["device"] = device
    if note is not None:
        new["note"] = note
    return new


def request_cancel(r: Record, *, now: float) -> Record:
    """A queued job is cancelled at once; a running one is asked to stop (its worker marks it cancelled)."""
    if r["status"] in TERMINAL:
        raise JobFinished(f"job {r['job_id']} already ended ({r['status']}); there is nothing to cancel")
    if r["status"] == "queued":
        return {**r, "status": "cancelled", "cancel_requested": True, "finished_at": now}
    return {**r, "cancel_requested": True}


def published(r: Record, *, task_id: str) -> Record:
    """The job's task is on the broker under ``task_id``."""
    return {**r, "task_id": task_id}


def reap(r: Record, *, stale_after: float, max_attempts: int, published: dict[str, Any] | None,
         now: float) -> Record | None:
    """A running job whose worker went silent: requeued, or ended when it cannot run again; else no change.

    ``published``: the metadata of the job's checkpoint, if one exists. When it is this
    attempt's, the worker published its model and vanished before recording the outcome: the
    job succeeded, and is recorded so (never trained again, never failed).
    """
    if not is_stale(r, stale_after, now):
        return None
    silent = now - (r["heartbeat_at"] or r["created_at"])
    mine = _this_attempts_model(r, published)
    if mine is not None:
        return _succeeded_from(r, mine, now)
    if r["cancel_requested"]:
        return {**r, "status": "cancelled", "finished_at": now,
                "note": f"its worker {r['worker']} vanished after the cancel was asked"}
    fruitless = fruitless_attempts(r)
    if fruitless >= max_attempts:
        return {**r, "status": "failed", "finished_at": now, "fruitless_attempts": fruitless,
                "error": lost_message(fruitless)}
    how = "after saving a new epoch" if fruitless == 0 else f"{fruitless} of {max_attempts} without progress"
    return {
        **r, "status": "queued", "progress": None,
        "note": f"requeued: worker {r['worker']} sent no heartbeat for {silent:.0f}s "
                f"(attempt {r['attempts']}, {how})",
    }


def _this_attempts_model(r: Record, published: dict[str, Any] | None) -> dict[str, Any] | None:
    """``published`` (a checkpoint's metadata) when it is the model of the record's latest attempt, else None."""
    if published is not None and published.get("job_id") == r["job_id"] and published.get("attempt") == r["attempts"]:
        return published
    return None


def _succeeded_from(r: Record, published: dict[str, Any], now: float) -> Record:
    """The job succeeded: its worker published the latest attempt's model and died before recording it."""
    return {**r, "status": "succeeded", "finished_at": now, "model_id": r["job_id"],
            "final_test_acc": published.get("final_test_acc"), "stopped_early": bool(published.get("stopped_early")),
            "note": f"its worker {r['worker']} published the model of attempt {r['attempts']} and went "
                    f"silent before recording it; recorded from the published checkpoint"}


def lost_message(attempts: int) -> str:
    return (
        f"the worker running this job was lost {attempts} time(s) (killed or crashed mid-training) without "
        "saving a new epoch; giving up so that it cannot take down more workers"
    )
