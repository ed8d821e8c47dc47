"""The job store: training job records in Redis, shared by the API and the worker.

The one place that knows the key formats:

- ``bnlenet:job:<id>``: the record, a JSON object (see ``new_record``);
- ``bnlenet:jobs:all`` and ``bnlenet:jobs:status:<status>``: sorted sets of ids scored by
  creation time, for listing newest first, filtered by status, with a total;
- ``bnlenet:workers``: a sorted set of worker names scored by when each was last seen;
- ``bnlenet:jobs:expiry``: a sorted set of finished jobs scored by when they expire
  (``retention_s`` after they ended; none when it is None), which ``expire`` sweeps: the
  record and all its index entries go together.

Every change to a record is a read-modify-write inside ``WATCH``/``MULTI`` (redis-py's
``Redis.transaction``), so a cancel, a heartbeat and a status change never overwrite one
another, and a record and its indexes always agree. Any Redis failure surfaces as
``StoreUnavailable``. Every change a worker makes is conditional on still owning the job.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, get_args

import redis
from redis.client import Pipeline

from bnlenet import job_stats

__all__ = [
    "STATUSES",
    "TERMINAL",
    "Claim",
    "JobFinished",
    "JobNotFound",
    "JobRecord",
    "JobRunning",
    "JobStatus",
    "JobStore",
    "StoreUnavailable",
    "is_stale",
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
TERMINAL: frozenset[JobStatus] = frozenset({"succeeded", "failed", "cancelled"})

_PREFIX = "bnlenet"


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
    attempts: int
    task_id: str | None
    cancel_requested: bool


Record = JobRecord  # the short name used in this module's signatures


class StoreUnavailable(RuntimeError):
    """Redis cannot be reached or answered with an error."""


class JobNotFound(LookupError):
    """No job with this id."""


class JobFinished(RuntimeError):
    """The job already ended; it cannot be changed any more."""


class JobRunning(RuntimeError):
    """The job is running; it must be cancelled (and end) before it can be deleted."""


@dataclass(frozen=True)
class Claim:
    """What a delivery of a job should do: ``run`` it, or not (``reason`` says why)."""

    run: bool
    record: Record | None
    reason: str = ""


def new_record(job_id: str, params: dict[str, Any], now: float) -> Record:
    """A fresh queued record."""
    return {
        "job_id": job_id, "status": "queued", "params": params, "progress": None, "history": [],
        "final_test_acc": None, "created_at": now, "started_at": None, "first_step_at": None,
        "finished_at": None, "heartbeat_at": None, "worker": None, "worker_pid": None, "device": None,
        "model_id": None, "error": None, "note": None, "attempts": 0, "task_id": None,
        "cancel_requested": False,
    }


def is_stale(record: Record, stale_after: float, now: float | None = None) -> bool:
    """The one rule: a running job whose worker sent no heartbeat for ``stale_after`` seconds lost it."""
    if record["status"] != "running":
        return False
    now = time.time() if now is None else now
    beat = record["heartbeat_at"]
    return beat is None or now - beat >= stale_after


def _load(raw: Any) -> Record:
    """A stored record; records written before a field existed get its empty value."""
    record: Record = json.loads(raw)
    record.setdefault("final_test_acc", None)
    return record


class JobStore:
    """Job records in Redis (see the module docstring for the layout)."""

    def __init__(self, client: redis.Redis, *, retention_s: float | None = None) -> None:
        self.redis = client
        self.retention_s = retention_s or None  # finished jobs are deleted this long after they end; None keeps

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 2.0, retention_s: float | None = None) -> JobStore:
        """A store on its own connection pool; short timeouts so a down Redis fails fast."""
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout, health_check_interval=30
        )
        return cls(client, retention_s=retention_s)

    # keys
    @staticmethod
    def _job_key(job_id: str) -> str:
        return f"{_PREFIX}:job:{job_id}"

    @staticmethod
    def _index_key(status: str | None = None) -> str:
        return f"{_PREFIX}:jobs:all" if status is None else f"{_PREFIX}:jobs:status:{status}"

    _workers_key = f"{_PREFIX}:workers"
    _expiry_key = f"{_PREFIX}:jobs:expiry"
    # For readers that only count (the metrics collector): the same keys, public.
    index_key = _index_key
    workers_key = _workers_key

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the job store (Redis) is unavailable: {exc}") from exc

    # reads
    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless Redis answers."""
        with self._errors():
            self.redis.ping()

    def get(self, job_id: str) -> Record:
        with self._errors():
            raw = self.redis.get(self._job_key(job_id))
        if raw is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return _load(raw)

    def list(self, *, status: str | None = None, offset: int = 0, limit: int = 50) -> tuple[list[Record], int]:
        """Records newest first, optionally of one status; and how many there are in all."""
        key = self._index_key(status)
        with self._errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(key)
            pipe.zrevrange(key, offset, offset + limit - 1)
            total, ids = pipe.execute()
            raws = self.redis.mget([self._job_key(_text(i)) for i in ids]) if ids else []
        return [_load(r) for r in raws if r is not None], int(total)

    def running(self) -> builtins.list[Record]:
        with self._errors():
            ids = self.redis.zrange(self._index_key("running"), 0, -1)
            raws = self.redis.mget([self._job_key(_text(i)) for i in ids]) if ids else []
        return [_load(r) for r in raws if r is not None]

    # writes
    def create(self, params: dict[str, Any]) -> Record:
        """Store a new queued job with these (validated) parameters."""
        now = time.time()
        record = new_record(uuid.uuid4().hex, params, now)
        with self._errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(self._job_key(record["job_id"]), json.dumps(record))
            pipe.zadd(self._index_key(), {record["job_id"]: now})
            pipe.zadd(self._index_key("queued"), {record["job_id"]: now})
            pipe.execute()
        return record

    def delete(self, job_id: str) -> None:
        """Remove a job entirely (used when its task could not be queued)."""
        with self._errors():
            pipe = self.redis.pipeline(transaction=True)
            self._queue_removal(pipe, job_id)
            pipe.execute()

    def _queue_removal(self, pipe: Pipeline, job_id: str) -> None:
        pipe.delete(self._job_key(job_id))
        pipe.zrem(self._index_key(), job_id)
        for status in STATUSES:
            pipe.zrem(self._index_key(status), job_id)
        pipe.zrem(self._expiry_key, job_id)

    def remove(self, job_id: str) -> None:
        """Delete a job that is not running (``DELETE /jobs/{id}``): its record and every index entry."""

        def transaction(pipe: Pipeline) -> None:
            raw = pipe.get(self._job_key(job_id))
            if raw is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            if _load(raw)["status"] == "running":
                raise JobRunning(f"job {job_id} is running: cancel it first (POST /jobs/{job_id}/cancel), "
                                 "and delete it once it has ended")
            pipe.multi()
            self._queue_removal(pipe, job_id)

        with self._errors():
            self.redis.transaction(transaction, self._job_key(job_id))

    def expire(self, *, now: float | None = None, batch: int = 1000) -> int:
        """Delete finished jobs whose retention ran out (at most ``batch``); how many went."""
        now = time.time() if now is None else now
        with self._errors():
            ids = [_text(i) for i in self.redis.zrangebyscore(self._expiry_key, "-inf", now, start=0, num=batch)]
            if ids:
                pipe = self.redis.pipeline(transaction=True)
                for job_id in ids:
                    self._queue_removal(pipe, job_id)
                pipe.execute()
        return len(ids)

    def count(self, status: str | None = None) -> int:
        """How many jobs there are (of one status): O(1)."""
        with self._errors():
            return int(self.redis.zcard(self._index_key(status)))

    def ids(self, status: str) -> builtins.list[str]:
        """The ids of every job with this status, oldest first."""
        with self._errors():
            return [_text(i) for i in self.redis.zrange(self._index_key(status), 0, -1)]

    def update(self, job_id: str, change: Callable[[Record], Record | None]) -> Record:
        """Apply ``change`` to the record atomically; it returns the new record, or None for no change.

        ``change`` may run more than once (when another writer got in first), so it must not
        have side effects; it may raise to abort.
        """
        key = self._job_key(job_id)
        result: Record | None = None

        def transaction(pipe: Pipeline) -> None:  # retried by redis-py while another writer gets in first
            nonlocal result
            raw = pipe.get(key)  # a watched pipeline answers at once
            if raw is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            old = _load(raw)
            new = change(_load(raw))
            result = old if new is None else new
            if new is None:
                return
            pipe.multi()
            pipe.set(key, json.dumps(new))
            if new["status"] != old["status"]:
                pipe.zrem(self._index_key(old["status"]), job_id)
                pipe.zadd(self._index_key(new["status"]), {job_id: new["created_at"]})
                if self.retention_s and new["status"] in TERMINAL and old["status"] not in TERMINAL:
                    ends = new["finished_at"] or time.time()
                    pipe.zadd(self._expiry_key, {job_id: ends + self.retention_s})

        with self._errors():
            self.redis.transaction(transaction, key)
        assert result is not None
        return result

    def set_task_id(self, job_id: str, task_id: str) -> Record:
        return self.update(job_id, lambda r: {**r, "task_id": task_id})

    def request_cancel(self, job_id: str) -> Record:
        """Cancel a queued job at once; ask a running one to stop (the worker marks it cancelled)."""

        def change(r: Record) -> Record:
            if r["status"] in TERMINAL:
                raise JobFinished(f"job {job_id} already ended ({r['status']}); there is nothing to cancel")
            if r["status"] == "queued":
                return {**r, "status": "cancelled", "cancel_requested": True, "finished_at": time.time()}
            return {**r, "cancel_requested": True}

        return self.update(job_id, change)

    def claim(
        self,
        job_id: str,
        *,
        worker: str,
        pid: int,
        task_id: str | None,
        max_attempts: int,
        stale_after: float,
        owner_gone: Callable[[Record], bool] = lambda r: False,
    ) -> Claim:
        """Mark the job running for this delivery, unless it should not run.

        A delivery does not run a job that ended, was cancelled, or is running under another
        live delivery (fresh heartbeat and ``owner_gone`` false). Each run counts as an
        attempt; past ``max_attempts`` the job fails, as its worker keeps dying.
        """
        outcome: dict[str, Any] = {}

        def change(r: Record) -> Record | None:
            now = time.time()
            outcome.clear()
            if r["status"] in TERMINAL:
                outcome.update(run=False, reason=f"job already {r['status']}")
                return None
            if r["cancel_requested"]:
                outcome.update(run=False, reason="cancelled before it started")
                return {**r, "status": "cancelled", "finished_at": now}
            if r["status"] == "running":
                if not is_stale(r, stale_after, now) and not owner_gone(r):
                    outcome.update(run=False, reason=f"running under another live worker ({r['worker']})")
                    return None
            attempts = int(r["attempts"]) + 1
            if attempts > max_attempts:
                outcome.update(run=False, reason="attempts exhausted")
                return {
                    **r, "status": "failed", "finished_at": now, "attempts": attempts - 1,
                    "error": _lost_message(attempts - 1),
                }
            outcome.update(run=True, reason="")
            return {
                **r, "status": "running", "attempts": attempts, "started_at": now, "first_step_at": None,
                "heartbeat_at": now,
                "worker": worker, "worker_pid": pid, "task_id": task_id or r["task_id"], "error": None,
                "progress": None, "history": [],
            }

        try:
            record = self.update(job_id, change)
        except JobNotFound:
            return Claim(False, None, "no such job")
        if outcome["run"] and record["attempts"] == 1 and record["started_at"] is not None:
            self._observe(job_stats.QUEUE_WAIT, record["started_at"] - record["created_at"])
        return Claim(bool(outcome["run"]), record, outcome["reason"])

    def heartbeat(
        self, job_id: str, *, worker: str, attempt: int | None = None, progress: dict[str, Any] | None = None
    ) -> bool:
        """Note that the job's worker is alive (and where it is); returns whether a cancel was asked."""
        cancel = False

        def change(r: Record) -> Record | None:
            nonlocal cancel
            cancel = bool(r["cancel_requested"])
            if not _owned(r, worker, attempt):
                return None  # not ours any more: never resurrect a finished or requeued job
            new: Record = {**r, "heartbeat_at": time.time()}
            if progress is not None:
                new["progress"] = progress
            return new

        self.update(job_id, change)
        return cancel

    def first_step(
        self, job_id: str, *, worker: str, attempt: int | None = None, at: float, progress: dict[str, Any]
    ) -> None:
        """Note when the job's first training step finished (written at once, not throttled)."""

        def change(r: Record) -> Record | None:
            if not _owned(r, worker, attempt):
                return None
            return {**r, "first_step_at": at, "progress": progress, "heartbeat_at": time.time()}

        self.update(job_id, change)

    def add_epoch(
        self, job_id: str, *, worker: str, attempt: int | None = None, metrics: dict[str, Any],
        progress: dict[str, Any],
    ) -> None:
        def change(r: Record) -> Record | None:
            if not _owned(r, worker, attempt):
                return None
            return {**r, "history": [*r["history"], metrics], "progress": progress, "heartbeat_at": time.time()}

        self.update(job_id, change)

    def finish(
        self, job_id: str, status: JobStatus, *, worker: str | None = None, attempt: int | None = None,
        model_id: str | None = None, error: str | None = None, device: str | None = None,
        final_test_acc: float | None = None, note: str | None = None,
    ) -> Record:
        """Record how the job ended; with ``worker``, only while that worker (and ``attempt``) owns it."""
        if status not in TERMINAL:
            raise ValueError(f"{status!r} is not a final status")
        ended = False

        def change(r: Record) -> Record | None:
            nonlocal ended
            ended = False
            if r["status"] in TERMINAL or (worker is not None and not _owned(r, worker, attempt)):
                return None
            ended = True
            new: Record = {**r, "status": status, "finished_at": time.time(), "model_id": model_id, "error": error,
                           "final_test_acc": final_test_acc}
            if device is not None:
                new["device"] = device
            if note is not None:
                new["note"] = note
            return new

        record = self.update(job_id, change)
        if ended and record["started_at"] is not None and record["finished_at"] is not None:
            self._observe(job_stats.JOB_DURATION, record["finished_at"] - record["started_at"], status)
        return record

    def reap(self, job_id: str, *, stale_after: float, max_attempts: int) -> Record | None:
        """Requeue a running job whose worker vanished, or fail it once attempts are used up.

        Returns the record when it went back to ``queued`` (the caller publishes a new task),
        else None.
        """
        requeued = False

        def change(r: Record) -> Record | None:
            nonlocal requeued
            requeued = False
            now = time.time()
            if not is_stale(r, stale_after, now):
                return None
            silent = now - (r["heartbeat_at"] or r["created_at"])
            if r["cancel_requested"]:
                return {**r, "status": "cancelled", "finished_at": now,
                        "note": f"its worker {r['worker']} vanished after the cancel was asked"}
            if int(r["attempts"]) >= max_attempts:
                return {**r, "status": "failed", "finished_at": now, "error": _lost_message(int(r["attempts"]))}
            requeued = True
            return {
                **r, "status": "queued", "progress": None,
                "note": f"requeued: worker {r['worker']} sent no heartbeat for {silent:.0f}s "
                        f"(attempt {r['attempts']} of {max_attempts})",
            }

        record = self.update(job_id, change)
        return record if requeued else None

    # figures for the metrics (bnlenet.job_stats); best effort: a lost figure never fails a job
    def _observe(self, hist: job_stats.Histogram, value: float, label: str = "") -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            hist.observe(pipe, value, label)
            pipe.execute()
        except redis.RedisError:
            pass

    def epoch_done(self, *, variant: str, device: str, examples_per_sec: float) -> None:
        """Count a finished epoch and keep its throughput as the latest for its variant and device."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(job_stats.EPOCHS_KEY)
            pipe.hset(job_stats.THROUGHPUT_KEY, f"{variant}|{device}", examples_per_sec)
            pipe.execute()
        except redis.RedisError:
            pass

    # workers
    def worker_seen(self, name: str) -> None:
        with self._errors():
            self.redis.zadd(self._workers_key, {name: time.time()})

    def live_workers(self, within: float) -> builtins.list[str]:
        """Workers seen in the last ``within`` seconds."""
        with self._errors():
            names = self.redis.zrangebyscore(self._workers_key, time.time() - within, "+inf")
        return sorted(_text(n) for n in names)


def _owned(record: Record, worker: str, attempt: int | None) -> bool:
    """Whether ``worker`` (on ``attempt``, the fencing token, when given) still runs the job."""
    return (record["status"] == "running" and record["worker"] == worker
            and (attempt is None or record["attempts"] == attempt))


def _lost_message(attempts: int) -> str:
    return (
        f"the worker running this job was lost {attempts} time(s) (killed or crashed mid-training); "
        "giving up so that it cannot take down more workers"
    )


def _text(value: Any) -> str:
    """A Redis reply item as text (replies are bytes: the client does not decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)
