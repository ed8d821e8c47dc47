"""Figures about jobs kept in Redis for the metrics collector, written as jobs start, train and end.

The worker, which starts and trains a job, reports those figures here (``job_started``,
``epoch_done``), best effort (a lost figure never fails a job). A job's duration is observed by
the job store itself, in the transaction that ends the job (``JOB_DURATION``), since the reaper,
a claim or a cancel may end it as well as its worker. ``bnlenet.metrics.JobStoreCollector`` reads
them at scrape time.

The figures must add up over every worker and survive their restarts, so they live in Redis,
each in a key of fixed size (one write per event, one read per scrape, whatever the history):

- ``bnlenet:stats:hist:<name>``: a histogram as a hash: one field per bucket (the count of
  observations that fell in it, not cumulative), plus ``sum`` and ``count``; with a label,
  ``<label>|<bucket>``;
- ``bnlenet:stats:epochs``: the number of training epochs finished, a counter;
- ``bnlenet:stats:examples_per_sec``: a hash of ``<variant>|<device>`` to the examples/sec of
  the latest epoch trained with that variant on that device.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from bnlenet.jobs import JobRecord

__all__ = [
    "EPOCHS_KEY",
    "JOB_DURATION",
    "QUEUE_WAIT",
    "THROUGHPUT_KEY",
    "Histogram",
    "cumulative",
    "epoch_done",
    "job_started",
]

_PREFIX = "bnlenet:stats"
EPOCHS_KEY = f"{_PREFIX}:epochs"
THROUGHPUT_KEY = f"{_PREFIX}:examples_per_sec"


class Histogram:
    """A Prometheus-style histogram whose counts live in one Redis hash."""

    def __init__(self, name: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.key = f"{_PREFIX}:hist:{name}"
        self.buckets = tuple(sorted(buckets))  # upper bounds; +Inf is implied

    def bucket_of(self, value: float) -> str:
        i = bisect.bisect_left(self.buckets, value)
        return "+Inf" if i == len(self.buckets) else _float_text(self.buckets[i])

    def observe(self, pipe: redis.Redis | Any, value: float, label: str = "") -> None:
        """Queue the writes for one observation on ``pipe`` (a pipeline or a client)."""
        if not math.isfinite(value):
            return
        value = max(0.0, value)
        prefix = f"{label}|" if label else ""
        pipe.hincrby(self.key, prefix + self.bucket_of(value), 1)
        pipe.hincrby(self.key, prefix + "count", 1)
        pipe.hincrbyfloat(self.key, prefix + "sum", value)


def cumulative(hist: Histogram, raw: Mapping[Any, Any]) -> dict[str, tuple[list[tuple[str, float]], float]]:
    """The hash as Prometheus wants it: per label, cumulative ``(le, count)`` buckets and the sum."""
    per_label: dict[str, dict[str, float]] = {}
    for field, value in raw.items():
        text = field.decode() if isinstance(field, bytes) else str(field)
        label, _, name = text.rpartition("|")
        per_label.setdefault(label, {})[name] = float(value)
    out: dict[str, tuple[list[tuple[str, float]], float]] = {}
    for label, fields in per_label.items():
        running = 0.0
        rows = []
        for le in [*(_float_text(b) for b in hist.buckets), "+Inf"]:
            running += fields.get(le, 0.0)
            rows.append((le, running))
        out[label] = (rows, fields.get("sum", 0.0))
    return out


def _float_text(value: float) -> str:
    return repr(float(value))


# From a second to a few hours: a job trains for seconds on a GPU, hours at worst on a CPU.
JOB_DURATION = Histogram("job_duration_seconds", (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400))
# From milliseconds (an idle worker) to hours (a long queue).
QUEUE_WAIT = Histogram("job_queue_wait_seconds", (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))


def job_started(client: redis.Redis, record: JobRecord) -> None:
    """A job's first attempt started: how long it waited in the queue (later attempts do not count)."""
    if record["attempts"] == 1 and record["started_at"] is not None:
        _observe(client, QUEUE_WAIT, record["started_at"] - record["created_at"])


def epoch_done(client: redis.Redis, *, variant: str, device: str, examples_per_sec: float) -> None:
    """Count a finished epoch and keep its throughput as the latest for its variant and device."""
    try:
        pipe = client.pipeline(transaction=False)
        pipe.incr(EPOCHS_KEY)
        pipe.hset(THROUGHPUT_KEY, f"{variant}|{device}", examples_per_sec)
        pipe.execute()
    except redis.RedisError:
        pass


def _observe(client: redis.Redis, hist: Histogram, value: float, label: str = "") -> None:
    try:
        pipe = client.pipeline(transaction=False)
        hist.observe(pipe, value, label)
        pipe.execute()
    except redis.RedisError:
        pass
