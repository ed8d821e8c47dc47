"""The job store's event streams: what each write appends, in order, and reading them back."""

from __future__ import annotations

import pytest
import redis

from bnlenet.jobs import EVENTS_CHANNEL, FIRST_EVENT_ID, JobStore, event_id_key
from bnlenet.local.redis_server import RedisServer
from tests.bnlenet.test_jobs import _claim
from tests.conftest import empty_database

EVENTS_DB = 11  # a database of its own on the shared test Redis, flushed before each test


@pytest.fixture
def store(redis_server: RedisServer) -> JobStore:
    url = empty_database(redis_server, EVENTS_DB)
    return JobStore.from_url(url)

METRICS = {"epoch": 1, "loss": 0.5, "train_acc": 0.8, "test_acc": 0.7, "examples_per_sec": 1000.0}


def _progress(batch: int) -> dict:
    return {"epoch": 1, "epochs": 2, "batch": batch, "batches": 10, "fraction": batch / 20, "loss": 1.0,
            "train_acc": 0.5}


def test_job_events_follow_a_run_in_order(store: JobStore) -> None:
    job = store.submit({"epochs": 2})[0]
    assert store.snapshot(job["job_id"])[1] == FIRST_EVENT_ID
    _claim(store, job["job_id"])
    store.beat(job["job_id"], worker="host:1")  # nothing new for a watcher
    store.first_step(job["job_id"], worker="host:1", at=1.0, progress=_progress(1))
    store.beat(job["job_id"], worker="host:1", progress=_progress(5))
    store.beat(job["job_id"], worker="host:1", progress=_progress(5))  # unchanged: nothing
    store.add_epoch(job["job_id"], worker="host:1", metrics=METRICS, progress=_progress(10))
    store.finish(job["job_id"], "succeeded", worker="host:1", model_id=job["job_id"])
    events = store.events_after(job["job_id"], FIRST_EVENT_ID)
    assert [e.type for e in events] == ["status", "progress", "progress", "epoch", "progress", "status"]
    assert events[0].data["status"] == "running" and events[-1].data["status"] == "succeeded"
    assert events[3].data == METRICS
    assert [e.data["progress"]["batch"] for e in events if e.type == "progress"] == [1, 5, 10]
    ids = [event_id_key(e.id) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    record, last = store.snapshot(job["job_id"])
    assert record["status"] == "succeeded" and last == events[-1].id
    assert [e.id for e in store.events_after(job["job_id"], events[2].id)] == [e.id for e in events[3:]]


def test_job_events_for_cancel_and_requeue(store: JobStore) -> None:
    queued = store.submit({})[0]
    store.request_cancel(queued["job_id"])
    assert [(e.type, e.data["status"]) for e in store.events_after(queued["job_id"], FIRST_EVENT_ID)] == [
        ("status", "cancelled")]
    job = store.submit({})[0]
    _claim(store, job["job_id"])
    store.update(job["job_id"], lambda r: {**r, "heartbeat_at": 0.0})
    assert store.reap(job["job_id"], stale_after=30, max_attempts=3) is not None
    events = store.events_after(job["job_id"], FIRST_EVENT_ID)
    assert [(e.type, e.data["status"]) for e in events] == [("status", "running"), ("status", "queued")]
    assert events[-1].data["note"].startswith("requeued")


def test_job_events_publish_the_job_id(store: JobStore) -> None:
    pubsub = store.redis.pubsub()
    pubsub.subscribe(EVENTS_CHANNEL)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    job = store.submit({})[0]
    store.request_cancel(job["job_id"])
    message = pubsub.get_message(timeout=2)
    pubsub.close()
    assert message is not None and message["data"] == job["job_id"].encode()


def test_job_events_expire_and_resume_checks(store: JobStore) -> None:
    job = store.submit({})[0]
    _claim(store, job["job_id"])
    key = store.events_key(job["job_id"])
    assert 0 < store.redis.ttl(key) <= 7 * 24 * 3600
    store.redis.expire(store._job_key(job["job_id"]), 100)  # a record that expires: its events follow it
    store.request_cancel(job["job_id"])
    assert 0 < store.redis.ttl(key) <= 100
    first = store.events_after(job["job_id"], FIRST_EVENT_ID)[0].id
    assert store.events_resumable(job["job_id"], FIRST_EVENT_ID)
    assert store.events_resumable(job["job_id"], first)
    redis.Redis.delete(store.redis, key)
    assert not store.events_resumable(job["job_id"], first)
    assert store.events_resumable(job["job_id"], FIRST_EVENT_ID)
