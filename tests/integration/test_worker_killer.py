"""A job that keeps killing its worker stops after MAX_ATTEMPTS and ends ``failed``, saying so."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 2
LONG_JOB = {"epochs": 6, "batch_size": 8}  # long enough to be caught running


@pytest.fixture(scope="module")
def killer_stack(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("killer"), synthetic_data_dir, MAX_ATTEMPTS=str(MAX_ATTEMPTS)) as s:
        yield s


def _pid(job: dict) -> int:
    return int(job["worker"].rsplit(":", 1)[1])  # "<host>:<pid of the training pool process>"


def test_worker_killer_job_fails_after_max_attempts(killer_stack: Stack):
    s = killer_stack
    job_id = s.client.post("/train", json=LONG_JOB).json()["job_id"]
    killed: list[int] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        def started(attempt: int = attempt) -> bool:
            job = s.job(job_id)
            return job["status"] == "running" and job["attempts"] == attempt and _pid(job) not in killed

        wait_for(started, 90, lambda attempt=attempt: f"attempt {attempt} never started: {s.job(job_id)}\n{s.workers[-1].tail()}")
        pid = _pid(s.job(job_id))  # the pool process that trains, as a worker-killing job would take it down
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    job = s.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=90)
    assert job["status"] == "failed", job
    assert job["attempts"] == MAX_ATTEMPTS
    assert f"lost {MAX_ATTEMPTS} time(s)" in job["error"] and "giving up" in job["error"]
    assert job["model_id"] is None
    assert not (s.checkpoint_dir / f"{job_id}.safetensors").exists()

    # The worker survived its pool processes' deaths and still trains the next job.
    nxt = s.client.post("/train", json={"epochs": 1, "batch_size": 64}).json()["job_id"]
    assert s.wait_job(nxt, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
