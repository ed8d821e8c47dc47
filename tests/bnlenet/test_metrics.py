"""The scrape-time collector: job figures read from Redis, in O(1) commands."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bnlenet import job_stats
from bnlenet.jobs import JobStore, new_record
from bnlenet.local.redis_server import RedisServer
from bnlenet.metrics import JobStoreCollector, render
from tests.conftest import empty_database

METRICS_DB = 12


@pytest.fixture
def store(redis_server: RedisServer) -> JobStore:
    url = empty_database(redis_server, METRICS_DB)
    return JobStore.from_url(url)


def samples(store: JobStore) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = render([JobStoreCollector(store.redis, "celery:training")]).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_collector_job_histograms_epochs_throughput_and_workers(store: JobStore) -> None:
    job_id = store.submit({"variant": "scratch"})[0]["job_id"]
    claim = store.claim(job_id, worker="w:1", pid=1, task_id="t", max_attempts=3, stale_after=30)
    assert claim.run and claim.record is not None
    job_stats.job_started(store.redis, claim.record)  # what the worker reports as it runs the job
    job_stats.epoch_done(store.redis, variant="scratch", device="cpu", examples_per_sec=1234.5)
    job_stats.epoch_done(store.redis, variant="scratch", device="cpu", examples_per_sec=2000.0)
    store.finish(job_id, "succeeded", worker="w:1", attempt=1)  # the store observes its duration
    store.finish(job_id, "failed", worker="w:1", attempt=1)  # ended: not counted
    store.worker_seen("celery@a")
    got = samples(store)
    assert got[("bnlenet_jobs", (("status", "succeeded"),))] == 1
    assert got[("bnlenet_job_duration_seconds_count", (("status", "succeeded"),))] == 1
    assert got[("bnlenet_job_duration_seconds_bucket", (("le", "+Inf"), ("status", "succeeded")))] == 1
    assert got[("bnlenet_job_queue_wait_seconds_count", ())] == 1
    assert got[("bnlenet_training_epochs_total", ())] == 2
    assert got[("bnlenet_training_examples_per_second", (("device", "cpu"), ("variant", "scratch")))] == 2000.0
    assert got[("bnlenet_workers_seen", ())] == 1
    assert 0 <= got[("bnlenet_worker_last_seen_age_seconds", (("worker", "celery@a"),))] < 5


def test_metrics_scrape_under_50ms_with_100000_jobs(store: JobStore) -> None:
    now = time.time()
    pipe = store.redis.pipeline(transaction=False)
    for i in range(100_000):
        job_id = f"job{i:06d}"
        status = ("succeeded", "failed", "cancelled", "queued")[i % 4]
        pipe.set(f"bnlenet:job:{job_id}", json.dumps({**new_record(job_id, {}, now - i), "status": status}))
        pipe.zadd(JobStore.index_key(), {job_id: now - i})
        pipe.zadd(JobStore.index_key(status), {job_id: now - i})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    samples(store)  # warm: imports, connection
    times = []
    for _ in range(10):
        started = time.perf_counter()
        got = samples(store)
        times.append(time.perf_counter() - started)
    assert got[("bnlenet_jobs", (("status", "queued"),))] == 25_000
    assert sorted(times)[len(times) // 2] < 0.05, times


def test_metrics_job_duration_counts_every_job_that_ran_however_it_ended(store: JobStore) -> None:
    # Ended by its worker, by the reaper after its attempts ran out, and by a claim that found them spent.
    ended_by_worker = store.submit({})[0]["job_id"]
    assert store.claim(ended_by_worker, worker="w:1", pid=1, task_id="t", max_attempts=3, stale_after=30).run
    store.finish(ended_by_worker, "succeeded", worker="w:1", attempt=1)
    reaped = store.submit({})[0]["job_id"]
    assert store.claim(reaped, worker="w:1", pid=1, task_id="t", max_attempts=1, stale_after=30).run
    time.sleep(0.2)
    store.reap(reaped, stale_after=0.1, max_attempts=1)  # its worker went silent, its one attempt spent
    assert store.get(reaped)["status"] == "failed"
    store.finish(ended_by_worker, "failed", worker="w:1", attempt=1)  # ended already: not counted again
    got = samples(store)
    assert got[("bnlenet_job_duration_seconds_count", (("status", "succeeded"),))] == 1
    assert got[("bnlenet_job_duration_seconds_count", (("status", "failed"),))] == 1
