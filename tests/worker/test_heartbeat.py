"""The job's heartbeat thread, on a real Redis: fresh heartbeats, progress, cancel, and fencing."""

from __future__ import annotations

import time

from bnlenet.jobs import JobStore
from tests.worker.conftest import claim
from worker.lease import Heartbeat


def _beat(store: JobStore, job_id: str, attempt: int, worker: str = "host:1") -> Heartbeat:
    return Heartbeat(store, job_id, worker=worker, attempt=attempt, interval=0.05, progress_interval=0.05, lease=1.0)


def test_heartbeat_keeps_the_record_fresh_and_writes_progress(store: JobStore) -> None:
    job_id = store.submit({})[0]["job_id"]
    attempt = claim(store, job_id)
    before = store.get(job_id)["heartbeat_at"]
    beat = _beat(store, job_id, attempt)
    beat.start()
    try:
        beat.progress = {"epoch": 1, "epochs": 2, "batch": 3, "batches": 10, "loss": 0.5, "train_acc": 0.8,
                         "fraction": 0.15}
        time.sleep(0.3)
    finally:
        beat.stop()
    record = store.get(job_id)
    assert record["heartbeat_at"] > before
    assert record["progress"] is not None and record["progress"]["batch"] == 3
    assert not beat.is_alive()


def test_heartbeat_turns_a_cancel_request_into_an_event(store: JobStore) -> None:
    job_id = store.submit({})[0]["job_id"]
    beat = _beat(store, job_id, claim(store, job_id))
    beat.start()
    try:
        assert not beat.cancel.wait(0.2)
        store.request_cancel(job_id)
        assert beat.cancel.wait(2)
    finally:
        beat.stop()


def test_heartbeat_of_an_old_attempt_never_writes(store: JobStore) -> None:
    """Fencing: the worker of attempt 1, declared dead and back, cannot touch attempt 2's record."""
    job_id = store.submit({})[0]["job_id"]
    first = claim(store, job_id)
    time.sleep(0.3)
    assert store.reap(job_id, stale_after=0.2, max_attempts=3) is not None  # requeued
    second = claim(store, job_id)  # the same worker name, a new attempt
    assert second == first + 1
    fresh = store.get(job_id)
    stale = _beat(store, job_id, first)
    stale.progress = {"epoch": 9}
    stale.beat()
    store.finish(job_id, "failed", worker="host:1", attempt=first, error="from the old attempt")
    record = store.get(job_id)
    assert record["status"] == "running" and record["error"] is None
    assert record["heartbeat_at"] == fresh["heartbeat_at"] and record["progress"] is None


def test_heartbeat_stops_quietly_when_redis_is_away(store: JobStore) -> None:
    job_id = store.submit({})[0]["job_id"]
    beat = _beat(store, job_id, claim(store, job_id))
    beat.store = JobStore.from_url("redis://127.0.0.1:1/0", timeout=0.2)  # nothing listens there
    beat.beat()  # logs and carries on; training must not stop because Redis blinked
    assert not beat.cancel.is_set()


def test_heartbeat_of_a_lost_attempt_stops_training(store: JobStore) -> None:
    """A worker frozen past the stale limit comes back: its first beat finds the job taken and stops it."""
    job_id = store.submit({})[0]["job_id"]
    first = claim(store, job_id)
    time.sleep(0.3)
    store.reap(job_id, stale_after=0.2, max_attempts=3)
    claim(store, job_id, worker="host:2")  # attempt 2 runs elsewhere
    stale = _beat(store, job_id, first)
    stale.beat()
    assert stale.lost.is_set() and stale.cancel.is_set()  # the training loop's stop signal


def test_heartbeat_lease_refuses_a_publish_after_the_job_was_lost(store: JobStore) -> None:
    import pytest

    from worker.lease import LostJob

    job_id = store.submit({})[0]["job_id"]
    first = claim(store, job_id)
    beat = _beat(store, job_id, first)
    beat.confirm_lease()  # owned, confirmed just now: publishing is allowed
    time.sleep(0.3)
    store.reap(job_id, stale_after=0.2, max_attempts=3)
    claim(store, job_id, worker="host:2")
    with pytest.raises(LostJob, match="no longer attempt"):
        beat.confirm_lease()


def test_heartbeat_lease_with_redis_away_lasts_only_its_length(store: JobStore) -> None:
    import pytest

    from worker.lease import LostJob

    job_id = store.submit({})[0]["job_id"]
    beat = _beat(store, job_id, claim(store, job_id))
    beat.store = JobStore.from_url("redis://127.0.0.1:1/0", timeout=0.2)
    beat.confirm_lease()  # the claim confirmed ownership under a second ago: still inside the lease
    beat.confirmed_at -= beat.lease + 0.1  # ... and now the last confirmation is older than the lease
    with pytest.raises(LostJob, match="lease"):
        beat.confirm_lease()
