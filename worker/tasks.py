"""The training task: it moves a job id in and the job's outcome out; the work lives in ``worker.job_run``."""

from __future__ import annotations

import logging
from typing import Any

from celery.app.task import Task
from celery.exceptions import Ignore

from bnlenet.training_queue import TRAIN_TASK
from models.memory import release_memory
from worker.celery_app import app
from worker.job_run import run_job

__all__ = ["JobFailed", "train_job"]

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """Raised once a failed job is recorded, so that Celery shows its task as FAILURE with the error."""


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self: Task, job_id: str) -> str:
    """Run training job ``job_id`` from its record; the task's state says how it ended.

    SUCCESS for a job that succeeded (or had nothing to do), FAILURE with the job's error for a
    failed one, REVOKED (with a ``task-revoked`` event) for a cancelled one, so that Flower,
    ``celery events`` and ``AsyncResult`` tell the same story as ``GET /jobs/<id>``.
    """
    hostname, task_id = self.request.hostname, self.request.id

    def announce(progress: dict[str, Any]) -> None:  # from the heartbeat thread: no task context there
        with app.events.default_dispatcher(hostname=hostname) as dispatcher:
            dispatcher.send("task-progress", uuid=task_id, job_id=job_id, **progress)

    try:
        status, error = run_job(job_id, task_id, announce=announce)
    finally:
        release_memory()
    if status == "failed":
        log.warning("job %s ended: failed: %s", job_id, error)
    else:
        log.info("job %s ended: %s", job_id, status)
    if status == "cancelled":
        self.backend.mark_as_revoked(task_id, f"job {job_id} was cancelled", request=self.request)
        self.send_event("task-revoked", terminated=False, signum=None, expired=False)
        raise Ignore()  # the state stays REVOKED; the message is acknowledged
    if status == "failed":
        raise JobFailed(f"job {job_id} failed: {error}")
    return status
