"""GET /jobs, GET /jobs/{job_id}, GET /jobs/{job_id}/events, POST /jobs/{job_id}/cancel, POST /jobs/cancel,
DELETE /jobs/{job_id}."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app.deps import (
    EventHubDep,
    JobStoreDep,
    ModelStoreDep,
    ReaderDep,
    SettingsDep,
    StreamReaderDep,
    SweepStoreDep,
    WriterDep,
)
from app.errors import error_responses, json_error_responses
from app.events import follow_job, open_stream
from app.schemas import BulkCancelOut, JobList, JobOut
from bnlenet.jobs import TERMINAL, JobFinished, JobNotFound, JobStatus
from bnlenet.training_states import TrainingStates

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="the job's id")]


@router.get(
    "",
    response_model=JobList,
    summary="List jobs, newest first (or a sweep's trials)",
    dependencies=[ReaderDep],
    responses=error_responses(401, 403, 404, 422, 503),
)
def list_jobs(
    store: JobStoreDep,
    sweeps: SweepStoreDep,
    status: Annotated[JobStatus | None, Query(description="only jobs with this status")] = None,
    sweep: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]+$", max_length=64,
                                       description="only the trials of this sweep, in the sweep's order")] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobList:
    if sweep is not None:
        trials = [r for r in sweeps.trials(sweeps.get(sweep)) if r is not None and status in (None, r["status"])]
        return JobList(data=[JobOut.model_validate(r) for r in trials[offset:offset + limit]], count=len(trials))
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


EVENTS_DESCRIPTION = """Server-sent events (`text/event-stream`) that follow one job until it ends:

- first a `status` event whose data is the whole job (as `GET /jobs/{job_id}` answers), the snapshot;
- `progress` (`{"progress": {...}}`) as a running job reports within an epoch;
- `epoch` with each finished epoch's metrics (an entry of `history`);
- `status` with the whole job when its status, attempt, worker, cancel request or note changes;
  after a final status (`succeeded`, `failed`, `cancelled`) the stream closes.

Each event's `id` is its position in the job's stream; reconnecting with `Last-Event-ID` replays
what came after it, with no gaps and no repeats (no snapshot, unless events after it were already
trimmed: then the snapshot again); 204 once the client has seen the final status. A comment line is sent every `EVENTS_HEARTBEAT_S` seconds
(15) while nothing happens. With `PROTECT_READS`, send `Authorization: Bearer` or, from a
browser's `EventSource`, `?access_token=`."""


async def events_start(
    job_id: JobId,
    store: JobStoreDep,
    hub: EventHubDep,
    last_event_id: Annotated[str | None, Header(
        pattern=r"^[0-9]+-[0-9]+$", max_length=64, description="resume after this event id")] = None,
) -> str | None:
    """Refuse before the stream starts: 404 unknown job, 503 no Redis, 204 nothing will come after ``Last-Event-ID``.

    A 204 is how a server tells a browser's EventSource to stop reconnecting, here once it has
    seen the job's final status.
    """
    record, last = await run_in_threadpool(store.snapshot, job_id)
    return await open_stream(hub, ended=record["status"] in TERMINAL, last=last, last_event_id=last_event_id)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Follow one job live (server-sent events)",
    description=EVENTS_DESCRIPTION,
    dependencies=[StreamReaderDep],
    responses={204: {"description": "`Last-Event-ID` is at or after the job's final status: nothing more "
                     "will come (an EventSource stops reconnecting)"}, **json_error_responses(401, 403, 404, 422, 503)},
)
async def job_events(
    job_id: JobId,
    hub: EventHubDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Depends(events_start)],
) -> AsyncIterator[ServerSentEvent]:
    async for event in follow_job(hub, job_id, last_event_id, heartbeat_s=settings.EVENTS_HEARTBEAT_S):
        yield event


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
    description="Removes the job's record and its saved training state (its model, if any, stays: "
    "`DELETE /models/{id}`). A running job must be cancelled first: 409 says so.",
    dependencies=[WriterDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def delete_job(job_id: JobId, store: JobStoreDep, models: ModelStoreDep) -> Response:
    store.delete_unless_running(job_id)
    TrainingStates(models.storage).discard(job_id)  # after the record: a job found running keeps its state
    return Response(status_code=204)
