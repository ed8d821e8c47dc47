"""POST /predict, /predict/pixels, /predict/batch, /predict/batch/pixels: classify images in eval mode.

Each operation has one request body type, so generated clients can call it: uploads are
multipart (``/predict``: field ``file``; ``/predict/batch``: fields ``files``), pixel arrays
are JSON (``/pixels``). For compatibility ``/predict`` and ``/predict/batch`` also take the JSON
form, outside the schema.

The model is named in one documented place per operation: the body's (or the form's)
``model_id``. ``?model_id=`` is still read, outside the schema, for clients that name it in the
URL (a load generator replaying one body); naming two different models is a 422.

Every route reads its images through ``read_images`` and answers with its response model; the
class names come from the served model's checkpoint (``models.checkpoint.class_names``). The
upload paths are the hot path: they touch neither Redis nor the disk once the model is cached,
and decode off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from PIL import UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from torch import Tensor

from app.deps import ModelStoreDep, PredictorsDep, ReaderDep, SettingsDep
from app.errors import STATUS, BadInput, PayloadTooLarge, UnsupportedMedia, error_responses
from app.metrics import PredictTimer
from app.predictors import Predictors
from app.schemas.predict import (
    MODEL_ID_DESCRIPTION,
    TOP_K_DEFAULT,
    ClassScore,
    PredictBatchOut,
    PredictBatchRequest,
    PredictOut,
    PredictRequest,
)
from bnlenet.model_store import MODEL_ID_PATTERN, ModelStore
from bnlenet.settings import Settings
from models.checkpoint import class_names
from models.lenet import IMAGE_SIZE, MAX_CLASSES
from models.preprocess import ImageError, image_to_tensor, pixels_to_tensor
from models.runtime import Runtime

router = APIRouter(prefix="/predict", tags=["predict"], dependencies=[ReaderDep])
M = TypeVar("M", bound=BaseModel)
S = TypeVar("S")

# Up to the most classes a LeNet may have; a model of fewer classes lists all it has.
TopK = Annotated[int, Query(ge=1, le=MAX_CLASSES, description="how many classes `top_k` lists (a model of fewer "
                            "classes lists them all)")]
# Read, but left out of the document: the body names the model (see the module docstring).
ModelQuery = Annotated[str | None, Query(pattern=MODEL_ID_PATTERN, include_in_schema=False)]

_FILE_DESCRIPTION = f"an image (PNG, JPEG, ...); made {IMAGE_SIZE}x{IMAGE_SIZE} grayscale like the training data"
_MODEL_ID = {"type": "string", "description": MODEL_ID_DESCRIPTION + "; empty: the default"}


def _upload_body(field: str, batch: bool) -> dict[str, Any]:
    """The multipart request body of an upload route, for the OpenAPI document."""
    file = {"type": "string", "format": "binary", "description": _FILE_DESCRIPTION}
    schema = file if not batch else {"type": "array", "minItems": 1, "items": file,
                                     "description": "the images, one field `files` each, answered in this order"}
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [field], "additionalProperties": False,
        "properties": {field: schema, "model_id": _MODEL_ID},
    }}}}


_EVAL = "The model is always in eval mode: an image's answer depends on that image alone and never changes the model."
_ERRORS = error_responses(401, 403, 404, 409, 413, 415, 422)


@router.post(
    "",
    response_model=PredictOut,
    operation_id="predict",
    summary="Classify one uploaded image",
    description="A multipart upload in field `file`, optional field `model_id`. " + _EVAL
    + " (The JSON body of `/predict/pixels` is accepted here too, for older clients.)",
    openapi_extra={"requestBody": _upload_body("file", batch=False)},
    responses=_ERRORS,
)
async def predict(request: Request, settings: SettingsDep, store: ModelStoreDep, predictors: PredictorsDep,
                  top_k: TopK = TOP_K_DEFAULT, model_id: ModelQuery = None) -> PredictOut:
    timer = PredictTimer()
    try:
        images = await read_images(request, settings, batch=False)
        timer.decoded()
        answers = _answers(store, predictors, images, model_id, top_k, timer)
    except Exception as exc:
        timer.done("client_error" if 400 <= STATUS.get(type(exc), 500) < 500
                   or isinstance(exc, RequestValidationError) else "error")
        raise
    timer.done("ok")
    return answers.data[0]


@router.post(
    "/pixels",
    response_model=PredictOut,
    operation_id="predict_pixels",
    summary=f"Classify one image sent as {IMAGE_SIZE}x{IMAGE_SIZE} numbers in [0, 1]",
    description=f"JSON `{{\"pixels\": {IMAGE_SIZE} rows of {IMAGE_SIZE} numbers in [0, 1]}}` (pixel / 255, as the "
    "training data), optional `model_id`. " + _EVAL,
    responses=_ERRORS,
)
async def predict_pixels(body: PredictRequest, request: Request, settings: SettingsDep, store: ModelStoreDep,
                         predictors: PredictorsDep, top_k: TopK = TOP_K_DEFAULT,
                         model_id: ModelQuery = None) -> PredictOut:
    images = await read_images(request, settings, batch=False, body=body)
    return (await run_in_threadpool(_answers, store, predictors, images, model_id, top_k)).data[0]


@router.post(
    "/batch",
    response_model=PredictBatchOut,
    operation_id="predict_batch",
    summary="Classify up to MAX_PREDICT_BATCH uploaded images in one forward pass",
    description="A multipart body with one field `files` per image (at most MAX_PREDICT_BATCH, 256 by default; "
    "413 beyond), optional field `model_id`. One answer per image, in order; each equals that image's "
    "`/predict` answer. A bad image fails the request and the message names its index. " + _EVAL
    + " (The JSON body of `/predict/batch/pixels` is accepted here too.)",
    openapi_extra={"requestBody": _upload_body("files", batch=True)},
    responses=_ERRORS,
)
async def predict_batch(request: Request, settings: SettingsDep, store: ModelStoreDep, predictors: PredictorsDep,
                        top_k: TopK = TOP_K_DEFAULT, model_id: ModelQuery = None) -> PredictBatchOut:
    images = await read_images(request, settings, batch=True)
    return _answers(store, predictors, images, model_id, top_k)


@router.post(
    "/batch/pixels",
    response_model=PredictBatchOut,
    operation_id="predict_batch_pixels",
    summary=f"Classify up to MAX_PREDICT_BATCH images sent as {IMAGE_SIZE}x{IMAGE_SIZE} arrays, in one forward pass",
    description=f"JSON `{{\"images\": [{IMAGE_SIZE}x{IMAGE_SIZE} numbers in [0, 1], ...]}}` (at most "
    "MAX_PREDICT_BATCH, 256 by default; 413 beyond; the whole body is bound by MAX_BODY_BYTES), optional "
    "`model_id`. One answer per image, in order. " + _EVAL,
    responses=_ERRORS,
)
async def predict_batch_pixels(body: PredictBatchRequest, request: Request, settings: SettingsDep,
                               store: ModelStoreDep, predictors: PredictorsDep, top_k: TopK = TOP_K_DEFAULT,
                               model_id: ModelQuery = None) -> PredictBatchOut:
    images = await read_images(request, settings, batch=True, body=body)
    return await run_in_threadpool(_answers, store, predictors, images, model_id, top_k)


# Reading images ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Images:
    """The images of one predict request, as network input, and the model its body names (if any)."""

    tensors: list[Tensor]  # each (1, 1, IMAGE_SIZE, IMAGE_SIZE)
    model_id: str | None


async def read_images(request: Request, settings: Settings, *, batch: bool,
                      body: PredictRequest | PredictBatchRequest | None = None) -> Images:
    """The images a predict request carries, whatever its form: ``body`` when FastAPI has parsed it (the
    ``/pixels`` routes), else the request's own JSON or multipart body (``file``, or ``files`` for a batch)."""
    limit = settings.MAX_PREDICT_BATCH if batch else 1
    if body is None:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            return await _read_uploads(request, settings, field="files" if batch else "file", limit=limit)
        if not ctype.startswith("application/json"):
            raise UnsupportedMedia(
                f"content type {ctype or 'none'!r} is not accepted: send multipart/form-data with "
                + ("one field 'files' per image (or JSON {\"images\": [...]} to /predict/batch/pixels)" if batch else
                   f"the image in field 'file' (or JSON {{\"pixels\": {IMAGE_SIZE}x{IMAGE_SIZE} numbers in [0, 1]}} "
                   "to /predict/pixels)")
            )
        raw = await request.body()
        body = _parse(PredictBatchRequest, raw) if batch else _parse(PredictRequest, raw)
    arrays = body.images if isinstance(body, PredictBatchRequest) else [body.pixels]
    _check_count(len(arrays), limit)
    return Images([_tensor(pixels_to_tensor, pixels, index, batch) for index, pixels in enumerate(arrays)],
                  body.model_id)


def _parse(model: type[M], raw: bytes) -> M:
    """A JSON body read outside FastAPI's parameters, its errors reported as FastAPI's are."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


async def _read_uploads(request: Request, settings: Settings, *, field: str, limit: int) -> Images:
    """The images in multipart field ``field`` (at most ``limit``), decoded off the event loop, and ``model_id``."""
    try:
        # One file part more than the images allowed, so a `model_id` sent as a file is named as
        # such below rather than counted as an image.
        form = await request.form(max_files=limit + 1, max_fields=4, max_part_size=64 * 1024)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # the multipart parser's own errors: a malformed body, too many files
        if "Too many files" in str(exc):
            _check_count(limit + 1, limit, "more than")
        raise BadInput(f"the multipart body cannot be parsed: {exc}") from exc
    images = "images" if limit > 1 else "image"
    try:
        unknown = sorted(set(form.keys()) - {field, "model_id"})
        if unknown:
            raise BadInput(f"unknown multipart field(s) {', '.join(map(repr, unknown))}: send the "
                           f"{images} in '{field}' and optionally 'model_id'")
        uploads = form.getlist(field)
        model_id = form.getlist("model_id")
        if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
            raise BadInput(f"send the {images} as files in the multipart field '{field}'")
        if any(not isinstance(m, str) for m in model_id):
            raise BadInput("model_id must be a plain form field, not a file")
        if len(model_id) > 1:
            raise BadInput("model_id is given more than once: name one model, once")
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
    tensors = await run_in_threadpool(
        lambda: [_tensor(image_to_tensor, data, index, limit > 1) for index, data in enumerate(blobs)])
    return Images(tensors, str(model_id[0]) if model_id and model_id[0] else None)  # an empty field names none


def _tensor(convert: Callable[[S], Tensor], source: S, index: int, batch: bool) -> Tensor:
    """``convert(source)``, its ``ImageError`` as the HTTP error, naming the image's index in a batch."""
    try:
        return convert(source)
    except ImageError as exc:
        where = f"image {index}: " if batch else ""
        if isinstance(exc.__cause__, UnidentifiedImageError):
            raise UnsupportedMedia(f"{where}the upload is not an image PIL can read (PNG, JPEG, ...): {exc}") from exc
        raise BadInput(f"{where}{exc}") from exc


def _check_count(count: int, limit: int, how: str = "") -> None:
    if count > limit:
        said = f"{how} {limit}" if how else str(count)
        raise PayloadTooLarge(f"{said} images is more than the limit of {limit} per request (MAX_PREDICT_BATCH)")


# Answering -----------------------------------------------------------------------------------

def _answers(store: ModelStore, predictors: Predictors, images: Images, query_model: str | None, top_k: int,
             timer: PredictTimer | None = None) -> PredictBatchOut:
    """One answer per image from one forward pass of the model named (timed for /metrics when asked)."""
    loaded = store.get(_model(query_model, images.model_id))
    names = class_names(loaded.metadata)
    started = time.perf_counter()
    runtime, probabilities = predictors.predict(loaded, images.tensors)  # PREDICT_RUNTIME's, per model
    probs = probabilities.tolist()  # (N, classes)
    if timer is not None:
        timer.variant = str(loaded.metadata.get("variant", "unknown"))
        timer.inferred(time.perf_counter() - started)
    data = [_answer(loaded.model_id, names, row, top_k, runtime) for row in probs]
    return PredictBatchOut.model_construct(model_id=loaded.model_id, data=data, count=len(data))


def _model(query: str | None, body: str | None) -> str | None:
    """The model named in the body, or (outside the schema) the query; both must agree."""
    if query is not None and body is not None and query != body:
        raise BadInput(f"model_id is {query!r} in the query but {body!r} in the body: name one model, once")
    return query if query is not None else body


def _answer(model_id: str, names: Sequence[str], probs: list[float], top_k: int, runtime: Runtime) -> PredictOut:
    order = sorted(range(len(probs)), key=lambda i: -probs[i])  # stable: ties keep class order
    top = [ClassScore.model_construct(class_index=i, class_name=names[i], probability=probs[i])
           for i in order[:top_k]]
    k = order[0]
    return PredictOut.model_construct(
        model_id=model_id, class_index=k, class_name=names[k], probability=probs[k],
        scores=dict(zip(names, probs, strict=True)), top_k=top, probabilities=probs, bn_mode="eval", runtime=runtime,
    )
