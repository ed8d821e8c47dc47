"""GET /jobs, GET /jobs/{job_id}, POST /jobs/{job_id}/cancel, POST /jobs/cancel, DELETE /jobs/{job_id}."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from app.deps import JobStoreDep, ReaderDep, WriterDep
from app.errors import error_responses
from app.schemas import BulkCancelOut, JobList, JobOut
from bnlenet.jobs import JobFinished, JobNotFound, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="the job's id")]


@router.get(
    "",
    response_model=JobList,
    summary="List jobs, newest first",
    dependencies=[ReaderDep],
    responses=error_responses(401, 403, 422, 503),
)
def list_jobs(
    store: JobStoreDep,
    status: Annotated[JobStatus | None, Query(description="only jobs with this status")] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobList:
    records, total = store.list(status=status, offset=offset, limit=limit)
    return JobList(data=[JobOut.model_validate(r) for r in records], count=total)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="One job: status, progress, history, result",
    dependencies=[ReaderDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def get_job(job_id: JobId, store: JobStoreDep) -> JobOut:
    return JobOut.model_validate(store.get(job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job",
    description="A queued job is cancelled at once and never starts; a running one stops between "
    "batches and becomes `cancelled` shortly after (`cancel_requested` is true until then).",
    dependencies=[WriterDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def cancel_job(job_id: JobId, store: JobStoreDep) -> JobOut:
    return JobOut.model_validate(store.request_cancel(job_id))


@router.post(
    "/cancel",
    response_model=BulkCancelOut,
    summary="Cancel every queued (or every running) job",
    description="`status=queued` cancels every queued job at once; `status=running` asks every running job "
    "to stop (each becomes `cancelled` shortly after). Answers how many.",
    dependencies=[WriterDep],
    responses=error_responses(401, 403, 422, 503),
)
def cancel_jobs(
    store: JobStoreDep,
    status: Annotated[Literal["queued", "running"], Query(description="which jobs to cancel")],
) -> BulkCancelOut:
    count = 0
    for job_id in store.ids(status):
        try:
            record = store.request_cancel(job_id)
        except (JobFinished, JobNotFound):  # it ended (or went) meanwhile
            continue
        count += record["status"] == "cancelled" or record["cancel_requested"]
    verb = "cancelled" if status == "queued" else "asked to stop"
    return BulkCancelOut(status=status, count=count, detail=f"{count} {status} job(s) {verb}")


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a job",
    description="Removes the job's record (its model, if any, stays: `DELETE /models/{id}`). A running job "
    "must be cancelled first: 409 says so.",
    dependencies=[WriterDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def delete_job(job_id: JobId, store: JobStoreDep) -> Response:
    store.remove(job_id)
    return Response(status_code=204)
