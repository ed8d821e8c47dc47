"""Prometheus metrics: what each API process counts, and what a scrape reads from Redis.

Two kinds of figures:

- **Counted in the process** (HTTP requests, predictions, the model cache): prometheus_client
  counters and histograms. With several API processes (``uvicorn --workers N``) they use
  prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` names an empty directory,
  set before the processes start (``bnlenet up`` and the container's entry point make and
  empty it), each process writes its figures there, and a scrape of any process adds them up.
- **Read at scrape time** (jobs by status, queue length, job histograms, throughput,
  workers): ``JobStoreCollector`` reads them from Redis with a fixed number of O(1) or
  O(log N) commands in one round trip, so a scrape costs the same with 100 or 100,000 jobs
  and never waits on a worker.

Names follow Prometheus' conventions: the ``bnlenet_`` prefix, base units, ``_total``
counters, ``_seconds`` histograms.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from bnlenet import job_stats
from bnlenet.jobs import STATUSES

__all__ = [
    "CONTENT_TYPE",
    "HTTP_DURATION",
    "HTTP_REQUESTS",
    "MODEL_CACHE",
    "MODEL_LOAD_SECONDS",
    "MULTIPROC_ENV",
    "PREDICT_DURATION",
    "PREDICT_REQUESTS",
    "BuildInfoCollector",
    "JobStoreCollector",
    "prepare_multiproc_dir",
    "render",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latencies of a fast API: /predict answers in about a millisecond.
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "bnlenet_http_requests", "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "bnlenet_http_request_duration_seconds", "Time to answer an HTTP request, by method and route template",
    ["method", "route"], buckets=_FAST,
)
PREDICT_REQUESTS = Counter(
    "bnlenet_predict_requests", "POST /predict calls by model variant and outcome (ok, client_error, error)",
    ["variant", "outcome"],
)
PREDICT_DURATION = Histogram(
    "bnlenet_predict_duration_seconds",
    "POST /predict time by phase: decode (read and decode the input), inference (the forward pass), "
    "other (the rest: model lookup, the answer)",
    ["phase"], buckets=_FAST,
)
MODEL_CACHE = Counter(
    "bnlenet_model_cache_requests", "Model lookups when serving: hit (in this process's cache) or miss",
    ["result"],
)
MODEL_LOADS = Counter("bnlenet_model_loads", "Checkpoints loaded into an API process's cache, by outcome",
                      ["outcome"])
MODEL_LOAD_SECONDS = Histogram("bnlenet_model_load_duration_seconds", "Time to load a checkpoint for serving",
                               buckets=_FAST)

WORKER_WINDOW_S = 20.0  # a worker announces itself every few seconds; silent this long, it is gone
WORKER_AGE_LIMIT_S = 24 * 3600.0  # workers silent for longer are not reported at all


def prepare_multiproc_dir(directory: str | os.PathLike[str]) -> Path:
    """Make ``directory`` exist and empty it: figures of a previous run must not add to this one's."""
    path = Path(directory)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


class JobStoreCollector(Collector):
    """Figures about jobs, queue and workers, read from Redis at scrape time in one round trip."""

    def __init__(self, client: redis.Redis, queue_key: str) -> None:
        self.client, self.queue_key = client, queue_key

    def collect(self) -> Iterator[Metric]:
        from bnlenet.jobs import JobStore  # the store owns the key formats

        now = time.time()
        up = GaugeMetricFamily("bnlenet_job_store_up", "Whether Redis answered this scrape (1) or not (0)")
        try:
            pipe = self.client.pipeline(transaction=False)
            for status in STATUSES:
                pipe.zcard(JobStore.index_key(status))
            pipe.llen(self.queue_key)
            pipe.hgetall(job_stats.JOB_DURATION.key)
            pipe.hgetall(job_stats.QUEUE_WAIT.key)
            pipe.get(job_stats.EPOCHS_KEY)
            pipe.hgetall(job_stats.THROUGHPUT_KEY)
            pipe.zrangebyscore(JobStore.workers_key, now - WORKER_AGE_LIMIT_S, "+inf", withscores=True)
            replies = pipe.execute()
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        counts, rest = replies[: len(STATUSES)], replies[len(STATUSES):]
        queue_length, duration, wait, epochs, throughput, workers = rest

        jobs = GaugeMetricFamily("bnlenet_jobs", "Job records by status", labels=["status"])
        for status, count in zip(STATUSES, counts, strict=True):
            jobs.add_metric([status], int(count))
        yield jobs
        yield GaugeMetricFamily("bnlenet_queue_length", "Messages waiting in the training queue (the broker's list)",
                                value=int(queue_length))
        yield _histogram("bnlenet_job_duration_seconds", "Time from a job's start to its end, by final status",
                         job_stats.JOB_DURATION, duration, "status")
        yield _histogram("bnlenet_job_queue_wait_seconds", "Time from a job's creation to its first start",
                         job_stats.QUEUE_WAIT, wait, None)
        yield CounterMetricFamily("bnlenet_training_epochs", "Training epochs finished by all workers",
                                  value=int(epochs or 0))
        rate = GaugeMetricFamily("bnlenet_training_examples_per_second",
                                 "Training throughput of the latest epoch, by model variant and device",
                                 labels=["variant", "device"])
        for key, value in sorted(throughput.items()):
            variant, _, device = _text(key).partition("|")
            rate.add_metric([variant, device], float(value))
        yield rate
        seen = GaugeMetricFamily("bnlenet_workers_seen", f"Workers that announced themselves in the last "
                                 f"{WORKER_WINDOW_S:.0f} seconds")
        seen.add_metric([], sum(1 for _, at in workers if now - at <= WORKER_WINDOW_S))
        yield seen
        age = GaugeMetricFamily("bnlenet_worker_last_seen_age_seconds",
                                "Seconds since each worker last announced itself (workers seen in the last day)",
                                labels=["worker"])
        for name, at in workers:
            age.add_metric([_text(name)], max(0.0, now - at))
        yield age


def _histogram(name: str, documentation: str, hist: job_stats.Histogram, raw: Any,
               label: str | None) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label] if label else None)
    for value, (buckets, total) in sorted(job_stats.cumulative(hist, raw).items()):
        family.add_metric([value] if label else [], buckets, total)
    return family


class BuildInfoCollector(Collector):
    """``bnlenet_build_info``: the version, the torch version and the serving device, as labels."""

    def collect(self) -> Iterator[Metric]:
        import torch

        info = GaugeMetricFamily("bnlenet_build_info", "Build information (always 1)",
                                 labels=["version", "torch_version", "device"])
        try:
            version = metadata.version("bnlenet")
        except metadata.PackageNotFoundError:
            version = "unknown"
        # Without initializing CUDA: the API serves on the CPU; this says what the host has.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        info.add_metric([version, torch.__version__, device], 1)
        yield info


class _Of(Collector):
    """The metrics of an existing registry (the process's own, when not in multiprocess mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def render(extra: Iterable[Collector] = ()) -> bytes:
    """The whole exposition: this process's (or, in multiprocess mode, every process's) figures
    plus ``extra`` collectors, in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
    else:
        registry.register(_Of(REGISTRY))
    registry.register(BuildInfoCollector())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
