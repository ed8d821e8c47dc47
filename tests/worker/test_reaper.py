"""The stale-job reaper, on a real Redis: silent jobs are requeued and published, or failed."""

from __future__ import annotations

import time

import redis

from bnlenet.jobs import JobStore
from bnlenet.settings import Settings
from bnlenet.training_queue import Publisher, queue_key
from tests.worker.conftest import claim
from worker.housekeeping import reap_stale_jobs


def test_reaper_requeues_a_silent_job_and_publishes_a_new_task(store: JobStore, settings: Settings) -> None:
    silent = store.create({})["job_id"]
    live = store.create({})["job_id"]
    claim(store, silent)
    time.sleep(0.3)
    claim(store, live)  # claimed just now: fresh
    publisher = Publisher(settings)
    try:
        assert reap_stale_jobs(store, publisher, settings) == [silent]
    finally:
        publisher.close()
    record = store.get(silent)
    assert record["status"] == "queued" and "requeued" in (record["note"] or "")
    assert record["task_id"] != "t"  # the new task's id
    assert store.get(live)["status"] == "running"
    assert redis.Redis.from_url(settings.REDIS_URL).llen(queue_key(settings)) == 1


def test_reaper_fails_a_job_out_of_attempts(store: JobStore, settings: Settings) -> None:
    job_id = store.create({})["job_id"]
    for _ in range(settings.MAX_ATTEMPTS):
        claim(store, job_id)
        time.sleep(0.3)
        reap_stale_jobs(store, Publisher(settings), settings)
    record = store.get(job_id)
    assert record["status"] == "failed" and f"lost {settings.MAX_ATTEMPTS} time" in (record["error"] or "")


def test_reaper_survives_a_queue_that_is_down(store: JobStore, settings: Settings) -> None:
    """The sweep goes on without raising; the job is queued in the store but has no new task yet
    (a reconciler that republishes such jobs is not built: see the README's Reliability notes)."""
    job_id = store.create({})["job_id"]
    claim(store, job_id)
    time.sleep(0.3)
    down = Publisher(Settings(REDIS_URL="redis://127.0.0.1:1/0"))
    assert reap_stale_jobs(store, down, settings) == []
    assert store.get(job_id)["status"] == "queued"
