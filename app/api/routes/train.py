"""POST /train: queue a training job.

The router is built per app (``make_router``): the request model carries that app's
settings' caps (``MAX_EPOCHS`` and the like), so ``create_app(Settings(MAX_LR=...))`` changes
both the validation and the schema.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from pydantic import BaseModel

from app.deps import JobStoreDep, PublisherDep, WriterDep
from app.errors import QueueFull, QueueUnavailable, error_responses
from app.schemas import JobOut, train_request_model
from bnlenet.jobs import StoreUnavailable
from bnlenet.settings import Settings

log = logging.getLogger(__name__)


def make_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/train", tags=["train"])

    def create_training_job(body: BaseModel, store: JobStoreDep, publisher: PublisherDep,
                            response: Response) -> JobOut:
        # A soft limit (a check, then a create): a burst may pass it by a few, never by many.
        queued = store.count("queued")
        if settings.MAX_QUEUED_JOBS and queued >= settings.MAX_QUEUED_JOBS:
            raise QueueFull(f"{queued} jobs are queued, the most this service takes (MAX_QUEUED_JOBS="
                            f"{settings.MAX_QUEUED_JOBS}); try again when some have started, or cancel some")
        # Record first, then publish: a job is never queued without a record. If publishing
        # fails the record is removed and the client told, so nothing is silently lost.
        record = store.create(body.model_dump())
        job_id = record["job_id"]
        try:
            task_id = publisher.publish(job_id)
        except Exception as exc:
            log.warning("could not queue job %s: %s", job_id, exc)
            try:
                store.delete(job_id)
            except StoreUnavailable:
                log.error("job %s is stored but not queued and could not be removed", job_id)
            raise QueueUnavailable(f"the training queue (Redis) is unavailable, the job was not queued: {exc}") from exc
        record = store.set_task_id(job_id, task_id)
        response.headers["Location"] = f"/jobs/{job_id}"
        return JobOut.model_validate(record)

    # The body's model is this app's; FastAPI reads it from the signature.
    create_training_job.__annotations__["body"] = train_request_model(settings)
    router.add_api_route(
        "",
        create_training_job,
        methods=["POST"],
        status_code=202,
        response_model=JobOut,
        summary="Queue a training job",
        description="Validates the parameters, stores a queued job and hands it to a worker. "
        "Answers 202 with the job and `Location: /jobs/<id>`; poll that to follow it. Precise BN is on "
        "by default: the stored model's BN statistics are recomputed as true averages after training, "
        "which scores higher and varies less across seeds than the moving averages (`precise_bn: false`). "
        "`final_test_acc` is the stored model's accuracy; `history` keeps the per-epoch moving-average figures.",
        dependencies=[WriterDep],
        responses=error_responses(401, 403, 413, 422, 429, 503),
    )
    return router
