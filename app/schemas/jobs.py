"""Training jobs as the API shows them: one job, a page of them, what a bulk cancel did."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import EXAMPLE_ID, FINAL_TEST_ACC_DESCRIPTION, HISTORY_DESCRIPTION
from app.schemas.train import DEFAULT_PARAMS, JobParams
from bnlenet.jobs import AttemptRecord, JobStatus
from models.training import EpochMetrics, Progress

__all__ = ["BulkCancelOut", "JobList", "JobOut"]


class JobOut(BaseModel):
    """A training job as the store holds it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": EXAMPLE_ID, "status": "running",
        "params": DEFAULT_PARAMS,
        "progress": {"epoch": 2, "epochs": 10, "batch": 120, "batches": 235, "fraction": 0.151,
                     "loss": 0.41, "train_acc": 0.85},
        "history": [{"epoch": 1, "loss": 0.58, "train_acc": 0.79, "test_acc": 0.83,
                     "examples_per_sec": 41000.0, "seconds": 1.46}],
        "final_test_acc": None,
        "created_at": "2025-01-01T12:00:00Z", "started_at": "2025-01-01T12:00:01Z",
        "first_step_at": "2025-01-01T12:00:01.2Z", "finished_at": None,
        "worker": "gpu0@host:4242", "device": "cuda", "model_id": None, "error": None,
        "attempts": 1, "fruitless_attempts": 0,
        "attempt_log": [{"attempt": 1, "worker": "gpu0@host:4242", "started_at": 1735732801.0, "resumed_from": 0,
                         "saved_epoch": 1}],
        "cancel_requested": False, "task_id": "3f1c0a9e-5b7d-4e21-9c3a-2d8e6f4b1a07",
    }]})

    job_id: str
    status: JobStatus
    params: JobParams = Field(description="the job's parameters, as POST /train took them")  # type: ignore[valid-type]
    progress: Progress | None = None
    history: list[EpochMetrics] = Field(default_factory=list, description=HISTORY_DESCRIPTION)
    final_test_acc: float | None = Field(None, description=FINAL_TEST_ACC_DESCRIPTION)
    created_at: datetime
    started_at: datetime | None = None
    first_step_at: datetime | None = Field(None, description="when the first training step finished")
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    worker: str | None = None
    device: str | None = None
    model_id: str | None = None
    error: str | None = None
    note: str | None = Field(None, description="why the job was requeued, if it was")
    attempts: int = Field(0, description="how many times the job was started (each run is an attempt)")
    fruitless_attempts: int = Field(0, description="attempts in a row that died without saving a new epoch; "
                                    "the job fails once they reach MAX_ATTEMPTS")
    attempt_log: list[AttemptRecord] = Field(
        default_factory=list, description="each attempt, oldest first: its worker, when it started, the epoch its "
        "training state resumed from (0: the start) and the last epoch whose state it saved")
    cancel_requested: bool = False
    task_id: str | None = Field(None, description="the Celery task of the latest delivery (Flower, celery events)")
    sweep_id: str | None = Field(None, description="the sweep this job is a trial of (GET /sweeps/{id})")
    stopped_early: bool = Field(False, description="succeeded, but its sweep's early-stopping rule ended it before "
                                "its last epoch: its model is the model after the epochs in history")


class BulkCancelOut(BaseModel):
    """What a bulk cancel did."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "queued", "count": 2576, "detail": "2576 queued job(s) cancelled"}]})

    status: JobStatus = Field(description="the status the cancelled jobs had")
    count: int = Field(description="how many jobs were cancelled (queued) or asked to stop (running)")
    detail: str


class JobList(BaseModel):
    """One page of jobs, newest first, and the total that match."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [], "count": 0}]})

    data: list[JobOut]
    count: int = Field(description="jobs matching the filter, over all pages")
