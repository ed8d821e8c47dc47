"""Workers that die mid-training lose no job."""

from __future__ import annotations

import os
import signal
import time

import pytest

from models.checkpoint import load_checkpoint
from tests.integration.conftest import Stack, wait_for
from tests.integration.partition import Partitionable

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


def test_reliability_a_frozen_worker_loses_its_job_and_publishes_nothing(stack):
    # Finding 3 of issue 9: a worker paused (SIGSTOP) past JOB_STALE_AFTER_S (3 s here) is declared
    # lost and the job runs again elsewhere; once resumed, it must stop and publish nothing.
    stack.start_worker("w-spare")
    epochs = 30
    job_id = stack.client.post("/train", json={"epochs": epochs, "batch_size": 8}).json()["job_id"]
    job = _running_with_progress(stack, job_id)
    frozen = int(job["worker"].rsplit(":", 1)[1])
    os.kill(frozen, signal.SIGSTOP)
    try:
        def taken_over() -> bool:
            record = stack.job(job_id)
            return (record["attempts"] == 2 and record["status"] == "running"
                    and (record.get("progress") or {}).get("batch", 0) > 0)

        wait_for(taken_over, 60, lambda: f"the job was not run again: {stack.job(job_id)}")
        assert int(stack.job(job_id)["worker"].rsplit(":", 1)[1]) != frozen
    finally:
        os.kill(frozen, signal.SIGCONT)
    checkpoint = stack.checkpoint_dir / f"{job_id}.safetensors"
    for _ in range(40):  # 2 s: several of the resumed worker's heartbeats (0.3 s)
        record = stack.job(job_id)
        assert not checkpoint.exists() or record["status"] == "succeeded", "the frozen attempt published its model"
        assert record["status"] in ("running", "succeeded") and record["attempts"] == 2, record
        time.sleep(0.05)
    assert stack.job(job_id)["status"] == "running", "attempt 2 ended too soon for the test to mean anything"
    job = stack.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=180)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    assert [h["epoch"] for h in job["history"]] == list(range(1, epochs + 1))  # attempt 2's whole history
    assert load_checkpoint(checkpoint).metadata["attempt"] == 2
    logs = "".join(w.log.read_text(errors="replace") for w in stack.workers if w.log.exists())
    assert f"job {job_id}: attempt 1 no longer owns the job" in logs  # it learned, and stopped


def test_reliability_a_partitioned_worker_loses_its_job_and_publishes_nothing(tmp_path, synthetic_data_dir):
    # Finding 3's other half: the network between a worker and Redis goes away for longer than
    # JOB_STALE_AFTER_S; the job runs again on a worker that can reach Redis, and the cut-off one,
    # whether it heals mid-training or finishes first, publishes nothing.
    stack = Stack(tmp_path, synthetic_data_dir)
    link = None
    try:
        stack.redis.start()
        link = Partitionable(stack.redis.port)
        stack.start_worker("w-remote", REDIS_URL=link.url())
        stack.start_api()
        stack.wait_for_worker()
        epochs = 30
        job_id = stack.client.post("/train", json={"epochs": epochs, "batch_size": 8}).json()["job_id"]
        _running_with_progress(stack, job_id)
        stack.start_worker("w-local")
        link.cut()
        try:
            wait_for(lambda: stack.job(job_id)["attempts"] == 2 and stack.job(job_id)["status"] == "running",
                     60, lambda: f"the job was not run again: {stack.job(job_id)}")
        finally:
            link.heal()
        job = stack.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=180)
        assert job["status"] == "succeeded" and job["attempts"] == 2, job
        assert [h["epoch"] for h in job["history"]] == list(range(1, epochs + 1))
        assert load_checkpoint(stack.checkpoint_dir / f"{job_id}.safetensors").metadata["attempt"] == 2
        remote = stack.workers[0].log.read_text(errors="replace")
        wait_for(lambda: "attempt 1 no longer owns the job" in stack.workers[0].log.read_text(errors="replace")
                 or "not publishing the model of attempt 1" in stack.workers[0].log.read_text(errors="replace"),
                 30, lambda: f"the cut-off worker never learned it lost the job:\n{remote[-3000:]}")
    finally:
        stack.stop()
        if link is not None:
            link.close()


def test_reliability_an_api_killed_during_bursts_of_train_leaves_no_job_behind(tmp_path, synthetic_data_dir):
    # Finding 1 of issue 9: bursts of POST /train while the API is SIGKILLed and restarted left
    # records `queued` with no task. Every stored job must run, and a client retrying with its
    # Idempotency-Key must never make a second one.
    import threading

    import httpx

    stack = Stack(tmp_path, synthetic_data_dir)
    answered: dict[str, str] = {}  # idempotency key -> job id, for every 202
    stop = threading.Event()

    def client() -> None:
        n = 0
        while not stop.is_set():
            key = f"burst-{n}"
            for _ in range(50):  # retry the same request until it gets an answer
                try:
                    r = httpx.post(stack.url + "/train", json={"epochs": 1, "batch_size": 64},
                                   headers={"Idempotency-Key": key}, timeout=5)
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                if r.status_code == 202:
                    if key in answered:
                        assert answered[key] == r.json()["job_id"], "a retry made a second job"
                    answered[key] = r.json()["job_id"]
                    break
                time.sleep(0.05)
            n += 1

    try:
        stack.redis.start()
        stack.start_worker()
        stack.start_api()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        for _ in range(3):
            time.sleep(1.0)
            assert stack.api is not None
            stack.api.kill()  # SIGKILL mid-burst
            stack.start_api()
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert len(answered) >= 10, answered
        stored = stack.client.get("/jobs", params={"limit": 500}).json()
        ids = {job["job_id"] for job in stored["data"]}
        assert set(answered.values()) <= ids  # every 202 is a stored job
        for job_id in ids:  # every stored job, answered or not, runs to the end
            job = stack.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=180)
            assert job["status"] == "succeeded", job
    finally:
        stop.set()
        stack.stop()
