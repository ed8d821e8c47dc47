"""The job store under the API: claims, attempts, heartbeats and the stale-job reaper, on a real Redis."""

from __future__ import annotations

import json
import time

import pytest

from bnlenet.jobs import JobFinished, JobStore, new_record
from bnlenet.local.redis_server import RedisServer
from tests.conftest import empty_database

JOBS_DB = 9  # a database of its own on the shared test Redis, flushed before each test


@pytest.fixture
def store(redis_server: RedisServer) -> JobStore:
    url = empty_database(redis_server, JOBS_DB)
    return JobStore.from_url(url)


def _claim(store, job_id, worker="host:1", **kw):
    return store.claim(job_id, worker=worker, pid=1, task_id="t", max_attempts=kw.pop("max_attempts", 3),
                       stale_after=kw.pop("stale_after", 30), **kw)


def test_job_store_claim_counts_attempts_and_skips_live_runs(store):
    job_id = store.submit({"epochs": 1})[0]["job_id"]
    first = _claim(store, job_id)
    assert first.run and first.record["attempts"] == 1 and first.record["status"] == "running"
    again = _claim(store, job_id, worker="host:2")
    assert not again.run and "live" in again.reason


def test_job_store_claim_takes_over_from_a_dead_owner(store):
    job_id = store.submit({})[0]["job_id"]
    _claim(store, job_id)
    second = _claim(store, job_id, worker="host:2", owner_gone=lambda r: True)
    assert second.run and second.record["attempts"] == 2 and second.record["worker"] == "host:2"


def test_job_store_claim_fails_the_job_after_max_attempts(store):
    job_id = store.submit({})[0]["job_id"]
    for i in range(3):
        assert _claim(store, job_id, worker=f"host:{i}", owner_gone=lambda r: True).run
    last = _claim(store, job_id, worker="host:9", owner_gone=lambda r: True)
    assert not last.run
    assert last.record["status"] == "failed"
    assert "lost 3 time" in last.record["error"]


def test_job_store_claim_skips_cancelled_and_finished_jobs(store):
    job_id = store.submit({})[0]["job_id"]
    store.request_cancel(job_id)
    claim = _claim(store, job_id)
    assert not claim.run and claim.record["status"] == "cancelled" and claim.record["attempts"] == 0
    with pytest.raises(JobFinished):
        store.request_cancel(job_id)


def test_job_store_reap_requeues_a_silent_running_job(store):
    job_id = store.submit({})[0]["job_id"]
    _claim(store, job_id)
    assert store.reap(job_id, stale_after=30, max_attempts=3) is None  # still fresh
    time.sleep(0.3)
    back = store.reap(job_id, stale_after=0.1, max_attempts=3)
    assert back is not None and back["status"] == "queued" and "requeued" in back["note"]
    records, total = store.list(status="queued")
    assert total == 1 and records[0]["job_id"] == job_id
    assert store.list(status="running")[1] == 0


def test_job_store_reap_fails_a_job_out_of_attempts(store):
    job_id = store.submit({})[0]["job_id"]
    _claim(store, job_id, max_attempts=1)
    time.sleep(0.3)
    assert store.reap(job_id, stale_after=0.1, max_attempts=1) is None
    job = store.get(job_id)
    assert job["status"] == "failed" and "lost 1 time" in job["error"]


def test_job_store_heartbeat_never_revives_a_finished_job(store):
    job_id = store.submit({})[0]["job_id"]
    _claim(store, job_id)
    store.finish(job_id, "succeeded", model_id=job_id)
    store.beat(job_id, worker="host:1", progress={"epoch": 1})
    job = store.get(job_id)
    assert job["status"] == "succeeded" and job["progress"] is None


# Records this code did not write (bit rot, a bad restore, another program): each is reported
# for its job alone, never breaks a listing, and a queued one is failed instead of left waiting.
MALFORMED = {
    "not-json": b"{this is not json",
    "no-status": b'{"job_id": "no-status", "params": {}, "attempts": 0, "created_at": 1.0, "history": []}',
    "null-params": b'{"job_id": "null-params", "status": "queued", "params": null, "attempts": 0, '
                   b'"created_at": 1.0, "history": []}',
    "string-attempts": b'{"job_id": "string-attempts", "status": "queued", "params": {}, "attempts": "x", '
                       b'"created_at": 1.0, "history": []}',
    "string-created": b'{"job_id": "string-created", "status": "queued", "params": {}, "attempts": 0, '
                      b'"created_at": "yesterday", "history": []}',
    # Well-formed records whose parameters are not what a job takes (an older version's bug, a hand edit).
    "evil-variant": json.dumps(new_record("evil-variant", {"variant": "evil", "epochs": 2}, 1.0)).encode(),
    "string-lr": json.dumps(new_record("string-lr", {"lr": "abc", "epochs": 2}, 1.0)).encode(),
}


def _plant(store: JobStore) -> None:
    for job_id, raw in MALFORMED.items():
        store.redis.set(f"bnlenet:job:{job_id}", raw)
        store.redis.zadd("bnlenet:jobs:all", {job_id: 2.0})
        store.redis.zadd("bnlenet:jobs:status:queued", {job_id: 2.0})


def test_job_store_malformed_records_leave_listings_whole(store):
    good = store.submit({"epochs": 1})[0]["job_id"]
    _plant(store)
    records, total = store.list()
    assert [r["job_id"] for r in records] == [good] and total == 1 + len(MALFORMED)
    records, _ = store.list(status="queued")
    assert [r["job_id"] for r in records] == [good]


@pytest.mark.parametrize("job_id", sorted(MALFORMED))
def test_job_store_malformed_record_is_reported_and_left_untouched(store, job_id):
    from bnlenet.jobs import MalformedJob

    _plant(store)
    with pytest.raises(MalformedJob, match=job_id):
        store.get(job_id)
    with pytest.raises(MalformedJob):
        store.request_cancel(job_id)  # nothing applied: the record and its indexes are as they were
    assert store.redis.get(f"bnlenet:job:{job_id}") == MALFORMED[job_id]
    assert store.redis.zscore("bnlenet:jobs:status:queued", job_id) == 2.0


@pytest.mark.parametrize("job_id", sorted(MALFORMED))
def test_job_store_claim_fails_a_malformed_job_instead_of_leaving_it(store, job_id):
    _plant(store)
    claim = _claim(store, job_id)
    assert not claim.run and claim.reason == "malformed record"
    record = store.get(job_id)
    assert record["status"] == "failed" and "malformed" in record["error"]
    assert store.redis.zscore("bnlenet:jobs:status:queued", job_id) is None
    assert store.redis.zscore("bnlenet:jobs:status:failed", job_id) is not None


@pytest.mark.parametrize(("job_id", "field"), [("evil-variant", "variant"), ("string-lr", "lr")])
def test_job_store_record_with_invalid_params_is_malformed_and_failed_with_the_reason(store, job_id, field):
    from bnlenet.jobs import MalformedJob

    _plant(store)
    with pytest.raises(MalformedJob, match=f"params.{field}"):
        store.get(job_id)
    claim = _claim(store, job_id)
    assert not claim.run and claim.reason == "malformed record"
    record = store.get(job_id)  # failed, and readable: the bad parameter is dropped, the rest kept
    assert record["status"] == "failed" and f"params.{field}" in record["error"]
    assert record["params"] == {"epochs": 2} and record["created_at"] == 1.0
