"""The job store: training job records in Redis, shared by the API and the worker.

The one place that knows the key formats:

- ``bnlenet:job:<id>``: the record, a JSON object (see ``new_record``);
- ``bnlenet:jobs:all`` and ``bnlenet:jobs:status:<status>``: sorted sets of ids scored by
  creation time, for listing newest first, filtered by status, with a total;
- ``bnlenet:workers``: a sorted set of worker names scored by when each was last seen;
- ``bnlenet:job:<id>:events``: the job's events, a Redis Stream (see ``JobEvent``), and
  ``bnlenet:job-events``, the pub/sub channel that names a job whenever its stream grows;
- ``bnlenet:outbox``: ids of queued jobs whose task may not be on the broker yet, scored by
  when they were put there (the outbox: see ``submit``);
- ``bnlenet:idempotency:<sha256 of the key>``: ``<job id> <sha256 of the parameters>`` for
  ``POST /train``'s ``Idempotency-Key``, expiring after a day.

- ``bnlenet:jobs:expiry``: a sorted set of finished jobs scored by when they expire
  (``retention_s`` after they ended; none when it is None), which ``expire`` sweeps: the
  record and all its index entries go together.

Publishing a job is atomic with its record through the outbox: the record and its outbox
entry are written in one transaction, the task is published after, and only then is the entry
removed (with the task id written to the record). A crash or a broker failure in between leaves
the entry, and the workers' sweep (``pending_publish``) publishes it again a few seconds later.
A second publish of the same job is harmless: a delivery runs a job only if ``claim`` lets it.

Every change to a record is a read-modify-write inside ``WATCH``/``MULTI`` (redis-py's
``Redis.transaction``), so a cancel, a heartbeat and a status change never overwrite one
another, and a record, its indexes and its events always agree (an update that changes what a
watcher sees appends its events in the same transaction). Any Redis failure surfaces as
``StoreUnavailable``. Every change a worker makes is conditional on still owning the job.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
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
    "EVENTS_CHANNEL",
    "FIRST_EVENT_ID",
    "Claim",
    "JobEvent",
    "JobFinished",
    "JobNotFound",
    "MalformedJob",
    "JobRecord",
    "JobRunning",
    "JobStatus",
    "JobStore",
    "StoreUnavailable",
    "event_id_key",
    "is_stale",
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
TERMINAL: frozenset[JobStatus] = frozenset({"succeeded", "failed", "cancelled"})

_PREFIX = "bnlenet"
log = logging.getLogger(__name__)

EVENTS_CHANNEL = f"{_PREFIX}:job-events"  # pub/sub: each message is the id of a job whose events grew
EVENTS_MAXLEN = 1000  # entries kept per job (approximately: Redis trims whole nodes)
EVENTS_TTL_S = 7 * 24 * 3600  # how long a job's events outlive its last one, when its record does not expire
FIRST_EVENT_ID = "0-0"  # the position before a job's first event
JobEventType = Literal["progress", "epoch", "status"]


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


class IdempotencyConflict(ValueError):
    """An ``Idempotency-Key`` reused with different parameters."""


class MalformedJob(ValueError):
    """A stored job record this code cannot read; reported for that job, never for a whole listing."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"the record of job {job_id!r} is malformed ({reason}); delete the key or restore it")
        self.job_id = job_id


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


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event stream: ``id`` is the Redis Stream entry id (``<ms>-<seq>``).

    ``progress``: ``{"progress": {...}}``; ``epoch``: one finished epoch's metrics (a
    ``models.training.EpochMetrics`` as a dict); ``status``: the whole record, written when the
    status, the attempt, the worker, the cancel request or the note changes.
    """

    id: str
    type: JobEventType
    data: dict[str, Any]


def job_events(old: Record, new: Record) -> builtins.list[tuple[JobEventType, dict[str, Any]]]:
    """What a watcher should be told about the change from ``old`` to ``new`` (heartbeats alone: nothing)."""
    watched = ("status", "attempts", "worker", "cancel_requested", "note")
    if any(new[f] != old[f] for f in watched):  # type: ignore[literal-required]
        return [("status", dict(new))]
    events: builtins.list[tuple[JobEventType, dict[str, Any]]] = []
    if len(new["history"]) > len(old["history"]) and new["history"][: len(old["history"])] == old["history"]:
        events += [("epoch", dict(m)) for m in new["history"][len(old["history"]):]]
    if new["progress"] != old["progress"]:
        events.append(("progress", {"progress": new["progress"]}))
    return events


def event_id_key(event_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair; ``ValueError`` unless it reads ``<ms>-<seq>``."""
    ms, sep, seq = event_id.partition("-")
    if not (sep and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"not a stream entry id: {event_id!r}")
    return int(ms), int(seq)


def _event(entry_id: Any, fields: dict[Any, Any]) -> JobEvent:
    kind = _text(fields[b"type"])
    assert kind in ("progress", "epoch", "status")
    return JobEvent(_text(entry_id), kind, json.loads(fields[b"data"]))  # type: ignore[arg-type]


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


def _load(raw: Any, job_id: str = "?") -> Record:
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
    if problems:
        raise MalformedJob(job_id, "; ".join(problems))
    record.setdefault("final_test_acc", None)
    return record  # type: ignore[return-value]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The fields every reader relies on, and what they must hold.
_SHAPE: dict[str, tuple[Callable[[Any], bool], str]] = {
    "job_id": (lambda v: isinstance(v, str), "a string"),
    "status": (lambda v: v in STATUSES, f"one of {', '.join(STATUSES)}"),
    "params": (lambda v: isinstance(v, dict), "an object"),
    "attempts": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a whole number"),
    "created_at": (_number, "a number"),
    "history": (lambda v: isinstance(v, list), "a list"),
}


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
    _outbox_key = f"{_PREFIX}:outbox"
    IDEMPOTENCY_TTL_S = 24 * 3600

    @staticmethod
    def _idempotency_key(key: str) -> str:
        return f"{_PREFIX}:idempotency:{hashlib.sha256(key.encode()).hexdigest()}"
    _expiry_key = f"{_PREFIX}:jobs:expiry"
    # For readers that only count (the metrics collector): the same keys, public.
    index_key = _index_key
    workers_key = _workers_key

    @staticmethod
    def events_key(job_id: str) -> str:
        return f"{_PREFIX}:job:{job_id}:events"

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
        return _load(raw, job_id)

    def list(self, *, status: str | None = None, offset: int = 0, limit: int = 50) -> tuple[list[Record], int]:
        """Records newest first, optionally of one status; and how many there are in all."""
        key = self._index_key(status)
        with self._errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(key)
            pipe.zrevrange(key, offset, offset + limit - 1)
            total, ids = pipe.execute()
            raws = self.redis.mget([self._job_key(_text(i)) for i in ids]) if ids else []
        return self._readable(ids, raws), int(total)

    def running(self) -> builtins.list[Record]:
        with self._errors():
            ids = self.redis.zrange(self._index_key("running"), 0, -1)
            raws = self.redis.mget([self._job_key(_text(i)) for i in ids]) if ids else []
        return self._readable(ids, raws)

    @staticmethod
    def _readable(ids: builtins.list[Any], raws: builtins.list[Any]) -> builtins.list[Record]:
        """The records that load; a malformed one is logged and left out, not fatal to the list."""
        records = []
        for job_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            try:
                records.append(_load(raw, _text(job_id)))
            except MalformedJob as exc:
                log.warning("%s", exc)
        return records

    # writes
    def create(self, params: dict[str, Any]) -> Record:
        """Store a new queued job with these (validated) parameters, in the outbox until published."""
        return self.submit(params)[0]

    def submit(self, params: dict[str, Any], *, idempotency_key: str | None = None) -> tuple[Record, bool]:
        """Store a new queued job, or with a key seen before, find the job it made; (record, new?).

        The record, its indexes, its outbox entry and the key are written in one transaction.
        Raises ``IdempotencyConflict`` when the key was used with other parameters.
        """
        now = time.time()
        record = new_record(uuid.uuid4().hex, params, now)
        job_id = record["job_id"]
        fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        idem = self._idempotency_key(idempotency_key) if idempotency_key else None
        earlier: str | None = None

        def transaction(pipe: Pipeline) -> None:
            nonlocal earlier
            earlier = None
            if idem is not None:
                seen = pipe.get(idem)
                if seen is not None:
                    earlier = _text(seen)
                    return
            pipe.multi()
            pipe.set(self._job_key(job_id), json.dumps(record))
            pipe.zadd(self._index_key(), {job_id: now})
            pipe.zadd(self._index_key("queued"), {job_id: now})
            pipe.zadd(self._outbox_key, {job_id: now})
            if idem is not None:
                pipe.set(idem, f"{job_id} {fingerprint}", ex=self.IDEMPOTENCY_TTL_S)

        with self._errors():
            if idem is None:
                self.redis.transaction(transaction)
            else:
                self.redis.transaction(transaction, idem)
        if earlier is None:
            return record, True
        earlier_id, _, earlier_fingerprint = earlier.partition(" ")
        if earlier_fingerprint != fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was used for a job with other parameters; use a new key for a new job"
            )
        try:
            return self.get(earlier_id), False
        except JobNotFound:  # the job was deleted since: the key made it, so it is gone too
            with self._errors():
                self.redis.delete(idem)  # type: ignore[arg-type]
            return self.submit(params, idempotency_key=idempotency_key)

    def published(self, job_id: str, task_id: str) -> Record:
        """The job's task is on the broker: note its id and take the job out of the outbox."""
        return self.update(job_id, lambda r: {**r, "task_id": task_id},
                           also=lambda pipe: pipe.zrem(self._outbox_key, job_id))

    def pending_publish(self, older_than: float) -> builtins.list[str]:
        """Ids in the outbox for at least ``older_than`` seconds (their publish may have been lost)."""
        with self._errors():
            ids = self.redis.zrangebyscore(self._outbox_key, "-inf", time.time() - older_than)
        return [_text(i) for i in ids]

    def drop_from_outbox(self, job_id: str) -> None:
        with self._errors():
            self.redis.zrem(self._outbox_key, job_id)

    def delete(self, job_id: str) -> None:
        """Remove a job entirely."""
        with self._errors():
            pipe = self.redis.pipeline(transaction=True)
            self._queue_removal(pipe, job_id)
            pipe.execute()

    def _queue_removal(self, pipe: Pipeline, job_id: str) -> None:
        pipe.delete(self._job_key(job_id), self.events_key(job_id))
        pipe.zrem(self._index_key(), job_id)
        for status in STATUSES:
            pipe.zrem(self._index_key(status), job_id)
        pipe.zrem(self._expiry_key, job_id)
        pipe.zrem(self._outbox_key, job_id)

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

    def update(self, job_id: str, change: Callable[[Record], Record | None],
               also: Callable[[Pipeline], object] | None = None) -> Record:
        """Apply ``change`` to the record atomically; it returns the new record, or None for no change.

        ``change`` may run more than once (when another writer got in first), so it must not
        have side effects; it may raise to abort. ``also`` adds commands to the same transaction
        when the record changes.
        """
        key = self._job_key(job_id)
        result: Record | None = None

        def transaction(pipe: Pipeline) -> None:  # retried by redis-py while another writer gets in first
            nonlocal result
            raw = pipe.get(key)  # a watched pipeline answers at once
            if raw is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            old = _load(raw, job_id)  # a malformed record raises here, before anything is written
            new = change(_load(raw, job_id))
            result = old if new is None else new
            if new is None:
                return
            events = job_events(old, new)
            ttl_ms = int(pipe.pttl(key)) if events else -1  # events expire with an expiring record
            pipe.multi()
            pipe.set(key, json.dumps(new))
            self._append_events(pipe, job_id, events, ttl_ms)
            if new["status"] != old["status"]:
                pipe.zrem(self._index_key(old["status"]), job_id)
                pipe.zadd(self._index_key(new["status"]), {job_id: new["created_at"]})
                if self.retention_s and new["status"] in TERMINAL and old["status"] not in TERMINAL:
                    ends = new["finished_at"] or time.time()
                    pipe.zadd(self._expiry_key, {job_id: ends + self.retention_s})
            if also is not None:
                also(pipe)

        with self._errors():
            self.redis.transaction(transaction, key)
        assert result is not None
        return result

    def _append_events(
        self, pipe: Pipeline, job_id: str, events: builtins.list[tuple[JobEventType, dict[str, Any]]], ttl_ms: int,
    ) -> None:
        """Queue, in the caller's transaction, the events on the job's stream and a note on the channel."""
        if not events:
            return
        key = self.events_key(job_id)
        for kind, data in events:
            pipe.xadd(key, {"type": kind, "data": json.dumps(data)}, maxlen=EVENTS_MAXLEN, approximate=True)
        if ttl_ms > 0:
            pipe.pexpire(key, ttl_ms)
        else:
            pipe.expire(key, EVENTS_TTL_S)
        pipe.publish(EVENTS_CHANNEL, job_id)

    def snapshot(self, job_id: str) -> tuple[Record, str]:
        """The record and the id of the job's latest event, read together (``FIRST_EVENT_ID`` when none)."""
        with self._errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.get(self._job_key(job_id))
            pipe.xrevrange(self.events_key(job_id), count=1)
            raw, last = pipe.execute()
        if raw is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return _load(raw), _text(last[0][0]) if last else FIRST_EVENT_ID

    def events_after(self, job_id: str, after: str, *, count: int | None = None) -> builtins.list[JobEvent]:
        """The job's events after the entry id ``after``, oldest first."""
        with self._errors():
            entries: Any = self.redis.xrange(self.events_key(job_id), min=f"({after}", count=count)
        return [_event(entry_id, fields) for entry_id, fields in entries]

    def events_resumable(self, job_id: str, after: str) -> bool:
        """Whether every event after ``after`` is still stored (none was trimmed or expired).

        Trimming drops the oldest entries, and only once the stream holds ``EVENTS_MAXLEN``; an
        expired stream is gone as a whole. When unsure, the answer is no (the caller sends the
        whole record again).
        """
        with self._errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.xlen(self.events_key(job_id))
            pipe.xrange(self.events_key(job_id), count=1)
            length, first = pipe.execute()
        if not first:
            return after == FIRST_EVENT_ID
        return length < EVENTS_MAXLEN or event_id_key(_text(first[0][0])) <= event_id_key(after)

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
        except MalformedJob as exc:  # never run it, and never leave it waiting for ever
            return Claim(False, self._fail_malformed(job_id, str(exc)), "malformed record")
        if outcome["run"] and record["attempts"] == 1 and record["started_at"] is not None:
            self._observe(job_stats.QUEUE_WAIT, record["started_at"] - record["created_at"])
        return Claim(bool(outcome["run"]), record, outcome["reason"])

    def _fail_malformed(self, job_id: str, reason: str) -> Record:
        """Replace an unreadable record with a failed one that says why, keeping what can be kept."""
        now = time.time()
        key = self._job_key(job_id)
        with self._errors():
            raw = self.redis.get(key)
            try:
                old = json.loads(raw) if raw is not None else {}
            except ValueError:
                old = {}
            old = old if isinstance(old, dict) else {}
            created = float(old["created_at"]) if _number(old.get("created_at")) else now
            params: dict[str, Any] = old["params"] if isinstance(old.get("params"), dict) else {}
            record: Record = {**new_record(job_id, params, created), "status": "failed", "finished_at": now,
                              "error": reason}
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(key, json.dumps(record))
            for status in STATUSES:
                pipe.zrem(self._index_key(status), job_id)
            pipe.zadd(self._index_key("failed"), {job_id: created})
            pipe.zadd(self._index_key(), {job_id: created})
            self._append_events(pipe, job_id, [("status", dict(record))], -1)  # its watchers see it end
            pipe.execute()
        log.warning("job %s failed: %s", job_id, reason)
        return record

    def heartbeat(
        self, job_id: str, *, worker: str, attempt: int | None = None, progress: dict[str, Any] | None = None
    ) -> bool:
        """Note that the job's worker is alive (and where it is); returns whether a cancel was asked."""
        return self.beat(job_id, worker=worker, attempt=attempt, progress=progress)[0]

    def beat(
        self, job_id: str, *, worker: str, attempt: int | None = None, progress: dict[str, Any] | None = None
    ) -> tuple[bool, bool]:
        """A heartbeat that also says whether this worker (and attempt) still owns the job: (cancel?, owned?).

        A worker that no longer owns it (it was declared lost and requeued, or it ended) must
        stop: nothing it writes counts any more, and it must publish nothing.
        """
        cancel = owned = False

        def change(r: Record) -> Record | None:
            nonlocal cancel, owned
            cancel = bool(r["cancel_requested"])
            owned = _owned(r, worker, attempt)
            if not owned:
                return None  # not ours any more: never resurrect a finished or requeued job
            new: Record = {**r, "heartbeat_at": time.time()}
            if progress is not None:
                new["progress"] = progress
            return new

        self.update(job_id, change)
        return cancel, owned

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

    def reap(self, job_id: str, *, stale_after: float, max_attempts: int,
             published: dict[str, Any] | None = None) -> Record | None:
        """Requeue a running job whose worker vanished, or fail it once attempts are used up.

        ``published``: the metadata of the job's checkpoint, if one exists. When it is this
        attempt's, the worker published its model and vanished before recording the outcome:
        the job succeeded, and is recorded so (never trained again, never failed).
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
            if published is not None and published.get("job_id") == job_id \
                    and published.get("attempt") == r["attempts"]:
                return {**r, "status": "succeeded", "finished_at": now, "model_id": job_id,
                        "final_test_acc": published.get("final_test_acc"),
                        "note": f"its worker {r['worker']} published the model of attempt {r['attempts']} and went "
                                f"silent before recording it; recorded from the published checkpoint"}
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

        # A requeued job goes into the outbox with its record: if the publish that follows is
        # lost, the sweep publishes it.
        record = self.update(job_id, change,
                             also=lambda pipe: pipe.zadd(self._outbox_key, {job_id: time.time()}) if requeued else None)
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
