"""The training task: claim the job, train with plain callbacks, publish the checkpoint, record the end.

The task is thin. The job's parameters become a ``TrainConfig`` in ``job_config``; the
heartbeat, the owner check, preloading and the reaper live in ``worker.housekeeping``.
Every write the task makes is conditional on still owning the job (worker and attempt).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from celery.app.task import Task
from celery.exceptions import Ignore

from bnlenet.jobs import TERMINAL, JobStatus, StoreUnavailable
from bnlenet.settings import Settings
from bnlenet.training_queue import TRAIN_TASK
from models.checkpoint import training_metadata
from models.memory import release_memory
from models.params import params_of
from models.training import (
    EpochMetrics,
    Progress,
    TrainConfig,
    TrainingCancelled,
    TrainingDiverged,
    resolve_device,
    train,
)
from worker import resources
from worker.celery_app import app
from worker.housekeeping import Heartbeat, LostJob, owner_gone

__all__ = ["JobFailed", "job_config", "run_job", "train_job"]

log = logging.getLogger(__name__)

_JOB_PARAMS = frozenset(f.name for f in params_of(TrainConfig) if f.param.api)


def job_config(params: dict[str, Any], settings: Settings) -> TrainConfig:
    """The run a job's stored parameters describe (a job takes exactly the API's parameters).

    ``settings`` are the worker's: a setting that decides how this worker runs a job (not what
    it computes) is applied here. On CUDA the step is compiled (``COMPILE_ON_CUDA``): the pool
    process compiles once, in its warm-up, and every job after reuses the graphs. Resolving the
    device here, in the pool process, is what initializes CUDA, never in the parent.
    """
    config = TrainConfig(**{k: v for k, v in params.items() if k in _JOB_PARAMS})
    on_cuda = resolve_device(config.device).type == "cuda"
    return replace(config, compile=on_cuda and settings.COMPILE_ON_CUDA)


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


def run_job(job_id: str, task_id: str | None,
            announce: Callable[[dict[str, Any]], None] | None = None) -> tuple[str, str | None]:
    """Claim and run the job; its final status and error."""
    s = resources.settings()
    store = resources.job_store()
    me = resources.worker_name()
    claim = store.claim(
        job_id, worker=me, pid=os.getpid(), task_id=task_id, max_attempts=s.MAX_ATTEMPTS,
        stale_after=s.JOB_STALE_AFTER_S, owner_gone=owner_gone,
    )
    if not claim.run or claim.record is None:
        log.info("not running job %s: %s", job_id, claim.reason)
        if claim.record is None:
            return "missing", None
        if claim.record["task_id"] not in (None, task_id) and claim.record["status"] in TERMINAL:
            return "duplicate", None  # another delivery's job: its own task tells how it ended
        return claim.record["status"], claim.record["error"]
    attempt = claim.record["attempts"]
    owner: dict[str, Any] = {"worker": me, "attempt": attempt}

    def finish(status: JobStatus, *, within: float = 60.0, before: Callable[[], object] | None = None,
               **fields: Any) -> tuple[str, str | None]:
        """Record the outcome (after ``before``), retrying both for a while if Redis is briefly away."""
        deadline = time.monotonic() + within
        while True:
            try:
                if before is not None:
                    before()
                store.finish(job_id, status, **owner, **fields)
                return status, fields.get("error")
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    beat = Heartbeat(store, job_id, worker=me, attempt=attempt, interval=s.JOB_HEARTBEAT_INTERVAL_S,
                     progress_interval=s.JOB_PROGRESS_INTERVAL_S, lease=s.JOB_STALE_AFTER_S / 2,
                     announce=announce)
    beat.start()
    first_step_seen = False

    def on_progress(p: Progress) -> None:
        nonlocal first_step_seen
        beat.progress = progress = asdict(p)
        if not first_step_seen:  # the first report comes after the first batch: stamp it now
            first_step_seen = True
            try:
                store.first_step(job_id, **owner, at=time.time(), progress=progress)
            except StoreUnavailable as exc:
                log.warning("could not record the first step of job %s: %s", job_id, exc)

    def on_epoch(m: EpochMetrics) -> None:
        try:
            store.add_epoch(job_id, **owner, metrics=asdict(m), progress=beat.progress or {})
        except StoreUnavailable as exc:
            log.warning("could not record epoch %d of job %s: %s", m.epoch, job_id, exc)
        store.epoch_done(variant=config.variant, device=device, examples_per_sec=m.examples_per_sec)

    try:
        config = job_config(claim.record["params"], s)
        device = str(resolve_device(config.device))
        data = resources.training_data()
        with resources.engine_lock:  # after the warm-up, which compiles what this job reuses
            result = train(config, data, on_progress=on_progress, on_epoch=on_epoch,
                           should_stop=beat.cancel.is_set)
    except TrainingCancelled:
        if beat.lost.is_set():
            beat.stop()
            return "lost", None  # another attempt owns the job: it writes the outcome
        return _ended(beat, finish("cancelled"))
    except (TrainingDiverged, ValueError) as exc:
        return _ended(beat, finish("failed", error=str(exc)))
    except BaseException as exc:
        beat.stop()  # whatever happens, this attempt's heartbeats end with it
        if not isinstance(exc, Exception):
            raise
        log.exception("job %s failed", job_id)
        return finish("failed", error=f"{type(exc).__name__}: {exc}")

    # Trained. The outcome and the model must agree: the checkpoint takes its name only while
    # this attempt certainly owns the job (the lease), and once it has, the job is recorded
    # succeeded, or left for the reaper to record from the checkpoint, but never failed.
    metadata = {**training_metadata(config, result, data.classes), "job_id": job_id, "attempt": attempt}
    try:
        resources.model_store().publish(job_id, result.model, metadata, before_commit=beat.confirm_lease)
    except LostJob as exc:
        log.warning("job %s: not publishing the model of attempt %d: %s", job_id, attempt, exc)
        beat.stop()
        return "lost", None
    except BaseException as exc:  # nothing was published (a full disk, say): the job failed, and says why
        beat.stop()
        if not isinstance(exc, Exception):
            raise
        log.exception("job %s: could not publish its model", job_id)
        return finish("failed", error=f"could not publish the model: {type(exc).__name__}: {exc}")
    try:
        # Every API process serves the model before any client can learn of it (bnlenet.model_news).
        def tell_every_api() -> object:
            return resources.model_news().announce(f"model {job_id} published")

        return _ended(beat, finish("succeeded", within=s.OUTCOME_RETRY_S, before=tell_every_api, model_id=job_id,
                                   device=result.device, final_test_acc=result.final_test_acc))
    except StoreUnavailable:
        log.error("job %s: its model is published but Redis stayed away for %.0fs; the reaper records the "
                  "success from the checkpoint once it can", job_id, s.OUTCOME_RETRY_S)
        beat.stop()
        return "succeeded", None


def _ended(beat: Heartbeat, outcome: tuple[str, str | None]) -> tuple[str, str | None]:
    beat.stop()
    return outcome
