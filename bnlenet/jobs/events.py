"""A job's events: what a watcher is told about each change of the record, and the ids that order them.

Each job has a Redis Stream of events (``JobStore.events_key``), appended in the same
transaction as the change they describe; ``EVENTS_CHANNEL`` names a job whenever its stream grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bnlenet.jobs.record import JobRecord

__all__ = [
    "EVENTS_CHANNEL", "EVENTS_MAXLEN", "EVENTS_TTL_S", "FIRST_EVENT_ID", "JobEvent", "JobEventType",
    "event_id_key", "job_events",
]

EVENTS_CHANNEL = "bnlenet:job-events"  # pub/sub: each message is the id of a job whose events grew
EVENTS_MAXLEN = 1000  # entries kept per job (approximately: Redis trims whole nodes)
EVENTS_TTL_S = 7 * 24 * 3600  # how long a job's events outlive its last one, when its record does not expire
FIRST_EVENT_ID = "0-0"  # the position before a job's first event
JobEventType = Literal["progress", "epoch", "status"]


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


def job_events(old: JobRecord, new: JobRecord) -> list[tuple[JobEventType, dict[str, Any]]]:
    """What a watcher should be told about the change from ``old`` to ``new`` (heartbeats alone: nothing)."""
    watched = ("status", "attempts", "worker", "cancel_requested", "note")
    if any(new[f] != old[f] for f in watched):  # type: ignore[literal-required]
        return [("status", dict(new))]
    events: list[tuple[JobEventType, dict[str, Any]]] = []
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

