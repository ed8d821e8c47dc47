"""Celery tells the truth: events from a real worker, captured with Celery's own receiver, and task states."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from bnlenet.settings import Settings
from tests.integration.conftest import ROOT, Stack, wait_for
from worker.celery_app import make_celery

pytestmark = pytest.mark.integration


class Events:
    """Every event on the stack's broker, captured in a thread by ``app.events.Receiver``."""

    def __init__(self, stack: Stack) -> None:
        self.app = make_celery(Settings(REDIS_URL=stack.redis.url))
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._run, daemon=True).start()
        # Pub/sub keeps nothing for late subscribers: wait until a worker's heartbeat gets through.
        wait_for(lambda: any(e["type"] == "worker-heartbeat" for e in self.seen), 30, "no worker heartbeat event")

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as connection:
                receiver = self.app.events.Receiver(connection, handlers={"*": self.seen.append})
                receiver.capture(limit=None, timeout=None, wakeup=False)
        except Exception:  # Redis stops at the end of the module: the capture ends with it
            return

    def of(self, task_id: str) -> list[str]:
        return [e["type"] for e in list(self.seen) if e.get("uuid") == task_id]

    def first(self, task_id: str, kind: str) -> dict[str, Any]:
        return next(e for e in list(self.seen) if e.get("uuid") == task_id and e["type"] == kind)

    def state(self, task_id: str) -> str:
        return str(self.app.AsyncResult(task_id).state)


@pytest.fixture(scope="module")
def events(stack: Stack) -> Events:
    return Events(stack)


def _train(stack: Stack, **params: Any) -> tuple[str, str]:
    r = stack.client.post("/train", json=params)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["task_id"], "the task id is on the job record"
    return job["job_id"], job["task_id"]


def test_celery_events_follow_a_job_that_succeeds(stack: Stack, events: Events):
    job_id, task_id = _train(stack, variant="scratch", epochs=3, batch_size=8, lr=0.5)
    stack.wait_job(job_id, {"succeeded"})
    wait_for(lambda: "task-succeeded" in events.of(task_id), 10, lambda: f"events: {events.of(task_id)}")
    kinds = events.of(task_id)
    for kind in ("task-sent", "task-received", "task-started", "task-progress", "task-succeeded"):
        assert kind in kinds, kinds
    assert kinds.index("task-sent") < kinds.index("task-started") < kinds.index("task-succeeded")
    progress = events.first(task_id, "task-progress")
    assert progress["job_id"] == job_id and 0 < progress["fraction"] <= 1 and progress["epochs"] == 3
    assert events.state(task_id) == "SUCCESS"


def test_celery_events_show_a_failed_job_as_failure_with_its_error(stack: Stack, events: Events):
    job_id, task_id = _train(stack, epochs=2, batch_size=32, lr=1e36)
    job = stack.wait_job(job_id, {"failed"})
    wait_for(lambda: "task-failed" in events.of(task_id), 10, lambda: f"events: {events.of(task_id)}")
    assert "task-succeeded" not in events.of(task_id)
    failed = events.first(task_id, "task-failed")
    assert "diverged" in failed["exception"] and "diverged" in job["error"]
    assert events.state(task_id) == "FAILURE"
    assert "diverged" in str(events.app.AsyncResult(task_id).result)


def test_celery_events_show_a_cancelled_job_as_revoked(stack: Stack, events: Events):
    job_id, task_id = _train(stack, epochs=100, batch_size=2)
    stack.wait_job(job_id, {"running"})
    assert stack.client.post(f"/jobs/{job_id}/cancel").status_code == 200
    stack.wait_job(job_id, {"cancelled"})
    wait_for(lambda: "task-revoked" in events.of(task_id), 10, lambda: f"events: {events.of(task_id)}")
    assert "task-succeeded" not in events.of(task_id)
    assert events.state(task_id) == "REVOKED"


def test_celery_revoke_terminate_cancels_the_job_and_it_is_not_requeued(stack: Stack, events: Events):
    job_id, task_id = _train(stack, epochs=100, batch_size=2)
    stack.wait_job(job_id, {"running"})
    wait_for(lambda: stack.job(job_id)["progress"] is not None, 60, "the job never reported progress")
    # What Flower's Terminate sends (revoke with terminate=True); the CLI spells it `control terminate`.
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.celery_app", "control", "terminate", "SIGTERM",
                          task_id], cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job = stack.wait_job(job_id, {"cancelled"}, timeout=30)
    assert "terminated" in (job["note"] or "")
    wait_for(lambda: "task-revoked" in events.of(task_id), 10, lambda: f"events: {events.of(task_id)}")
    assert events.first(task_id, "task-revoked")["terminated"] is True
    assert events.state(task_id) == "REVOKED"
    # Past the stale limit and several reaper sweeps, it is still cancelled, never requeued.
    time.sleep(float(stack.env["JOB_STALE_AFTER_S"]) + 3 * float(stack.env["REAPER_INTERVAL_S"]))
    job = stack.job(job_id)
    assert job["status"] == "cancelled" and job["attempts"] == 1 and job["task_id"] == task_id
    # And the worker takes the next job.
    next_id, _ = _train(stack, epochs=1, batch_size=64)
    stack.wait_job(next_id, {"succeeded"}, timeout=120)
