"""The job store: training job records in Redis, shared by the API and the worker.

The one place that knows the key formats:

- ``bnlenet:job:<id>``: the record, a JSON object (see ``bnlenet.jobs.record``);
- ``bnlenet:jobs:all`` and ``bnlenet:jobs:status:<status>``: sorted sets of ids scored by
  creation time, for listing newest first, filtered by status, with a total;
- ``bnlenet:workers``: a sorted set of worker names scored by when each was last seen;
- ``bnlenet:job:<id>:events``: the job's events, a Redis Stream (see ``bnlenet.jobs.events``), and
  ``bnlenet:job-events``, the pub/sub channel that names a job whenever its stream grows;
- ``bnlenet:outbox``: ids of queued jobs whose task may not be on the broker yet, scored by
  when they were put there (the outbox: see ``submit``);
- ``bnlenet:idempotency:<sha256 of the key>``: ``<job id> <sha256 of the parameters>`` for
  ``POST /train``'s ``Idempotency-Key``, expiring after a day;
- ``bnlenet:jobs:expiry``: a sorted set of finished jobs scored by when they expire
  (``retention_s`` after they ended; none when it is None), which ``expire`` sweeps: the
  record and all its index entries go together.

Publishing a job is atomic with its record through the outbox: the record and its outbox
entry are written in one transaction, the task is published after, and only then is the entry
removed (with the task id written to the record). A crash or a broker failure in between leaves
the entry, and the workers' sweep (``pending_publish``) publishes it again a few seconds later.
A second publish of the same job is harmless: a delivery runs a job only if ``claim`` lets it.

Every change to a record loads it, applies a transition of ``bnlenet.jobs.lifecycle`` and
saves it inside ``WATCH``/``MULTI`` (redis-py's ``Redis.transaction``), so a cancel, a heartbeat
and a status change never overwrite one another, and a record, its indexes and its events
always agree (an update that changes what a watcher sees appends its events in the same
transaction). Any Redis failure surfaces as ``StoreUnavailable``. Every change a worker makes
goes through ``_as_owner``: it applies only while that worker, on that attempt, owns the job.
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
from typing import Any, TypeVar

import redis
from redis.client import Pipeline

from bnlenet import job_stats
from bnlenet.jobs import lifecycle
from bnlenet.jobs.errors import IdempotencyConflict, JobNotFound, JobRunning, MalformedJob, StoreUnavailable
from bnlenet.jobs.events import (
    EVENTS_CHANNEL,
    EVENTS_MAXLEN,
    EVENTS_TTL_S,
    FIRST_EVENT_ID,
    JobEvent,
    JobEventType,
    event_id_key,
    job_events,
)
from bnlenet.jobs.record import (
    STATUSES,
    TERMINAL,
    JobRecord,
    JobStatus,
    is_number,
    load_record,
    new_record,
    params_problems,
)

__all__ = ["Claim", "JobStore"]

_PREFIX = "bnlenet"
log = logging.getLogger(__name__)

Record = JobRecord  # the short name used in this module's signatures
T = TypeVar("T")


@dataclass(frozen=True)
class Claim:
    """What a delivery of a job should do: ``run`` it, or not (``reason`` says why)."""

    run: bool
    record: Record | None
    reason: str = ""


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
    # For readers that only count (the metrics collector) and the sweep store: the same keys, public.
    index_key = _index_key
    workers_key = _workers_key
    job_key = _job_key

    @staticmethod
    def events_key(job_id: str) -> str:
        return f"{_PREFIX}:job:{job_id}:events"

    # A sweep's trials are kept as long as their sweep: the sweep and its trials' jobs expire together,
    # the retention after its last trial ended (``SweepStore.expire``), so its results never lose trials.
    sweep_expiry_key = f"{_PREFIX}:sweeps:expiry"

    @staticmethod
    def sweep_events_key(sweep_id: str) -> str:
        """A sweep's events: its trials' ``epoch`` and ``status`` events, each naming its job (``bnlenet.sweeps``)."""
        return f"{_PREFIX}:sweep:{sweep_id}:events"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise StoreUnavailable(f"the job store (Redis) is unavailable: {exc}") from exc

    errors = _errors  # the sweep store's reads and writes fail the same way

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
        return load_record(raw, job_id)

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
                records.append(load_record(raw, _text(job_id)))
            except MalformedJob as exc:
                log.warning("%s", exc)
        return records

    def count(self, status: str | None = None) -> int:
        """How many jobs there are (of one status): O(1)."""
        with self._errors():
            return int(self.redis.zcard(self._index_key(status)))

    def ids(self, status: str) -> builtins.list[str]:
        """The ids of every job with this status, oldest first."""
        with self._errors():
            return [_text(i) for i in self.redis.zrange(self._index_key(status), 0, -1)]

    # submit and the outbox
    def submit(self, params: dict[str, Any], *, idempotency_key: str | None = None,
               request: str | None = None) -> tuple[Record, bool]:
        """Store a new queued job, or with a key seen before, find the job it made; (record, new?).

        The record, its indexes, its outbox entry and the key are written in one transaction.
        ``request``: the fingerprint of the request as the client sent it (default: of ``params``).
        Raises ``IdempotencyConflict`` when the key was used with other parameters.
        """
        request = fingerprint(params) if request is None else request
        record = new_record(uuid.uuid4().hex, params, time.time())
        earlier = self.create([record], made=record["job_id"], fingerprint=request, idempotency_key=idempotency_key)
        if earlier is None:
            return record, True
        replayed = self.replayed_job(idempotency_key, request)
        return (replayed, False) if replayed is not None else self.submit(
            params, idempotency_key=idempotency_key, request=request)

    def replayed_job(self, idempotency_key: str | None, request: str) -> Record | None:
        """The job a key seen before made for this request (``IdempotencyConflict``: for another); None: a new one.

        Asked before anything else about a request, so that a retry gets its job whatever changed
        since (an alias moved, a model deleted, the queue filled up).
        """
        earlier = self.earlier(idempotency_key, request)
        if earlier is None:
            return None
        try:
            return self.get(earlier)
        except JobNotFound:  # the job was deleted since: the key made it, so it is gone too
            self.forget_idempotency_key(idempotency_key)
            return None

    def earlier(self, idempotency_key: str | None, request: str) -> str | None:
        """The id (a job's or a sweep's) a key seen before stands for, None for a new key.

        Raises ``IdempotencyConflict`` when the key was used for a request with another fingerprint.
        """
        if not idempotency_key:
            return None
        with self._errors():
            seen = self.redis.get(self._idempotency_key(idempotency_key))
        return None if seen is None else _same_request(_text(seen), request)

    def create(self, records: builtins.list[Record], *, made: str, fingerprint: str,
               idempotency_key: str | None = None, also: Callable[[Pipeline], object] | None = None) -> str | None:
        """Write new queued jobs, each with its indexes and outbox entry, in one transaction; None once written.

        With ``idempotency_key``, the key is stored in the same transaction as standing for ``made``
        (a job's id, or a sweep's); a key seen before writes nothing and answers the id it stands for.
        Raises ``IdempotencyConflict`` when that key was used with another ``fingerprint``. ``also``
        adds the caller's commands (a sweep's record) to the transaction: all or nothing.
        """
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
            for record in records:
                job_id, now = record["job_id"], record["created_at"]
                pipe.set(self._job_key(job_id), json.dumps(record))
                pipe.zadd(self._index_key(), {job_id: now})
                pipe.zadd(self._index_key("queued"), {job_id: now})
                pipe.zadd(self._outbox_key, {job_id: now})
            if also is not None:
                also(pipe)
            if idem is not None:
                pipe.set(idem, f"{made} {fingerprint}", ex=self.IDEMPOTENCY_TTL_S)

        with self._errors():
            if idem is None:
                self.redis.transaction(transaction)
            else:
                self.redis.transaction(transaction, idem)
        return None if earlier is None else _same_request(earlier, fingerprint)

    def forget_idempotency_key(self, idempotency_key: str | None) -> None:
        """Drop a key whose job (or sweep) was deleted: a retry with it makes a new one."""
        if idempotency_key:
            with self._errors():
                self.redis.delete(self._idempotency_key(idempotency_key))

    def published(self, job_id: str, task_id: str) -> Record:
        """The job's task is on the broker: note its id and take the job out of the outbox."""
        return self.update(job_id, lambda r: lifecycle.published(r, task_id=task_id),
                           also=lambda pipe, _: pipe.zrem(self._outbox_key, job_id))[0]

    def pending_publish(self, older_than: float) -> builtins.list[str]:
        """Ids in the outbox for at least ``older_than`` seconds (their publish may have been lost)."""
        with self._errors():
            ids = self.redis.zrangebyscore(self._outbox_key, "-inf", time.time() - older_than)
        return [_text(i) for i in ids]

    def drop_from_outbox(self, job_id: str) -> None:
        with self._errors():
            self.redis.zrem(self._outbox_key, job_id)

    # deletion
    def delete_unless_running(self, job_id: str) -> None:
        """Delete a job that is not running (``DELETE /jobs/{id}``): its record, events and every index entry.

        Raises ``JobRunning`` for a running job: its worker would go on writing to it.
        """

        def transaction(pipe: Pipeline) -> None:
            raw = pipe.get(self._job_key(job_id))
            if raw is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            record = load_record(raw, job_id)
            if record["status"] == "running":
                raise JobRunning(f"job {job_id} is running: cancel it first (POST /jobs/{job_id}/cancel), "
                                 "and delete it once it has ended")
            pipe.multi()
            self.queue_removal(pipe, job_id)
            # No event tells of a deletion: the note alone makes the streams that follow the job (or its
            # sweep, which may have ended with it) look again, and end.
            pipe.publish(EVENTS_CHANNEL, job_id)
            if record["sweep_id"] is not None:
                pipe.publish(EVENTS_CHANNEL, record["sweep_id"])

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
                    self.queue_removal(pipe, job_id)
                pipe.execute()
        return len(ids)

    def queue_removal(self, pipe: Pipeline, job_id: str) -> None:
        """Queue, in the caller's transaction, the removal of a job's record, events and index entries."""
        pipe.delete(self._job_key(job_id), self.events_key(job_id))
        pipe.zrem(self._index_key(), job_id)
        for status in STATUSES:
            pipe.zrem(self._index_key(status), job_id)
        pipe.zrem(self._expiry_key, job_id)
        pipe.zrem(self._outbox_key, job_id)

    # the atomic update: load, apply a transition, save
    def update(self, job_id: str, change: Callable[[Record], Record | None],
               also: Callable[[Pipeline, Record], object] | None = None) -> tuple[Record, bool]:
        """Apply ``change`` to the record atomically; (the record now, whether ``change`` changed it).

        ``change`` returns the new record, or None for no change. It may run more than once
        (when another writer got in first), so it must not have side effects; it may raise to
        abort. ``also`` adds commands to the same transaction when the record changes.
        """
        return self._apply(job_id, lambda r: _changed(change(r)), also)

    def _apply(self, job_id: str, step: Callable[[Record], tuple[Record | None, T]],
               also: Callable[[Pipeline, Record], object] | None = None) -> tuple[Record, T]:
        """``update`` for a transition that also answers something: (the record now, its answer)."""
        key = self._job_key(job_id)
        result: tuple[Record, T] | None = None

        def transaction(pipe: Pipeline) -> None:  # retried by redis-py while another writer gets in first
            nonlocal result
            raw = pipe.get(key)  # a watched pipeline answers at once
            if raw is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            old = load_record(raw, job_id)  # a malformed record raises here, before anything is written
            new, answer = step(load_record(raw, job_id))
            result = (old if new is None else new), answer
            if new is None:
                return
            events = job_events(old, new)
            ttl_ms = int(pipe.pttl(key)) if events else -1  # events expire with an expiring record
            pipe.multi()
            pipe.set(key, json.dumps(new))
            self._append_events(pipe, job_id, events, ttl_ms, sweep_id=new["sweep_id"])
            if new["status"] != old["status"]:
                pipe.zrem(self._index_key(old["status"]), job_id)
                pipe.zadd(self._index_key(new["status"]), {job_id: new["created_at"]})
                if new["status"] in TERMINAL and old["status"] not in TERMINAL:  # it ends here
                    _observe_duration(pipe, new)
                    if self.retention_s:
                        expires = (new["finished_at"] or time.time()) + self.retention_s
                        if new["sweep_id"] is None:
                            pipe.zadd(self._expiry_key, {job_id: expires})
                        else:  # the trial that ends last sets its sweep's time
                            pipe.zadd(self.sweep_expiry_key, {new["sweep_id"]: expires})
            if also is not None:
                also(pipe, new)

        with self._errors():
            self.redis.transaction(transaction, key)
        assert result is not None
        return result

    def _as_owner(self, job_id: str, worker: str, attempt: int | None,
                  step: Callable[[Record], Record | None]) -> tuple[Record, bool]:
        """The one path for a worker's writes: ``step`` applies only while ``worker`` (on ``attempt``) owns the job.

        (the record now, whether this wrote it): False means nothing was written, because the job
        is no longer this attempt's (or ``step`` had nothing to change).
        """
        return self.update(job_id, lambda r: lifecycle.as_owner(r, worker, attempt, step))

    # events
    def _append_events(
        self, pipe: Pipeline, job_id: str, events: builtins.list[tuple[JobEventType, dict[str, Any]]], ttl_ms: int,
        sweep_id: str | None = None,
    ) -> None:
        """Queue, in the caller's transaction, the events on the job's stream and a note on the channel.

        A sweep's trial also adds its ``epoch`` and ``status`` events, with its job id, to the sweep's stream.
        """
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
        trial_events = [(kind, {**data, "job_id": job_id}) for kind, data in events if kind != "progress"]
        if sweep_id is not None and trial_events:
            sweep_key = self.sweep_events_key(sweep_id)
            for kind, data in trial_events:
                pipe.xadd(sweep_key, {"type": kind, "data": json.dumps(data)}, maxlen=EVENTS_MAXLEN, approximate=True)
            pipe.expire(sweep_key, EVENTS_TTL_S)
            pipe.publish(EVENTS_CHANNEL, sweep_id)

    def snapshot(self, job_id: str) -> tuple[Record, str]:
        """The record and the id of the job's latest event, read together (``FIRST_EVENT_ID`` when none)."""
        with self._errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.get(self._job_key(job_id))
            pipe.xrevrange(self.events_key(job_id), count=1)
            raw, last = pipe.execute()
        if raw is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return load_record(raw, job_id), _text(last[0][0]) if last else FIRST_EVENT_ID

    def events_after(self, job_id: str, after: str, *, count: int | None = None) -> builtins.list[JobEvent]:
        """The job's events after the entry id ``after``, oldest first."""
        return self.stream_after(self.events_key(job_id), after, count=count)

    def stream_after(self, key: str, after: str, *, count: int | None = None) -> builtins.list[JobEvent]:
        """The events of stream ``key`` (a job's or a sweep's) after the entry id ``after``, oldest first."""
        with self._errors():
            entries: Any = self.redis.xrange(key, min=f"({after}", count=count)
        return [_event(entry_id, fields) for entry_id, fields in entries]

    def events_resumable(self, job_id: str, after: str) -> bool:
        """Whether every event after ``after`` is still stored (none was trimmed or expired).

        Trimming drops the oldest entries, and only once the stream holds ``EVENTS_MAXLEN``; an
        expired stream is gone as a whole. When unsure, the answer is no (the caller sends the
        whole record again).
        """
        return self.stream_resumable(self.events_key(job_id), after)

    def stream_resumable(self, key: str, after: str) -> bool:
        """``events_resumable`` for stream ``key`` (a job's or a sweep's)."""
        with self._errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.xlen(key)
            pipe.xrange(key, count=1)
            length, first = pipe.execute()
        if not first:
            return after == FIRST_EVENT_ID
        return length < EVENTS_MAXLEN or event_id_key(_text(first[0][0])) <= event_id_key(after)

    # the lifecycle (bnlenet.jobs.lifecycle), each transition applied atomically
    def request_cancel(self, job_id: str) -> Record:
        """Cancel a queued job at once; ask a running one to stop (the worker marks it cancelled)."""
        return self.update(job_id, lambda r: lifecycle.request_cancel(r, now=time.time()))[0]

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
        published: dict[str, Any] | None = None,
    ) -> Claim:
        """Mark the job running for this delivery, unless it should not run (``lifecycle.claim``).

        A malformed record is never run, and never left waiting for ever: it is failed, saying why.
        ``published``: the metadata of the job's checkpoint, when a delivery takes over a running job.
        """
        try:
            record, refusal = self._apply(job_id, lambda r: lifecycle.claim(
                r, worker=worker, pid=pid, task_id=task_id, max_attempts=max_attempts, stale_after=stale_after,
                owner_gone=owner_gone, now=time.time(), published=published))
        except JobNotFound:
            return Claim(False, None, "no such job")
        except MalformedJob as exc:
            return Claim(False, self._fail_malformed(job_id, str(exc)), "malformed record")
        return Claim(refusal is None, record, refusal or "")

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
            created = float(old["created_at"]) if is_number(old.get("created_at")) else now
            params: dict[str, Any] = old["params"] if isinstance(old.get("params"), dict) else {}
            bad = params_problems(params)
            params = {k: v for k, v in params.items() if k not in bad}  # what made it unreadable goes
            sweep_id = old.get("sweep_id") if isinstance(old.get("sweep_id"), str) else None
            record: Record = {**new_record(job_id, params, created, sweep_id), "status": "failed", "finished_at": now,
                              "error": reason}
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(key, json.dumps(record))
            for status in STATUSES:
                pipe.zrem(self._index_key(status), job_id)
            pipe.zadd(self._index_key("failed"), {job_id: created})
            pipe.zadd(self._index_key(), {job_id: created})
            # its watchers see it end
            self._append_events(pipe, job_id, [("status", dict(record))], -1, sweep_id=record["sweep_id"])
            pipe.execute()
        log.warning("job %s failed: %s", job_id, reason)
        return record

    def beat(
        self, job_id: str, *, worker: str, attempt: int | None = None, progress: dict[str, Any] | None = None
    ) -> tuple[bool, bool]:
        """Note that the job's worker is alive (and where it is): (cancel asked?, still owned?).

        A worker that no longer owns the job (it was declared lost and requeued, or it ended)
        must stop: nothing it writes counts any more, and it must publish nothing.
        """
        record, owned = self._as_owner(job_id, worker, attempt,
                                       lambda r: lifecycle.beat(r, progress=progress, now=time.time()))
        return bool(record["cancel_requested"]), owned

    def first_step(
        self, job_id: str, *, worker: str, attempt: int | None = None, at: float, progress: dict[str, Any]
    ) -> None:
        """Note when the job's first training step finished (written at once, not throttled)."""
        self._as_owner(job_id, worker, attempt,
                       lambda r: lifecycle.first_step(r, at=at, progress=progress, now=time.time()))

    def resumed(self, job_id: str, *, worker: str, attempt: int | None = None, epoch: int,
                history: builtins.list[dict[str, Any]]) -> bool:
        """The attempt continues from the training state of ``epoch`` (``lifecycle.resumed``); whether it still owns the job."""
        return self._as_owner(job_id, worker, attempt,
                              lambda r: lifecycle.resumed(r, epoch=epoch, history=history, now=time.time()))[1]

    def add_epoch(
        self, job_id: str, *, worker: str, attempt: int | None = None, metrics: dict[str, Any],
        progress: dict[str, Any], saved_epoch: int | None = None,
    ) -> None:
        """Append one finished epoch's metrics to the job's history (and the epoch whose state the attempt saved)."""
        self._as_owner(job_id, worker, attempt, lambda r: lifecycle.add_epoch(
            r, metrics=metrics, progress=progress, now=time.time(), saved_epoch=saved_epoch))

    def finish(
        self, job_id: str, status: JobStatus, *, worker: str | None = None, attempt: int | None = None,
        model_id: str | None = None, error: str | None = None, device: str | None = None,
        final_test_acc: float | None = None, note: str | None = None, stopped_early: bool = False,
    ) -> Record | None:
        """Record how the job ended; with ``worker``, only while that worker (and ``attempt``) owns it.

        The ended record, or None when this changed nothing (it had ended, or is not ``worker``'s).
        """

        def end(r: Record) -> Record | None:
            return lifecycle.finish(r, status, now=time.time(), model_id=model_id, error=error, device=device,
                                    final_test_acc=final_test_acc, note=note, stopped_early=stopped_early)

        record, ended = self.update(job_id, end) if worker is None else self._as_owner(job_id, worker, attempt, end)
        return record if ended else None

    def reap(self, job_id: str, *, stale_after: float, max_attempts: int,
             published: dict[str, Any] | None = None) -> Record | None:
        """Requeue a running job whose worker vanished, or end it (``lifecycle.reap``).

        Returns the record when it went back to ``queued`` (the caller publishes a new task),
        else None. A requeued job goes into the outbox with its record: if the publish that
        follows is lost, the sweep publishes it.
        """

        def requeue(pipe: Pipeline, new: Record) -> None:
            if new["status"] == "queued":
                pipe.zadd(self._outbox_key, {job_id: time.time()})

        record, changed = self.update(job_id, lambda r: lifecycle.reap(
            r, stale_after=stale_after, max_attempts=max_attempts, published=published, now=time.time()), also=requeue)
        return record if changed and record["status"] == "queued" else None

    # workers
    def worker_seen(self, name: str) -> None:
        with self._errors():
            self.redis.zadd(self._workers_key, {name: time.time()})

    def live_workers(self, within: float) -> builtins.list[str]:
        """Workers seen in the last ``within`` seconds."""
        with self._errors():
            names = self.redis.zrangebyscore(self._workers_key, time.time() - within, "+inf")
        return sorted(_text(n) for n in names)


def _observe_duration(pipe: Pipeline, ended: Record) -> None:
    """How long a job that ran took, start to end, in the transaction that ends it: counted once,
    whoever ends it (its worker, the reaper, a claim that finds its attempts spent, a cancel)."""
    if ended["started_at"] is not None and ended["finished_at"] is not None:
        job_stats.JOB_DURATION.observe(pipe, ended["finished_at"] - ended["started_at"], ended["status"])


def _same_request(stored: str, request: str) -> str:
    """The id a stored key stands for (``<id> <fingerprint>``), if it was stored for ``request``."""
    earlier_id, _, earlier_fingerprint = stored.partition(" ")
    if earlier_fingerprint != request:
        raise IdempotencyConflict(
            "this Idempotency-Key was used for a request with other parameters; use a new key for a new request"
        )
    return earlier_id


def fingerprint(params: Any) -> str:
    """What an ``Idempotency-Key`` is checked against: a hash of the request's parameters."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _changed(new: Record | None) -> tuple[Record | None, bool]:
    return new, new is not None


def _event(entry_id: Any, fields: dict[Any, Any]) -> JobEvent:
    """A stream entry as Redis answers it (bytes) as a ``JobEvent``."""
    kind = _text(fields[b"type"])
    assert kind in ("progress", "epoch", "status")
    return JobEvent(_text(entry_id), kind, json.loads(fields[b"data"]))  # type: ignore[arg-type]


def _text(value: Any) -> str:
    """A Redis reply item as text (replies are bytes: the client does not decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)
