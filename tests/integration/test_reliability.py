"""Workers that die mid-training lose no job."""

from __future__ import annotations

import os
import signal

import pytest

from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

LONG_JOB = {"epochs": 6, "batch_size": 8}  # a few seconds of training on two cores


def _running_with_progress(stack, job_id):
    def check() -> bool:
        job = stack.job(job_id)
        return job["status"] == "running" and (job.get("progress") or {}).get("batch", 0) > 0

    wait_for(check, 60, "the job never got going")
    return stack.job(job_id)


def test_reliability_killed_pool_process_job_runs_again(stack):
    job_id = stack.client.post("/train", json=LONG_JOB).json()["job_id"]
    job = _running_with_progress(stack, job_id)
    pid = int(job["worker"].rsplit(":", 1)[1])  # the worker field is "<host>:<pid of the training process>"
    os.kill(pid, signal.SIGKILL)  # the training process only; the worker requeues the message
    job = stack.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2


def test_reliability_killed_worker_job_is_requeued_and_succeeds(stack):
    job_id = stack.client.post("/train", json=LONG_JOB).json()["job_id"]
    _running_with_progress(stack, job_id)
    stack.workers[-1].kill()  # the whole worker, SIGKILL, mid-epoch
    stack.start_worker("w2")
    job = stack.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert "requeued" in (job["note"] or "")
    assert (stack.checkpoint_dir / f"{job_id}.safetensors").exists()


def test_reliability_job_stored_by_an_api_that_died_before_publishing_still_runs(stack):
    # What an API SIGKILLed between its two steps leaves: the record (in the outbox) and no task.
    from bnlenet.jobs import JobStore

    store = JobStore.from_url(stack.env["REDIS_URL"])
    record, new = store.submit({"variant": "scratch", "epochs": 1, "lr": 0.5, "batch_size": 64, "seed": 0,
                                "precise_bn": False, "device": None})
    assert new and record["task_id"] is None
    job = stack.wait_job(record["job_id"], {"succeeded", "failed", "cancelled"}, timeout=60)
    assert job["status"] == "succeeded", job
    assert store.get(record["job_id"])["task_id"] and store.pending_publish(0) == []
