"""POST /train: queue a training job.

The router is built per app (``make_router``): the request model carries that app's
settings' caps (``MAX_EPOCHS`` and the like), so ``create_app(Settings(MAX_LR=...))`` changes
both the validation and the schema.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel

from app.deps import DatasetStoreDep, JobStoreDep, ModelStoreDep, PublisherDep, WriterDep
from app.errors import BadInput, QueueFull, error_responses
from app.faults import fault_point
from app.schemas import JobOut, train_request_model
from bnlenet.datasets.builtin import BUILTIN_ALIAS
from bnlenet.jobs.store import fingerprint
from bnlenet.model_store import ModelStore, ModelUnusable, UnknownModel
from bnlenet.settings import Settings
from models.init_model import variant_mismatch

log = logging.getLogger(__name__)


def starting_model(store: ModelStore, name: str, variant: str) -> str:
    """The id of the model ``init_model`` names, once it is known to start a job of ``variant``.

    An alias is resolved now, so the job starts from the model checked here even if the alias
    moves before it runs. Unknown: 422 (the body names nothing); does not verify: 409; another
    variant: 422.
    """
    try:
        model_id = store.resolve(name)
        meta = store.metadata(model_id)
    except UnknownModel as exc:
        raise BadInput(f"init_model {name!r}: {exc}; name a model in GET /models, or leave init_model out "
                       "for fresh weights") from None
    except ModelUnusable as exc:
        raise ModelUnusable(exc.model_id, f"{exc.reason}; init_model must name a model that verifies") from None
    problem = variant_mismatch(name, meta["variant"], variant)
    if problem is not None:
        raise BadInput(problem)
    return model_id


def make_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/train", tags=["train"])

    def create_training_job(
        body: BaseModel, store: JobStoreDep, models: ModelStoreDep, datasets: DatasetStoreDep, publisher: PublisherDep,
        response: Response,
        idempotency_key: Annotated[str | None, Header(
            min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
            description="any unique string (a UUID, say): a retry with the same key and parameters returns "
            "the job the first request made instead of a second one; kept for a day",
        )] = None,
    ) -> JobOut:
        # The record goes into the outbox with the job (one transaction), then the task is
        # published: a crash or a broker failure in between leaves the job in the outbox, and
        # the workers publish it a few seconds later. So once the record is stored, the answer
        # is 202; a 503 means nothing was stored.
        # A soft limit (a check, then a create): a burst may pass it by a few, never by many.
        params = body.model_dump()
        # A retry is the request as the client sent it: it gets its job whatever changed since (an alias
        # moved, a model deleted, the queue filled up), so the key is looked up before anything else.
        request = fingerprint(params)
        earlier = store.replayed_job(idempotency_key, request)
        if earlier is not None:
            response.headers["Location"] = f"/jobs/{earlier['job_id']}"
            return JobOut.model_validate(earlier)
        # An alias is resolved now: the job trains on the data set named here even if the alias moves (404: none).
        params["dataset"] = datasets.resolve(params.get("dataset") or BUILTIN_ALIAS)  # null: the default
        if params.get("init_model") is not None:
            params["init_model"] = starting_model(models, params["init_model"], params["variant"])
        queued = store.count("queued")
        if settings.MAX_QUEUED_JOBS and queued >= settings.MAX_QUEUED_JOBS:
            raise QueueFull(f"{queued} jobs are queued, the most this service takes (MAX_QUEUED_JOBS="
                            f"{settings.MAX_QUEUED_JOBS}); try again when some have started, or cancel some")
        record, new = store.submit(params, idempotency_key=idempotency_key, request=request)
        job_id = record["job_id"]
        if new:
            fault_point("after-store-before-publish")
            try:
                record = store.published(job_id, publisher.publish(job_id))
            except Exception as exc:
                log.warning("job %s is stored; its publish failed and the outbox will retry it: %s", job_id, exc)
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
        operation_id="train",
        summary="Queue a training job",
        description="Validates the parameters, stores a queued job and hands it to a worker. "
        "Answers 202 with the job and `Location: /jobs/<id>`; poll that to follow it. A 503 means nothing "
        "was stored; after a 202 the job runs even if the broker hiccups (it is published again from an "
        "outbox). Send `Idempotency-Key` to make retries safe: the same key and parameters return the same "
        "job (409 if the key was used with other parameters). Precise BN is on "
        "by default: the stored model's BN statistics are recomputed as true averages after training, "
        "which scores higher and varies less across seeds than the moving averages (`precise_bn: false`). "
        "`final_test_acc` is the stored model's accuracy; `history` keeps the per-epoch moving-average figures. "
        "`init_model` starts from a model's weights and BN statistics (fine-tuning): an alias is resolved to "
        "the model's id here; an unknown model or one of another variant is a 422, one that does not verify a 409. "
        "`dataset` names the data set to train on (GET /datasets; default the built-in Fashion-MNIST): an alias "
        "is resolved to the data set's id here, and the job records the id; an unknown data set is a 404.",
        dependencies=[WriterDep],
        responses={
            202: {"description": "The job is queued", "headers": {"Location": {
                "description": "the job's URL, `/jobs/<job_id>`: poll it", "schema": {"type": "string"}}}},
            **error_responses(401, 403, 404, 409, 413, 422, 429, 503),
        },
    )
    return router
