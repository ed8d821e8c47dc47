"""POST /train: queue a training job."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response

from app.deps import JobStoreDep, SettingsDep, WriterDep
from app.errors import QueueUnavailable, error_responses
from app.schemas import JobOut, TrainRequest
from bnlenet.jobs import StoreUnavailable
from worker.tasks import publish_train_job

router = APIRouter(prefix="/train", tags=["train"])
log = logging.getLogger(__name__)


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Queue a training job",
    description="Validates the hyperparameters, stores a queued job and hands it to a worker. "
    "Answers 202 with the job and `Location: /jobs/<id>`; poll that to follow it.",
    dependencies=[WriterDep],
    responses={**error_responses(401, 403, 413, 422, 503)},
)
def create_training_job(body: TrainRequest, store: JobStoreDep, settings: SettingsDep, response: Response) -> dict:
    # Record first, then publish: a job is never queued without a record. If publishing
    # fails the record is removed and the client told, so nothing is silently lost.
    record = store.create(body.model_dump())
    job_id = record["job_id"]
    try:
        task_id = publish_train_job(job_id, settings.REDIS_URL)
    except Exception as exc:
        log.warning("could not queue job %s: %s", job_id, exc)
        try:
            store.delete(job_id)
        except StoreUnavailable:
            log.error("job %s is stored but not queued and could not be removed", job_id)
        raise QueueUnavailable(f"the training queue (Redis) is unavailable, the job was not queued: {exc}") from exc
    record = store.set_task_id(job_id, task_id)
    response.headers["Location"] = f"/jobs/{job_id}"
    return record
