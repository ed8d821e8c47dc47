"""Sweeps in Redis: a sweep's record beside its trials' job records, created and removed together.

Keys (the job store's prefix, ``bnlenet.jobs.store``):

- ``bnlenet:sweep:<id>``: the record, a JSON object (``bnlenet.sweeps.record.SweepRecord``);
- ``bnlenet:sweeps:all``: a sorted set of sweep ids scored by creation time;
- ``bnlenet:sweep:<id>:events``: its trials' ``epoch`` and ``status`` events, appended by the job
  store in the same transaction as each trial's own (``JobStore.sweep_events_key``).

A sweep and all its trial jobs (records, indexes, outbox entries, the ``Idempotency-Key``) are
written in one transaction through ``JobStore.create``: a failure leaves nothing, and a stored
sweep's trials are all published (now, or by the outbox sweep). Each trial runs as a job does,
exactly once; the sweep's status is derived from its trials', never stored.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from typing import Any

from redis.client import Pipeline

from bnlenet.jobs import (
    FIRST_EVENT_ID,
    TERMINAL,
    JobEvent,
    JobFinished,
    JobNotFound,
    JobRecord,
    JobStore,
    load_record,
    new_record,
)
from bnlenet.jobs.errors import MalformedJob
from bnlenet.jobs.store import fingerprint
from bnlenet.sweeps.errors import SweepNotFound, SweepRunning
from bnlenet.sweeps.record import SweepRecord, TrialRef, load_sweep, new_sweep
from bnlenet.sweeps.spec import SweepSpec, expand, setting_of, trial_params

__all__ = ["SweepStore"]

_PREFIX = "bnlenet"


class SweepStore:
    """Sweep records in Redis beside the job store they share a connection with."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs, self.redis = jobs, jobs.redis

    @staticmethod
    def key(sweep_id: str) -> str:
        return f"{_PREFIX}:sweep:{sweep_id}"

    index_key = f"{_PREFIX}:sweeps:all"

    def create(self, spec: SweepSpec, *, idempotency_key: str | None = None,
               resolve: dict[str, dict[Any, Any]] | None = None) -> tuple[SweepRecord, bool]:
        """Store the sweep and every trial's queued job at once; (record, new?).

        ``resolve`` maps a parameter's values to what the jobs store (an alias to a model id).
        With an ``Idempotency-Key`` seen before for the same request, nothing is written and the
        sweep it made is answered.
        """
        now = time.time()
        sweep_id = "sw-" + uuid.uuid4().hex[:16]
        jobs: list[JobRecord] = []
        refs: list[TrialRef] = []
        for swept in expand(spec):
            params = trial_params(spec, swept)
            for name, table in (resolve or {}).items():
                if params.get(name) in table:
                    params[name] = table[params[name]]
            job = new_record(uuid.uuid4().hex, params, now, sweep_id)
            jobs.append(job)
            refs.append({"job_id": job["job_id"], "params": swept, "setting": setting_of(swept)})
        record = new_sweep(sweep_id, spec.as_dict(), refs, now)

        def also(pipe: Pipeline) -> None:
            pipe.set(self.key(sweep_id), json.dumps(record))
            pipe.zadd(self.index_key, {sweep_id: now})

        earlier = self.jobs.create(jobs, made=sweep_id, fingerprint=self.request(spec),
                                   idempotency_key=idempotency_key, also=also)
        if earlier is None:
            return record, True
        replayed = self.replayed(idempotency_key, spec)
        return (replayed, False) if replayed is not None else self.create(
            spec, idempotency_key=idempotency_key, resolve=resolve)

    @staticmethod
    def request(spec: SweepSpec) -> str:
        """The fingerprint of a sweep request, as its ``Idempotency-Key`` stands for it."""
        return fingerprint({"sweep": spec.as_dict()})

    def replayed(self, idempotency_key: str | None, spec: SweepSpec) -> SweepRecord | None:
        """The sweep a key seen before made for this request (``IdempotencyConflict``: for another); None: new."""
        earlier = self.jobs.earlier(idempotency_key, self.request(spec))
        if earlier is None:
            return None
        try:
            return self.get(earlier)
        except SweepNotFound:  # deleted since: the key made it, so it is gone too
            self.jobs.forget_idempotency_key(idempotency_key)
            return None

    def get(self, sweep_id: str) -> SweepRecord:
        with self.jobs.errors():
            raw = self.redis.get(self.key(sweep_id))
        if raw is None:
            raise SweepNotFound(f"no sweep with id {sweep_id!r}")
        return load_sweep(raw)

    def list(self, *, offset: int = 0, limit: int = 50) -> tuple[builtins.list[SweepRecord], int]:
        """Sweeps newest first, and how many there are."""
        with self.jobs.errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(self.index_key)
            pipe.zrevrange(self.index_key, offset, offset + limit - 1)
            total, ids = pipe.execute()
            raws = self.redis.mget([self.key(_text(i)) for i in ids]) if ids else []
        return [load_sweep(raw) for raw in raws if raw is not None], int(total)

    def trials(self, record: SweepRecord) -> builtins.list[JobRecord | None]:
        """The trials' job records, in the sweep's order (None: deleted, or unreadable)."""
        refs = record["trials"]
        if not refs:
            return []
        with self.jobs.errors():
            raws = self.redis.mget([self.jobs.job_key(t["job_id"]) for t in refs])
        out: builtins.list[JobRecord | None] = []
        for ref, raw in zip(refs, raws, strict=True):
            try:
                out.append(None if raw is None else load_record(raw, ref["job_id"]))
            except MalformedJob:
                out.append(None)
        return out

    def request_cancel(self, sweep_id: str) -> SweepRecord:
        """Mark the sweep cancelled and cancel each trial that has not ended (queued at once, running soon)."""
        key = self.key(sweep_id)
        changed: SweepRecord | None = None

        def transaction(pipe: Pipeline) -> None:
            nonlocal changed
            raw = pipe.get(key)
            if raw is None:
                raise SweepNotFound(f"no sweep with id {sweep_id!r}")
            changed = {**load_sweep(raw), "cancel_requested": True}
            pipe.multi()
            pipe.set(key, json.dumps(changed))

        with self.jobs.errors():
            self.redis.transaction(transaction, key)
        assert changed is not None
        for ref in changed["trials"]:
            try:
                self.jobs.request_cancel(ref["job_id"])
            except (JobFinished, JobNotFound, MalformedJob):
                continue  # ended (or went) already
        return changed

    def delete(self, sweep_id: str) -> builtins.list[str]:
        """Delete a sweep that is not running, with its trials' jobs (their models stay); the job ids removed.

        Raises ``SweepRunning`` while any trial is running: its worker would go on writing.
        """
        key = self.key(sweep_id)
        removed: builtins.list[str] = []

        def transaction(pipe: Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None:
                raise SweepNotFound(f"no sweep with id {sweep_id!r}")
            record = load_sweep(raw)
            ids = [t["job_id"] for t in record["trials"]]
            pipe.watch(*[self.jobs.job_key(i) for i in ids])  # type: ignore[no-untyped-call]
            running = [i for i, j in zip(ids, self.trials(record), strict=True)
                       if j is not None and j["status"] not in TERMINAL]
            if running:
                raise SweepRunning(f"sweep {sweep_id} has {len(running)} trial(s) not ended: cancel it first "
                                   f"(POST /sweeps/{sweep_id}/cancel), and delete it once they have ended")
            pipe.multi()
            pipe.delete(key, JobStore.sweep_events_key(sweep_id))
            pipe.zrem(self.index_key, sweep_id)
            pipe.zrem(JobStore.sweep_expiry_key, sweep_id)
            for job_id in ids:
                self.jobs.queue_removal(pipe, job_id)
            removed[:] = ids

        with self.jobs.errors():
            self.redis.transaction(transaction, key)
        return removed

    def expire(self, *, now: float | None = None, batch: int = 100) -> int:
        """Delete the sweeps (with their trials' jobs) whose last trial ended a retention ago; how many went."""
        now = time.time() if now is None else now
        with self.jobs.errors():
            due = [_text(i) for i in self.redis.zrangebyscore(JobStore.sweep_expiry_key, "-inf", now, start=0,
                                                                 num=batch)]
        gone = 0
        for sweep_id in due:
            try:
                self.delete(sweep_id)
                gone += 1
            except SweepNotFound:  # deleted meanwhile
                with self.jobs.errors():
                    self.redis.zrem(JobStore.sweep_expiry_key, sweep_id)
            except SweepRunning:  # a trial has not ended (requeued, say): its end sets the time again
                with self.jobs.errors():
                    self.redis.zadd(JobStore.sweep_expiry_key, {sweep_id: now + (self.jobs.retention_s or 0)})
        return gone

    # events: the trials' events in one stream
    def snapshot(self, sweep_id: str) -> tuple[SweepRecord, builtins.list[JobRecord | None], str]:
        """The record, its trials and the id of the sweep's latest event (read just before the record)."""
        with self.jobs.errors():
            last = self.redis.xrevrange(JobStore.sweep_events_key(sweep_id), count=1)
        record = self.get(sweep_id)
        return record, self.trials(record), _text(last[0][0]) if last else FIRST_EVENT_ID

    def events_after(self, sweep_id: str, after: str, *, count: int | None = None) -> builtins.list[JobEvent]:
        return self.jobs.stream_after(JobStore.sweep_events_key(sweep_id), after, count=count)

    def events_resumable(self, sweep_id: str, after: str) -> bool:
        return self.jobs.stream_resumable(JobStore.sweep_events_key(sweep_id), after)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
