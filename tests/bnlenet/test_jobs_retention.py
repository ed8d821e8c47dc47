"""Finished jobs expire after the retention, with their index entries; unfinished ones never do."""

from __future__ import annotations

import time

import pytest
import redis

from bnlenet.jobs import JobStore
from bnlenet.local.redis_server import RedisServer
from tests.conftest import empty_database

RETENTION_DB = 14


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    url = empty_database(redis_server, RETENTION_DB)
    return url


def test_jobs_expire_after_retention_with_their_index_entries(url: str) -> None:
    store = JobStore.from_url(url, retention_s=0.3)
    done = store.submit({})[0]["job_id"]
    store.request_cancel(done)  # queued -> cancelled: finished now
    waiting = store.submit({})[0]["job_id"]
    running = store.submit({})[0]["job_id"]
    store.claim(running, worker="w:1", pid=1, task_id="t", max_attempts=3, stale_after=30)
    assert store.expire() == 0  # not yet
    time.sleep(0.4)
    assert store.expire() == 1
    assert {r["job_id"] for r in store.list()[0]} == {waiting, running}
    assert store.list()[1] == 2 and store.count("cancelled") == 0
    client = redis.Redis.from_url(url)
    assert not client.exists(f"bnlenet:job:{done}")
    assert all(client.zscore(k, done) is None for k in client.keys("bnlenet:jobs:*"))
    store.finish(running, "succeeded", worker="w:1", attempt=1)
    time.sleep(0.4)
    assert store.expire() == 1 and store.list()[1] == 1


def test_jobs_retention_zero_keeps_them(url: str) -> None:
    store = JobStore.from_url(url, retention_s=0)
    job_id = store.submit({})[0]["job_id"]
    store.request_cancel(job_id)
    assert store.expire(now=time.time() + 10 * 365 * 86400) == 0
    assert store.get(job_id)["status"] == "cancelled"
