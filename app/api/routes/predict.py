"""POST /predict, /predict/pixels, /predict/batch, /predict/batch/pixels: classify images in eval mode.

Each operation has one request body type, so generated clients can call it: uploads are
multipart (``/predict``: field ``file``; ``/predict/batch``: fields ``files``), pixel arrays
are JSON (``/pixels``). For compatibility ``/predict`` and ``/predict/batch`` also take the JSON
form, outside the schema.

The upload paths are the hot path: they read the body themselves rather than through FastAPI's
parameter machinery, touch neither Redis nor the disk once the model is cached, and write the
JSON answer directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from PIL import UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from torch import Tensor

from app.deps import ReaderDep
from app.errors import STATUS, BadInput, PayloadTooLarge, UnsupportedMedia, error_responses
from app.metrics import PredictTimer
from app.predictors import Predictors
from app.schemas import (
    MODEL_ID_DESCRIPTION,
    TOP_K_DEFAULT,
    PredictBatchOut,
    PredictBatchRequest,
    PredictOut,
    PredictRequest,
)
from bnlenet.model_store import MODEL_ID_PATTERN, LoadedModel, ModelStore
from bnlenet.settings import Settings
from models.data import CLASS_NAMES
from models.preprocess import ImageError, image_to_tensor, pixels_to_tensor

router = APIRouter(prefix="/predict", tags=["predict"])
M = TypeVar("M", bound=BaseModel)

TopK = Annotated[int, Query(ge=1, le=len(CLASS_NAMES), description="how many classes `top_k` lists")]

_FILE_DESCRIPTION = "an image (PNG, JPEG, ...); made 28x28 grayscale like the training data"
_MODEL_ID = {"type": "string", "description": MODEL_ID_DESCRIPTION}
ModelQuery = Annotated[str | None, Query(pattern=MODEL_ID_PATTERN, description=MODEL_ID_DESCRIPTION + " (here or in the body)")]
_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "additionalProperties": False,
        "properties": {"file": {"type": "string", "format": "binary", "description": _FILE_DESCRIPTION},
                       "model_id": _MODEL_ID},
    }}},
}
_BATCH_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"], "additionalProperties": False,
        "properties": {"files": {"type": "array", "minItems": 1,
                                 "items": {"type": "string", "format": "binary", "description": _FILE_DESCRIPTION},
                                 "description": "the images, one field `files` each, answered in this order"},
                       "model_id": _MODEL_ID},
    }}},
}
_EVAL = "The model is always in eval mode: an image's answer depends on that image alone and never changes the model."
_ERRORS = error_responses(401, 403, 404, 409, 413, 415, 422)


@router.post(
    "",
    response_model=PredictOut,
    operation_id="predict",
    summary="Classify one uploaded image",
    description="A multipart upload in field `file`, optional field `model_id`. " + _EVAL
    + " (The JSON body of `/predict/pixels` is accepted here too, for older clients.)",
    openapi_extra={"requestBody": _UPLOAD_BODY},
    dependencies=[ReaderDep],
    responses=_ERRORS,
)
async def predict(request: Request, top_k: TopK = TOP_K_DEFAULT, model_id: ModelQuery = None) -> Response:
    timer = PredictTimer()
    try:
        response = await _predict(request, top_k, model_id, timer)
    except Exception as exc:
        timer.done("client_error" if 400 <= STATUS.get(type(exc), 500) < 500
                   or isinstance(exc, RequestValidationError) else "error")
        raise
    timer.done("ok")
    return response


async def _predict(request: Request, top_k: int, query_model: str | None, timer: PredictTimer) -> Response:
    settings: Settings = request.app.state.settings
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        body = _parse(PredictRequest, await request.body())
        timer.decoded()
        return _json(_answers(request, [_pixels(body.pixels)], _model(query_model, body.model_id), top_k,
                              timer)[1][0])
    if not ctype.startswith("multipart/form-data"):
        raise UnsupportedMedia(
            f"content type {ctype or 'none'!r} is not accepted: send multipart/form-data with the image in "
            "field 'file' (or JSON {\"pixels\": 28x28 numbers in [0, 1]} to /predict/pixels)"
        )
    images, model_id = await _read_uploads(request, settings, field="file", limit=1)
    timer.decoded()
    return _json(_answers(request, images, _model(query_model, model_id), top_k, timer)[1][0])


@router.post(
    "/pixels",
    response_model=PredictOut,
    operation_id="predict_pixels",
    summary="Classify one image sent as 28x28 numbers in [0, 1]",
    description="JSON `{\"pixels\": 28 rows of 28 numbers in [0, 1]}` (pixel / 255, as the training data), "
    "optional `model_id`. " + _EVAL,
    dependencies=[ReaderDep],
    responses=_ERRORS,
)
def predict_pixels(body: PredictRequest, request: Request, top_k: TopK = TOP_K_DEFAULT,
                   model_id: ModelQuery = None) -> Response:
    return _json(_answers(request, [_pixels(body.pixels)], _model(model_id, body.model_id), top_k)[1][0])


@router.post(
    "/batch",
    response_model=PredictBatchOut,
    operation_id="predict_batch",
    summary="Classify up to MAX_PREDICT_BATCH uploaded images in one forward pass",
    description="A multipart body with one field `files` per image (at most MAX_PREDICT_BATCH, 256 by default; "
    "413 beyond), optional field `model_id`. One answer per image, in order; each equals that image's "
    "`/predict` answer. A bad image fails the request and the message names its index. " + _EVAL
    + " (The JSON body of `/predict/batch/pixels` is accepted here too.)",
    openapi_extra={"requestBody": _BATCH_UPLOAD_BODY},
    dependencies=[ReaderDep],
    responses=_ERRORS,
)
async def predict_batch(request: Request, top_k: TopK = TOP_K_DEFAULT, model_id: ModelQuery = None) -> Response:
    settings: Settings = request.app.state.settings
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        body = _parse(PredictBatchRequest, await request.body())
        return _batch(request, body, top_k, model_id)
    if not ctype.startswith("multipart/form-data"):
        raise UnsupportedMedia(
            f"content type {ctype or 'none'!r} is not accepted: send multipart/form-data with one field 'files' "
            "per image (or JSON {\"images\": [...]} to /predict/batch/pixels)"
        )
    images, form_model = await _read_uploads(request, settings, field="files", limit=settings.MAX_PREDICT_BATCH)
    loaded, answers = _answers(request, images, _model(model_id, form_model), top_k)
    return _json({"model_id": loaded.model_id, "data": answers, "count": len(answers)})


@router.post(
    "/batch/pixels",
    response_model=PredictBatchOut,
    operation_id="predict_batch_pixels",
    summary="Classify up to MAX_PREDICT_BATCH images sent as 28x28 arrays, in one forward pass",
    description="JSON `{\"images\": [28x28 numbers in [0, 1], ...]}` (at most MAX_PREDICT_BATCH, 256 by default; "
    "413 beyond; the whole body is bound by MAX_BODY_BYTES), optional `model_id`. One answer per image, in "
    "order. " + _EVAL,
    dependencies=[ReaderDep],
    responses=_ERRORS,
)
def predict_batch_pixels(body: PredictBatchRequest, request: Request, top_k: TopK = TOP_K_DEFAULT,
                         model_id: ModelQuery = None) -> Response:
    return _batch(request, body, top_k, model_id)


def _batch(request: Request, body: PredictBatchRequest, top_k: int, query_model: str | None) -> Response:
    _check_count(len(body.images), request.app.state.settings.MAX_PREDICT_BATCH)
    images = []
    for index, pixels in enumerate(body.images):
        try:
            images.append(_pixels(pixels))
        except BadInput as exc:
            raise BadInput(f"image {index}: {exc}") from exc
    loaded, answers = _answers(request, images, _model(query_model, body.model_id), top_k)
    return _json({"model_id": loaded.model_id, "data": answers, "count": len(answers)})


def _model(query: str | None, body: str | None) -> str | None:
    """The model named in the query or the body (either; both must agree)."""
    if query is not None and body is not None and query != body:
        raise BadInput(f"model_id is {query!r} in the query but {body!r} in the body: name one model, once")
    return query if query is not None else body


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise PayloadTooLarge(f"{count} images is more than the limit of {limit} per request (MAX_PREDICT_BATCH)")


def _answers(request: Request, images: Sequence[Tensor], model_id: str | None,
             top_k: int, timer: PredictTimer | None = None) -> tuple[LoadedModel, list[dict[str, Any]]]:
    """The model and one answer per image, from one forward pass (timed for /metrics when asked)."""
    loaded = _store(request).get(model_id)
    started = time.perf_counter()
    predictors: Predictors = request.app.state.predictors  # PREDICT_RUNTIME's, per model
    runtime, probabilities = predictors.predict(loaded, images)
    probs = probabilities.tolist()  # (N, 10)
    if timer is not None:
        timer.variant = str(loaded.metadata.get("variant", "unknown"))
        timer.inferred(time.perf_counter() - started)
    return loaded, [_answer(loaded.model_id, row, top_k, runtime) for row in probs]


def _answer(model_id: str, probs: list[float], top_k: int, runtime: str) -> dict[str, Any]:
    order = sorted(range(len(probs)), key=lambda i: -probs[i])  # stable: ties keep class order
    top = [{"class_index": i, "class_name": CLASS_NAMES[i], "probability": probs[i]} for i in order[:top_k]]
    k = order[0]
    return {
        "model_id": model_id, "class_index": k, "class_name": CLASS_NAMES[k], "probability": probs[k],
        "scores": dict(zip(CLASS_NAMES, probs, strict=True)), "top_k": top, "probabilities": probs,
        "bn_mode": "eval", "runtime": runtime,
    }


def _json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), media_type="application/json")


def _store(request: Request) -> ModelStore:
    return request.app.state.model_store


def _parse(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def _pixels(pixels: list[list[float]]) -> Tensor:
    try:
        return pixels_to_tensor(pixels)
    except ImageError as exc:
        raise BadInput(str(exc)) from exc


async def _read_uploads(request: Request, settings: Settings, *, field: str,
                        limit: int) -> tuple[list[Tensor], str | None]:
    """The images in multipart field ``field`` (at most ``limit``), decoded off the event loop, and ``model_id``."""
    try:
        form = await request.form(max_files=limit, max_fields=4, max_part_size=64 * 1024)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # the multipart parser's own errors: a malformed body, too many files
        if "Too many files" in str(exc):
            _check_count(limit + 1, limit)
        raise BadInput(f"the multipart body cannot be parsed: {exc}") from exc
    try:
        unknown = sorted(set(form.keys()) - {field, "model_id"})
        if unknown:
            raise BadInput(f"unknown multipart field(s) {', '.join(map(repr, unknown))}: send the "
                           f"image{'s' if limit > 1 else ''} in '{field}' and optionally 'model_id'")
        uploads = form.getlist(field)
        model_id = form.get("model_id")
        if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
            raise BadInput(f"send the image{'s' if limit > 1 else ''} as files in the multipart field '{field}'")
        if model_id is not None and not isinstance(model_id, str):
            raise BadInput("model_id must be a plain form field, not a file")
        _check_count(len(uploads), limit)
        blobs = []
        for index, upload in enumerate(uploads):
            assert isinstance(upload, UploadFile)
            data = await upload.read(settings.MAX_UPLOAD_BYTES + 1)
            if len(data) > settings.MAX_UPLOAD_BYTES:
                name = "the image" if limit == 1 else f"image {index}"
                raise PayloadTooLarge(f"{name} is larger than the limit of {settings.MAX_UPLOAD_BYTES} bytes")
            blobs.append(data)
    finally:
        await form.close()
    # Decoding takes milliseconds to tens of them: off the event loop, so one upload never
    # holds up the other requests (or /healthz) of this process.
    return await run_in_threadpool(_decode_all, blobs, limit == 1), model_id or None


def _decode_all(blobs: list[bytes], single: bool) -> list[Tensor]:
    images = []
    for index, data in enumerate(blobs):
        try:
            images.append(image_to_tensor(data))
        except ImageError as exc:
            where = "" if single else f"image {index}: "
            if isinstance(exc.__cause__, UnidentifiedImageError):
                raise UnsupportedMedia(f"{where}the upload is not an image PIL can read (PNG, JPEG, ...): {exc}") from exc
            raise BadInput(f"{where}{exc}") from exc
    return images
