"""The stale-job reaper, on a real Redis: silent jobs are requeued and published, or failed."""

from __future__ import annotations

import time

import redis

from bnlenet.jobs import JobStore
from bnlenet.settings import Settings
from bnlenet.training_queue import Publisher, queue_key
from tests.worker.conftest import claim
from worker.reaper import reap_stale_jobs


def test_reaper_requeues_a_silent_job_and_publishes_a_new_task(store: JobStore, settings: Settings) -> None:
    silent = store.submit({})[0]["job_id"]
    live = store.submit({})[0]["job_id"]
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
    job_id = store.submit({})[0]["job_id"]
    for _ in range(settings.MAX_ATTEMPTS):
        claim(store, job_id)
        time.sleep(0.3)
        reap_stale_jobs(store, Publisher(settings), settings)
    record = store.get(job_id)
    assert record["status"] == "failed" and f"lost {settings.MAX_ATTEMPTS} time" in (record["error"] or "")


def test_reaper_survives_a_queue_that_is_down(store: JobStore, settings: Settings) -> None:
    """The sweep goes on without raising; the job is requeued in the store and waits in the
    outbox for its task (tests/worker/test_outbox.py shows the sweep publishing it)."""
    job_id = store.submit({})[0]["job_id"]
    store.published(job_id, "t0")
    claim(store, job_id)
    time.sleep(0.3)
    down = Publisher(Settings(REDIS_URL="redis://127.0.0.1:1/0"))
    assert reap_stale_jobs(store, down, settings) == [job_id]
    assert store.get(job_id)["status"] == "queued"
    assert store.pending_publish(0) == [job_id]


def test_reaper_records_the_success_of_a_published_model_instead_of_training_again(
    store: JobStore, settings: Settings, tmp_path
) -> None:
    """The worker published attempt 1's model, then vanished before writing the outcome."""
    import torch

    from bnlenet.model_store import ModelStore
    from models.lenet import build_lenet

    job_id = store.submit({})[0]["job_id"]
    attempt = claim(store, job_id)
    settings = settings.model_copy(update={"CHECKPOINT_DIR": tmp_path})
    torch.manual_seed(0)
    ModelStore(tmp_path).publish(job_id, build_lenet("builtin").eval(),
                                 {"variant": "builtin", "job_id": job_id, "attempt": attempt, "final_test_acc": 0.8})
    time.sleep(0.3)
    assert reap_stale_jobs(store, Publisher(settings), settings) == []  # nothing requeued
    record = store.get(job_id)
    assert record["status"] == "succeeded" and record["model_id"] == job_id
    assert record["final_test_acc"] == 0.8 and "published the model" in record["note"]


def test_reaper_removes_the_training_state_of_a_job_it_ends(store: JobStore, settings: Settings, tmp_path) -> None:
    import torch

    from bnlenet.checkpoint_storage import LocalStorage
    from bnlenet.training_states import TrainingStates, state_name
    from models.train_state import TrainingState

    settings = settings.model_copy(update={"CHECKPOINT_DIR": str(tmp_path)})
    states = TrainingStates(LocalStorage(tmp_path))
    job_id = store.submit({})[0]["job_id"]
    state = TrainingState(epoch=1, model={"w": torch.zeros(1)}, optimizer={}, rng={}, average_sums=None,
                          average_count=0)
    for attempt in range(1, settings.MAX_ATTEMPTS + 1):
        claim(store, job_id)
        states.save(job_id, attempt, {}, state)  # saved, but no new epoch recorded: fruitless
        time.sleep(0.3)
        reap_stale_jobs(store, Publisher(settings), settings)
        requeued = attempt < settings.MAX_ATTEMPTS
        assert store.get(job_id)["status"] == ("queued" if requeued else "failed")
        assert (tmp_path / state_name(job_id)).exists() == requeued  # kept to resume from, removed once it ends


def test_a_redelivered_job_whose_model_was_published_is_recorded_succeeded_not_run_again(
    store: JobStore, settings: Settings, tmp_path, monkeypatch
) -> None:
    """The pool process published attempt 1's model and died before recording it; Celery redelivers the task
    at once (before any reaper), and a cancel was asked meanwhile: the job succeeded, from its checkpoint."""
    import socket
    import subprocess
    import sys

    import torch

    from bnlenet.model_store import ModelStore
    from models.lenet import build_lenet
    from worker import job_run, resources

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job_id = store.submit({})[0]["job_id"]
    attempt = claim(store, job_id, worker=f"{socket.gethostname()}:{dead.pid}", pid=dead.pid)
    models = ModelStore(tmp_path)
    torch.manual_seed(0)
    models.publish(job_id, build_lenet("builtin").eval(),
                   {"variant": "builtin", "job_id": job_id, "attempt": attempt, "final_test_acc": 0.8})
    store.request_cancel(job_id)
    monkeypatch.setattr(resources, "job_store", lambda: store)
    monkeypatch.setattr(resources, "model_store", lambda: models)
    monkeypatch.setattr(resources, "settings", lambda: settings)
    assert job_run.run_job(job_id, "t") == ("succeeded", None)  # the same task, redelivered
    record = store.get(job_id)
    assert record["status"] == "succeeded" and record["model_id"] == job_id and record["attempts"] == attempt
    assert record["final_test_acc"] == 0.8 and "published the model" in record["note"]
    assert job_id in [model_id for model_id, _ in models.list()]  # the model stays, served
