"""A real job's event stream and ``bnlenet watch`` against the real stack (Redis, a Celery worker, uvicorn)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from bnlenet.local.watch import iter_sse
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def _events(stack, job_id: str, headers: dict[str, str] | None = None) -> list:
    with httpx.stream("GET", f"{stack.url}/jobs/{job_id}/events", headers=headers, timeout=120) as r:
        assert r.status_code == 200
        return list(iter_sse(r.iter_lines()))


def _watch(stack, job_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bnlenet.local.cli", "watch", job_id, "--url", stack.url],
                          capture_output=True, text=True, timeout=180, env=stack.env)


def test_events_of_a_real_job_come_in_order_and_end_with_its_status(stack) -> None:
    job_id = stack.client.post("/train", json={"variant": "scratch", "epochs": 3, "batch_size": 16}).json()["job_id"]
    events = _events(stack, job_id)
    assert events[0].event == "status"  # the snapshot
    assert [e.json()["epoch"] for e in events if e.event == "epoch"] == [1, 2, 3]
    assert events[-1].event == "status" and events[-1].json()["status"] == "succeeded"
    assert any(e.event == "progress" for e in events)
    assert [e.json()["status"] for e in events if e.event == "status"][-2:] == ["running", "succeeded"]
    # everything again from the start of the stream: the same events after the snapshot, once each
    replay = _events(stack, job_id, headers={"Last-Event-ID": "0-0"})
    assert [e.id for e in replay] == [e.id for e in events if e.id != "0-0"][-len(replay):]
    assert len({e.id for e in replay}) == len(replay)


def test_watch_exits_0_for_a_job_that_succeeds(stack) -> None:
    job_id = stack.client.post("/train", json={"epochs": 2, "batch_size": 32}).json()["job_id"]
    run = _watch(stack, job_id)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "epoch 1:" in run.stdout and "epoch 2:" in run.stdout and "succeeded" in run.stdout


def test_watch_exits_1_for_a_cancelled_job_and_2_for_an_unknown_one(stack) -> None:
    job_id = stack.client.post("/train", json={"epochs": 100, "batch_size": 2}).json()["job_id"]
    wait_for(lambda: stack.job(job_id)["status"] == "running", 60, "the job did not start")
    watcher = subprocess.Popen([sys.executable, "-m", "bnlenet.local.cli", "watch", job_id, "--url", stack.url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stack.env)
    time.sleep(1)
    assert stack.client.post(f"/jobs/{job_id}/cancel").status_code == 200
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 1, out + err
    assert "cancelled" in out
    unknown = _watch(stack, "no-such-job")
    assert unknown.returncode == 2 and "no job no-such-job" in unknown.stderr
