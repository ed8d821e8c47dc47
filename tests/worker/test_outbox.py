"""The outbox, on a real Redis: a job stored but never confirmed on the broker is published by the workers' sweep.

This is what a crash between ``POST /train``'s two steps (store, then publish) leaves, or a
broker that refused the publish; and what the reaper leaves when its requeue publish fails.
"""

from __future__ import annotations

import time

import pytest
import redis

from bnlenet.jobs import JobStore
from bnlenet.local.redis_server import free_port
from bnlenet.settings import Settings
from bnlenet.training_queue import Publisher, queue_key
from tests.worker.conftest import claim
from worker.outbox import publish_outbox
from worker.reaper import reap_stale_jobs


def _queue(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.REDIS_URL).llen(queue_key(settings)))


@pytest.fixture
def publisher(settings: Settings):
    p = Publisher(settings)
    yield p
    p.close()


def test_outbox_publishes_a_job_whose_publish_was_lost(store: JobStore, settings: Settings, publisher) -> None:
    job_id = store.submit({})[0]["job_id"]  # the API stored it, then died before publishing
    settings = settings.model_copy(update={"OUTBOX_GRACE_S": 0.2})
    assert publish_outbox(store, publisher, settings) == []  # within the grace: the API may still publish
    time.sleep(0.3)
    assert publish_outbox(store, publisher, settings) == [job_id]
    assert _queue(settings) == 1 and store.get(job_id)["task_id"]
    assert publish_outbox(store, publisher, settings) == []  # confirmed: out of the outbox


def test_outbox_confirmed_publish_leaves_nothing_to_sweep(store: JobStore, settings: Settings, publisher) -> None:
    job_id = store.submit({})[0]["job_id"]
    store.published(job_id, publisher.publish(job_id))
    time.sleep(0.3)
    assert publish_outbox(store, publisher, settings.model_copy(update={"OUTBOX_GRACE_S": 0.2})) == []
    assert _queue(settings) == 1


def test_outbox_drops_jobs_that_ran_or_were_cancelled(store: JobStore, settings: Settings, publisher) -> None:
    ran = store.submit({})[0]["job_id"]
    cancelled = store.submit({})[0]["job_id"]
    claim(store, ran)  # its first publish did get through and a worker took it
    store.request_cancel(cancelled)
    time.sleep(0.3)
    assert publish_outbox(store, publisher, settings.model_copy(update={"OUTBOX_GRACE_S": 0.2})) == []
    assert _queue(settings) == 0 and store.pending_publish(0) == []


def test_outbox_takes_a_requeue_whose_publish_failed(store: JobStore, settings: Settings, publisher) -> None:
    job_id = store.submit({})[0]["job_id"]
    store.published(job_id, "t0")
    claim(store, job_id)
    time.sleep(0.3)
    dead_broker = Publisher(settings.model_copy(update={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}))
    assert reap_stale_jobs(store, dead_broker, settings) == [job_id]  # requeued, but the publish failed
    assert store.get(job_id)["status"] == "queued" and _queue(settings) == 0
    time.sleep(0.3)
    assert publish_outbox(store, publisher, settings.model_copy(update={"OUTBOX_GRACE_S": 0.2})) == [job_id]
    assert _queue(settings) == 1


def test_outbox_removes_the_training_state_of_a_job_cancelled_before_its_task_was_published(
        store: JobStore, settings: Settings, publisher, tmp_path) -> None:
    """A requeued job (with a saved state) whose publish failed, then cancelled: no claim will ever come to
    remove its state, so the sweep that drops it from the outbox does."""
    import torch

    from bnlenet.checkpoint_storage import LocalStorage
    from bnlenet.training_states import TrainingStates, state_name
    from models.train_state import TrainingState

    settings = settings.model_copy(update={"OUTBOX_GRACE_S": 0.0, "CHECKPOINT_DIR": str(tmp_path)})
    job_id = store.submit({})[0]["job_id"]
    store.published(job_id, "t0")
    attempt = claim(store, job_id)
    TrainingStates(LocalStorage(tmp_path)).save(job_id, attempt, {}, TrainingState(
        epoch=1, model={"w": torch.zeros(1)}, optimizer={}, rng={}, average_sums=None, average_count=0))
    time.sleep(0.3)
    down = Publisher(Settings(REDIS_URL="redis://127.0.0.1:1/0"))
    assert reap_stale_jobs(store, down, settings) == [job_id]  # requeued, its publish failed: in the outbox
    store.request_cancel(job_id)
    assert publish_outbox(store, publisher, settings) == []
    assert store.get(job_id)["status"] == "cancelled"
    assert not (tmp_path / state_name(job_id)).exists()  # "removed when the job ends (any final status)"
