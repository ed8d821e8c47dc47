"""A worker's publish to an S3 bucket under failures, timed exactly by a proxy between the worker and the bucket.

- Outcome and model agree (issue 9, finding 4): the proxy freezes Redis (SIGSTOP) at the moment
  the bucket's answer to the upload arrives, before the worker sees it, so the model is published
  and the outcome cannot be written, exactly the window of the finding, every time.
- A worker killed mid-upload (issue 12): the proxy lets a third of the upload through, holds the
  rest, and drops it when the worker is SIGKILLed; nothing is listed, and the job runs again.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bnlenet.checkpoint_storage import S3Storage
from bnlenet.local.s3_server import S3Server
from tests.conftest import own_s3_server
from tests.integration.conftest import Stack
from tests.integration.partition import Partitionable

pytestmark = [pytest.mark.integration, pytest.mark.s3]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with own_s3_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.mark.parametrize(("outcome_retry_s", "who"), [("30", "the worker, once Redis is back"),
                                                      ("2", "the reaper, from the checkpoint")])
def test_a_model_published_just_before_redis_went_away_is_recorded_succeeded(
        tmp_path: Path, synthetic_data_dir: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch,
        outcome_retry_s: str, who: str) -> None:
    for key, value in s3.client_env().items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3.bucket}/outcome-{outcome_retry_s}"
    stack = Stack(tmp_path, synthetic_data_dir)
    stack.env.update(s3.client_env(), CHECKPOINT_DIR=url, OUTCOME_RETRY_S=outcome_retry_s)
    link = Partitionable(s3.port)
    frozen_at: list[float] = []

    job: list[str] = []
    bucket = S3Storage(url, tmp_path / "watch")

    def freeze_redis() -> None:
        # The worker also saves its training state to the bucket after each epoch: freeze Redis at
        # the answer to the model's upload, the first answer after which the model is listed.
        if not job or job[0] not in bucket.versions():
            link.before_next_answer(freeze_redis)
            return
        assert stack.redis.process is not None
        stack.redis.process.send_signal(signal.SIGSTOP)
        frozen_at.append(time.monotonic())

    try:
        stack.redis.start()
        stack.start_worker(AWS_ENDPOINT_URL=f"http://127.0.0.1:{link.port}", MODEL_CACHE_DIR=str(tmp_path / "w"))
        stack.start_api(MODEL_CACHE_DIR=str(tmp_path / "api"))
        stack.wait_for_worker()
        link.before_next_answer(freeze_redis)
        job_id = stack.client.post("/train", json={"epochs": 2, "batch_size": 64}).json()["job_id"]
        job.append(job_id)
        deadline = time.monotonic() + 120
        while not frozen_at:
            assert time.monotonic() < deadline, "the worker never uploaded its model"
            time.sleep(0.05)
        time.sleep(6)  # Redis away: the model is in the bucket, the outcome cannot be written
        assert job_id in S3Storage(url, tmp_path / "look").versions()
        assert stack.redis.process is not None
        stack.redis.process.send_signal(signal.SIGCONT)
        job = stack.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=60)
        assert job["status"] == "succeeded", f"{who}: {job}"
        assert job["model_id"] == job_id and job["final_test_acc"] is not None
        assert "failed" not in job["_seen"]
        logs = stack.workers[0].log.read_text(errors="replace")
        if outcome_retry_s == "2":
            assert "the reaper records the success from the checkpoint" in logs
    finally:
        if stack.redis.process is not None and stack.redis.process.poll() is None:
            stack.redis.process.send_signal(signal.SIGCONT)
        stack.stop()
        link.close()


def test_a_worker_killed_mid_upload_leaves_no_model_listed_and_the_job_runs_again(
        tmp_path: Path, synthetic_data_dir: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3.client_env().items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3.bucket}/killed-mid-upload"
    stack = Stack(tmp_path, synthetic_data_dir)
    stack.env.update(s3.client_env(), CHECKPOINT_DIR=url)
    link = Partitionable(s3.port)
    try:
        stack.redis.start()
        stack.start_worker("uploader", AWS_ENDPOINT_URL=f"http://127.0.0.1:{link.port}",
                           MODEL_CACHE_DIR=str(tmp_path / "w1"))
        stack.start_api(MODEL_CACHE_DIR=str(tmp_path / "api"))
        stack.wait_for_worker()
        link.cut_after(60_000)  # the request head and a third of the checkpoint reach the bucket, then no more
        job_id = stack.client.post("/train", json={"epochs": 2, "batch_size": 64}).json()["job_id"]
        assert link.held.wait(120), "the worker never uploaded"
        time.sleep(0.5)
        stack.workers[0].kill()  # SIGKILL, mid-upload
        link.reset()  # and the rest of its request never arrives
        storage = S3Storage(url, tmp_path / "look")
        time.sleep(1.0)
        assert storage.versions() == {}, "a half-uploaded model is listed"
        assert stack.client.get(f"/models/{job_id}").status_code == 404
        stack.start_worker("second", MODEL_CACHE_DIR=str(tmp_path / "w2"))  # reaches the bucket directly
        job = stack.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=120)
        assert job["status"] == "succeeded" and job["attempts"] == 2, job
        assert list(storage.versions()) == [job_id]
        assert stack.client.get(f"/models/{job_id}").json()["model_id"] == job_id
        meta = storage.fetch(job_id)[0]
        from models.checkpoint import load_checkpoint

        assert load_checkpoint(meta).metadata["attempt"] == 2
    finally:
        stack.stop()
        link.close()
