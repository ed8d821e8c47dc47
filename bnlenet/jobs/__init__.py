"""Training jobs, shared by the API and the worker: one module per concept.

- ``record``: the record (``JobRecord``), its statuses, reading a stored one, the stale rule;
- ``lifecycle``: the transitions (claim, beat, first step, epoch, finish, cancel, reap) as
  plain functions on a record;
- ``store``: ``JobStore``, the records in Redis (keys, transactions, submit with the outbox and
  idempotency, event streams, expiry, deletion, reads);
- ``events``: what a watcher is told about each change (``JobEvent``) and the ids that order them;
- ``errors``: what all of these raise, the tree in its docstring.

The public names are re-exported here: ``from bnlenet.jobs import JobStore``.
"""

from bnlenet.jobs import lifecycle
from bnlenet.jobs.errors import (
    IdempotencyConflict,
    JobFinished,
    JobNotFound,
    JobRunning,
    MalformedJob,
    StoreUnavailable,
)
from bnlenet.jobs.events import EVENTS_CHANNEL, FIRST_EVENT_ID, JobEvent, JobEventType, event_id_key, job_events
from bnlenet.jobs.record import (
    JOB_PARAMS,
    STATUSES,
    TERMINAL,
    AttemptRecord,
    JobRecord,
    JobStatus,
    is_stale,
    load_record,
    new_record,
    owned,
    params_problems,
)
from bnlenet.jobs.store import Claim, JobStore

__all__ = [
    "JOB_PARAMS",
    "EVENTS_CHANNEL",
    "FIRST_EVENT_ID",
    "STATUSES",
    "TERMINAL",
    "AttemptRecord",
    "Claim",
    "IdempotencyConflict",
    "JobEvent",
    "JobEventType",
    "JobFinished",
    "JobNotFound",
    "JobRecord",
    "JobRunning",
    "JobStatus",
    "JobStore",
    "MalformedJob",
    "StoreUnavailable",
    "event_id_key",
    "is_stale",
    "lifecycle",
    "job_events",
    "load_record",
    "new_record",
    "owned",
    "params_problems",
]
