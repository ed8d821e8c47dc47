"""Worker fixtures: a job store on its own database of the session's real Redis."""

from __future__ import annotations

import pytest

from bnlenet.jobs import JobStore
from bnlenet.local.redis_server import RedisServer
from bnlenet.settings import Settings
from tests.conftest import empty_database

WORKER_DB = 10  # a database of its own on the shared test Redis, flushed before each test


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    url = empty_database(redis_server, WORKER_DB)
    return Settings(REDIS_URL=url, JOB_STALE_AFTER_S=0.2, MAX_ATTEMPTS=2)


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.from_url(settings.REDIS_URL)


def claim(store: JobStore, job_id: str, worker: str = "host:1", pid: int = 1) -> int:
    """Claim ``job_id`` for ``worker``; its attempt number."""
    c = store.claim(job_id, worker=worker, pid=pid, task_id="t", max_attempts=3, stale_after=30)
    assert c.run and c.record is not None
    return c.record["attempts"]
