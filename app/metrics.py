"""The API's side of the metrics: HTTP requests counted by a pure ASGI middleware, /predict's phases, and
the model store's cache observed from outside (``MeteredModelStore``).

The middleware does no work per request beyond two clock reads, one dictionary lookup and two
metric updates: no request object, no body wrapping, so /predict costs what it did. Requests
are labelled by their route template (``/jobs/{job_id}``), never the raw path, so ids do not
become label values.
"""

from __future__ import annotations

import time
from functools import cache

from prometheus_client.metrics import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bnlenet.metrics import (
    HTTP_DURATION,
    HTTP_REQUESTS,
    MODEL_CACHE,
    MODEL_LOAD_SECONDS,
    MODEL_LOADS,
    PREDICT_DURATION,
    PREDICT_REQUESTS,
)
from bnlenet.model_store import LoadedModel, ModelStore, ModelUnusable, ObjectStoreUnavailable, UnknownModel

__all__ = ["HttpMetrics", "MeteredModelStore", "PredictTimer"]


class HttpMetrics:
    """Count every HTTP request by method, route template and status, and time it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = _route_of(scope)
            method = scope["method"]
            _requests(method, route, status).inc()
            _duration(method, route).observe(time.perf_counter() - started)


# Each labelled child is looked up once per process, then kept: a lookup takes prometheus_client's
# lock and costs about as much as the update itself. Label values are few (route templates).
@cache
def _requests(method: str, route: str, status: int) -> Counter:
    return HTTP_REQUESTS.labels(method, route, str(status))


@cache
def _duration(method: str, route: str) -> Histogram:
    return HTTP_DURATION.labels(method, route)


@cache
def _predicts(variant: str, outcome: str) -> Counter:
    return PREDICT_REQUESTS.labels(variant, outcome)


_DECODE, _INFERENCE, _OTHER = (PREDICT_DURATION.labels(phase) for phase in ("decode", "inference", "other"))


def _route_of(scope: Scope) -> str:
    route = scope.get("route")  # set by FastAPI's router on a match
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if str(scope.get("path", "")).startswith("/static/"):
        return "/static"
    return "<unmatched>"  # 404s: one label value, whatever the path


class PredictTimer:
    """Times one /predict call in three phases and counts it by variant and outcome."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.decode = 0.0
        self.inference = 0.0
        self.variant = "unknown"

    def decoded(self) -> None:
        self.decode = time.perf_counter() - self.started

    def inferred(self, seconds: float) -> None:
        self.inference = seconds

    def done(self, outcome: str) -> None:
        total = time.perf_counter() - self.started
        _predicts(self.variant, outcome).inc()
        _DECODE.observe(self.decode)
        _INFERENCE.observe(self.inference)
        _OTHER.observe(max(0.0, total - self.decode - self.inference))


_CACHE_HIT, _CACHE_MISS = MODEL_CACHE.labels("hit"), MODEL_CACHE.labels("miss")
_LOAD_OK, _LOAD_ERROR = MODEL_LOADS.labels("ok"), MODEL_LOADS.labels("error")


class MeteredModelStore(ModelStore):
    """The API's model store, observed for /metrics: each lookup a hit or a miss, each load timed and counted."""

    def cached(self, model_id: str) -> LoadedModel | None:
        loaded = super().cached(model_id)
        (_CACHE_HIT if loaded is not None else _CACHE_MISS).inc()
        return loaded

    def load(self, model_id: str) -> LoadedModel:
        started = time.perf_counter()
        try:
            loaded = super().load(model_id)
        except (UnknownModel, ModelUnusable, ObjectStoreUnavailable):
            _LOAD_ERROR.inc()
            raise
        _LOAD_OK.inc()
        MODEL_LOAD_SECONDS.observe(time.perf_counter() - started)
        return loaded
