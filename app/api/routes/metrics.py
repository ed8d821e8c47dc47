"""GET /metrics: the Prometheus exposition (see ``bnlenet.metrics`` for what is in it)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.deps import JobStoreDep, ReaderDep, SettingsDep
from app.errors import error_responses
from bnlenet.metrics import CONTENT_TYPE, JobStoreCollector, render
from bnlenet.training_queue import queue_key

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="The Prometheus text format: HTTP requests, predictions, the model cache, and jobs, queue "
    "and workers read from Redis at scrape time; summed over every API process.",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
                     "description": "The metrics"}, **error_responses(401, 403)},
    dependencies=[ReaderDep],
)
def metrics(request: Request, store: JobStoreDep, settings: SettingsDep) -> Response:
    body = render([JobStoreCollector(store.redis, queue_key(settings))])
    return Response(body, media_type=CONTENT_TYPE)
