"""Domain exceptions and the one place that maps them to HTTP answers.

    StoreUnavailable (bnlenet.jobs)        503  Redis is down: training and jobs wait for it
    JobNotFound (bnlenet.jobs)             404
    JobFinished (bnlenet.jobs)             409  cancelling a job that already ended
    MalformedJob (bnlenet.jobs)            409  a stored record that cannot be read (that job alone)
    IdempotencyConflict (bnlenet.jobs)     409  an Idempotency-Key reused with other parameters
    JobRunning (bnlenet.jobs)              409  deleting a running job: cancel it first
    SweepNotFound (bnlenet.sweeps)         404
    SweepRunning (bnlenet.sweeps)          409  deleting a sweep whose trials have not ended: cancel it first
    SweepRejected (bnlenet.sweeps)         422  a sweep over the limits, or asking what a job cannot take
    QueueFull                              429  MAX_QUEUED_JOBS are waiting (with Retry-After)
    UnknownModel (bnlenet.model_store)     404  also any id that could never name a model
    NoModelYet (bnlenet.model_store)       409  train one first
    ModelUnusable (bnlenet.model_store)    409  the checkpoint is corrupt, tampered or not ours
    AliasConflict (bnlenet.model_store)    409  an alias that would shadow a model, or a delete under an alias
    ObjectStoreUnavailable                 503  the S3 model store cannot be reached (loaded models still serve)
    UnknownDataset (bnlenet.datasets)      404  no data set or alias with this name
    DatasetInUse (bnlenet.datasets)        409  deleting a data set jobs or models use, or the built-in one
    DatasetRejected (bnlenet.datasets)     its own (413, 415 or 422)  an upload refused; ``problems`` lists them all
    DataError (models.data)                503  the built-in data set's files are not on this host
    BadInput                               422  a body that parsed but says something impossible
    UnsupportedMedia                       415  not an image, or a content type /predict does not take
    PayloadTooLarge                        413
    Unauthorized / Forbidden               401 / 403

Every answer is ``{"detail": "..."}`` with a message that says what to fix; a request that fails
validation (422) adds ``errors``, a list of ``{loc, msg, type, ctx}``, one per field (the first
``MAX_FIELD_ERRORS``), and its ``detail`` sums up the first few.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from bnlenet.datasets import DatasetRejected
from bnlenet.datasets.store import DatasetInUse, UnknownDataset
from bnlenet.jobs import IdempotencyConflict, JobFinished, JobNotFound, JobRunning, MalformedJob, StoreUnavailable
from bnlenet.model_store import AliasConflict, ModelUnusable, NoModelYet, ObjectStoreUnavailable, UnknownModel
from bnlenet.sweeps.errors import SweepNotFound, SweepRunning
from bnlenet.sweeps.spec import SweepRejected
from models.data import DataError

__all__ = [
    "BadInput",
    "Forbidden",
    "PayloadTooLarge",
    "QueueFull",
    "Unauthorized",
    "UnsupportedMedia",
    "error_responses",
    "install_error_handlers",
]


class QueueFull(RuntimeError):
    """As many jobs are queued as MAX_QUEUED_JOBS allows."""


class BadInput(ValueError):
    """A request body that is well-formed but unusable."""


class UnsupportedMedia(ValueError):
    """Not an image, or a content type the endpoint does not accept."""


class PayloadTooLarge(ValueError):
    """A body or upload over the configured limit."""


class Unauthorized(PermissionError):
    """No bearer token where one is required."""


class Forbidden(PermissionError):
    """A bearer token that is not the right one."""


STATUS: dict[type[Exception], int] = {
    StoreUnavailable: 503,
    ObjectStoreUnavailable: 503,
    JobNotFound: 404,
    UnknownModel: 404,
    UnknownDataset: 404,
    DatasetInUse: 409,
    DataError: 503,
    JobFinished: 409,
    MalformedJob: 409,
    IdempotencyConflict: 409,
    JobRunning: 409,
    SweepNotFound: 404,
    SweepRunning: 409,
    SweepRejected: 422,
    QueueFull: 429,
    NoModelYet: 409,
    ModelUnusable: 409,
    AliasConflict: 409,
    BadInput: 422,
    UnsupportedMedia: 415,
    PayloadTooLarge: 413,
    Unauthorized: 401,
    Forbidden: 403,
}

_DESCRIPTIONS = {
    401: "A bearer token is required (Authorization: Bearer <token>)",
    403: "The bearer token is wrong",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Body or upload too large",
    415: "Unsupported media type or not an image",
    422: "Invalid input: the message says what is allowed",
    429: "Too many jobs queued (MAX_QUEUED_JOBS); Retry-After says when to try again",
    503: "A backing service is unavailable: Redis (job store and queue), or the model object store",
}


RETRY_AFTER_S = 5  # a 503's Retry-After: Redis restarts in about this long
_HEADERS: dict[int, dict[str, object]] = {
    401: {"headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}},
    503: {"headers": {"Retry-After": {"description": "seconds to wait before trying again",
                                      "schema": {"type": "integer"}}}},
}
QUEUE_FULL_RETRY_AFTER_S = 30  # a short job takes about this long; the queue moves by then


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses`` entries for these status codes."""
    from app.schemas import ErrorOut

    return {code: {"model": ErrorOut, "description": _DESCRIPTIONS[code], **_HEADERS.get(code, {})} for code in codes}


def json_error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """As ``error_responses``, stated as JSON for a route whose own answer is another type (an event stream)."""
    schema = {"$ref": "#/components/schemas/ErrorOut"}  # the other routes' error_responses put it there
    return {code: {"description": _DESCRIPTIONS[code], "content": {"application/json": {"schema": schema}},
                   **_HEADERS.get(code, {})} for code in codes}


def _handler(status: int):  # type: ignore[no-untyped-def]
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 503:
            headers = {"Retry-After": str(RETRY_AFTER_S)}
        if status == 429:
            headers = {"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)}
        body: dict[str, Any] = {"detail": str(exc)}
        if isinstance(exc, SweepRejected):
            body["problems"] = exc.problems
        return JSONResponse(body, status_code=status, headers=headers)

    return handle


MAX_FIELD_ERRORS = 20  # a 28x28 array out of range has 784 errors; the first few say what is wrong


def _plain_error(err: dict[str, Any]) -> dict[str, Any]:
    """A validation error without the offending input (it may be NaN, huge, or binary)."""
    out: dict[str, Any] = {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
    if isinstance(err.get("ctx"), dict):
        out["ctx"] = {k: str(v) for k, v in err["ctx"].items()}
    return out


def _summary(errors: list[dict[str, Any]]) -> str:
    """The field errors in one sentence: ``body.epochs: Input should be ...; ...``."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "invalid input: " + "; ".join(parts) + more


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_plain_error(e) for e in exc.errors()]
    return JSONResponse({"detail": _summary(errors), "errors": errors[:MAX_FIELD_ERRORS]}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI answers an undecodable body with 400; it is invalid input like any other: 422."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        return JSONResponse({"detail": f"the body cannot be parsed: {exc.detail}; send valid JSON (UTF-8)"},
                            status_code=422)
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; a path served by several
        # routes (GET and DELETE /jobs/{id}) allows the methods of them all, as the document says.
        allowed = _allowed_methods(request)
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)  # type: ignore[return-value]


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API document offers on this request's path (a literal path wins over a template)."""
    paths: dict[str, dict[str, Any]] = request.app.openapi().get("paths", {})
    path = request.url.path
    matching = [template for template in paths if re.fullmatch(_template_pattern(template), path)]
    literal = [t for t in matching if t == path]
    return sorted({m.upper() for t in (literal or matching) for m in paths[t]})


def _template_pattern(template: str) -> str:
    """``/jobs/{job_id}`` as a regular expression: each ``{name}`` one path segment."""
    return "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^}]+\})", template))


async def _dataset_rejected(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DatasetRejected)
    return JSONResponse({"detail": str(exc), "problems": list(exc.problems)}, status_code=exc.status)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed the connection before its body arrived: nobody reads the answer, and
    # it is no error of the service's, so no traceback in the log either.
    return Response(status_code=400)


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, status in STATUS.items():
        app.add_exception_handler(exc_type, _handler(status))
    app.add_exception_handler(DatasetRejected, _dataset_rejected)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
