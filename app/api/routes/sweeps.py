"""POST /sweeps, GET /sweeps, GET /sweeps/{sweep_id}, GET /sweeps/{sweep_id}/events, POST /sweeps/{sweep_id}/cancel,
DELETE /sweeps/{sweep_id}."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app.api.routes.train import starting_model
from app.deps import (
    DatasetStoreDep,
    EventHubDep,
    ModelStoreDep,
    PublisherDep,
    ReaderDep,
    SettingsDep,
    StreamReaderDep,
    SweepStoreDep,
    WriterDep,
)
from app.errors import QueueFull, error_responses, json_error_responses
from app.events import follow_sweep, open_stream
from app.schemas import SweepList, SweepOut, SweepRequest
from bnlenet.datasets.builtin import BUILTIN_ALIAS
from bnlenet.datasets.store import DatasetStore
from bnlenet.jobs import TERMINAL
from bnlenet.model_store import ModelStore
from bnlenet.sweeps.record import SweepRecord, sweep_view
from bnlenet.sweeps.spec import SweepLimits, SweepSpec, expand, parse_spec, trial_params
from bnlenet.sweeps.store import SweepStore
from bnlenet.training_states import TrainingStates

router = APIRouter(prefix="/sweeps", tags=["sweeps"])
log = logging.getLogger(__name__)

# Any id-shaped text (an unknown one is a 404, as for jobs), not only ``sw-...``.
SweepId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="the sweep's id")]


def sweep_out(store: SweepStore, record: SweepRecord) -> SweepOut:
    return SweepOut.model_validate(sweep_view(record, store.trials(record)))


def _resolved_names(models: ModelStore, datasets: DatasetStore, spec: SweepSpec) -> dict[str, dict[object, object]]:
    """Each trial's ``dataset`` and ``init_model`` checked as POST /train checks them, and resolved to ids
    (a trial trains on what the request named even if an alias moves; 404 for an unknown name)."""
    data: dict[object, object] = {}
    starts: dict[object, object] = {}
    for swept in expand(spec):
        params = trial_params(spec, swept)
        name = params.get("dataset")
        if name not in data:
            data[name] = datasets.resolve(name or BUILTIN_ALIAS)  # None (unset): the default
        if params.get("init_model") is not None:
            starts[params["init_model"]] = starting_model(models, params["init_model"], params["variant"])
    return {"dataset": data, "init_model": starts}


@router.post(
    "",
    status_code=202,
    response_model=SweepOut,
    summary="Start a sweep: many training jobs (trials) from one request",
    description="A grid (each combination of the listed values) or seeded random draws over any POST /train "
    "parameter; `base` holds the parameters every trial shares. Each trial is a job (`GET /jobs?sweep=<id>`) with "
    "its own model. `early_stopping` ends trials that are behind (median rule or ASHA): such a trial succeeds "
    "with `stopped_early: true` and the model after the epochs it ran. The sweep and all its trial jobs are "
    "stored in one transaction: a 4xx or 5xx stores nothing. Over a limit (`MAX_SWEEP_TRIALS`, "
    "`MAX_SWEEP_TOTAL_EPOCHS`, `MAX_SWEEP_VALUES`, the `MAX_<NAME>` caps) is a 422 whose `problems` say what to "
    "change; more trials than `MAX_QUEUED_JOBS` leaves room for is a 429. `Idempotency-Key` works as for /train.",
    dependencies=[WriterDep],
    responses={202: {"description": "The sweep and its trials are queued", "headers": {"Location": {
        "description": "the sweep's URL", "schema": {"type": "string"}}}},
        **error_responses(401, 403, 404, 409, 413, 422, 429, 503)},
)
def create_sweep(
    body: SweepRequest, store: SweepStoreDep, models: ModelStoreDep, datasets: DatasetStoreDep, publisher: PublisherDep, settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(
        min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
        description="a retry with the same key and request returns the sweep the first one made")] = None,
) -> SweepOut:
    spec = parse_spec(body.model_dump(), SweepLimits.from_settings(settings))
    earlier = store.replayed(idempotency_key, spec)  # a retry gets its sweep, whatever changed since
    if earlier is not None:
        response.headers["Location"] = f"/sweeps/{earlier['sweep_id']}"
        return sweep_out(store, earlier)
    trials = len(expand(spec))
    queued = store.jobs.count("queued")
    if settings.MAX_QUEUED_JOBS and queued + trials > settings.MAX_QUEUED_JOBS:
        raise QueueFull(f"{queued} jobs are queued and this sweep adds {trials}, more than this service takes "
                        f"(MAX_QUEUED_JOBS={settings.MAX_QUEUED_JOBS}); try again when some have started, or "
                        "ask for fewer trials")
    record, new = store.create(spec, idempotency_key=idempotency_key, resolve=_resolved_names(models, datasets, spec))
    if new:  # stored with every trial in the outbox: a lost publish is published again by the workers
        for ref in record["trials"]:
            try:
                store.jobs.published(ref["job_id"], publisher.publish(ref["job_id"]))
            except Exception as exc:
                log.warning("trial %s of sweep %s is stored; its publish failed and the outbox will retry it: %s",
                            ref["job_id"], record["sweep_id"], exc)
    response.headers["Location"] = f"/sweeps/{record['sweep_id']}"
    return sweep_out(store, record)


@router.get("", response_model=SweepList, summary="List sweeps, newest first", dependencies=[ReaderDep],
            responses=error_responses(401, 403, 422, 503))
def list_sweeps(
    store: SweepStoreDep,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SweepList:
    records, total = store.list(offset=offset, limit=limit)
    return SweepList(data=[sweep_out(store, r) for r in records], count=total)


@router.get("/{sweep_id}", response_model=SweepOut, summary="One sweep: its trials, the best, per setting",
            dependencies=[ReaderDep], responses=error_responses(401, 403, 404, 422, 503))
def get_sweep(sweep_id: SweepId, store: SweepStoreDep) -> SweepOut:
    return sweep_out(store, store.get(sweep_id))


@router.post("/{sweep_id}/cancel", response_model=SweepOut, summary="Cancel a sweep",
             description="Every queued trial is cancelled at once; every running one stops between batches "
             "(its job becomes `cancelled` shortly after). Trials that ended keep their outcome and model.",
             dependencies=[WriterDep], responses=error_responses(401, 403, 404, 422, 503))
def cancel_sweep(sweep_id: SweepId, store: SweepStoreDep) -> SweepOut:
    return sweep_out(store, store.request_cancel(sweep_id))


@router.delete("/{sweep_id}", status_code=204, summary="Delete a sweep and its trials' jobs",
               description="Removes the sweep, its trials' job records and their saved training states; their "
               "models stay (`DELETE /models/{id}`). Refused (409) until every trial has ended: cancel it first.",
               dependencies=[WriterDep], responses=error_responses(401, 403, 404, 409, 422, 503))
def delete_sweep(sweep_id: SweepId, store: SweepStoreDep, models: ModelStoreDep) -> Response:
    states = TrainingStates(models.storage)
    for job_id in store.delete(sweep_id):
        states.discard(job_id)
    return Response(status_code=204)


async def events_start(
    sweep_id: SweepId, store: SweepStoreDep, hub: EventHubDep,
    last_event_id: Annotated[str | None, Header(
        pattern=r"^[0-9]+-[0-9]+$", max_length=64, description="resume after this event id")] = None,
) -> str | None:
    """404 unknown sweep, 503 no Redis, 204 once the client has seen the end (as for a job's events)."""
    record, trials, last = await run_in_threadpool(store.snapshot, sweep_id)
    ended = sweep_view(record, trials)["status"] in TERMINAL
    return await open_stream(hub, ended=ended, last=last, last_event_id=last_event_id)


@router.get(
    "/{sweep_id}/events",
    response_class=EventSourceResponse,
    summary="Follow a sweep live (server-sent events)",
    description="First a `sweep` event with the whole sweep (as `GET /sweeps/{sweep_id}`); then `epoch` with each "
    "finished epoch of any trial (its metrics and `job_id`), `trial` with a trial's whole job whenever its status "
    "changes, each followed by a fresh `sweep` (the sweep as it stands then); the stream closes once the last trial "
    "has ended. "
    "`Last-Event-ID` resumes as for a job's events.",
    dependencies=[StreamReaderDep],
    responses={204: {"description": "`Last-Event-ID` is at or after the sweep's end"},
               **json_error_responses(401, 403, 404, 422, 503)},
)
async def sweep_events(
    sweep_id: SweepId, store: SweepStoreDep, hub: EventHubDep, settings: SettingsDep,
    last_event_id: Annotated[str | None, Depends(events_start)],
) -> AsyncIterator[ServerSentEvent]:
    async for event in follow_sweep(hub, store, sweep_id, last_event_id, heartbeat_s=settings.EVENTS_HEARTBEAT_S):
        yield event
