"""POST /predict: classify one image with a trained model, always in eval mode.

This is the hot path. It reads the body itself (multipart or JSON) rather than through
FastAPI's parameter machinery, touches neither Redis nor the disk once the model is cached,
and writes the JSON answer directly.
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from PIL import UnidentifiedImageError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from torch import Tensor

from app.deps import check_token
from app.errors import STATUS, BadInput, PayloadTooLarge, UnsupportedMedia, error_responses
from app.metrics import PredictTimer
from app.schemas import PredictOut, PredictRequest
from bnlenet.model_store import ModelStore
from bnlenet.settings import Settings
from models.data import CLASS_NAMES
from models.inference import predict_probabilities
from models.preprocess import ImageError, image_to_tensor, pixels_to_tensor

router = APIRouter(prefix="/predict", tags=["predict"])

_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "an image (PNG, JPEG, ...); made 28x28 grayscale like the training data"},
                    "model_id": {"type": "string", "description": "default: the newest trained model"},
                },
            },
        },
        "application/json": {"schema": PredictRequest.model_json_schema()},
    },
}


@router.post(
    "",
    response_model=PredictOut,
    summary="Classify one image",
    description="Send a multipart upload in field `file`, or JSON `{\"pixels\": 28x28 numbers in [0, 1]}`. "
    "Optional `model_id` (default: the newest trained model). The model is always in eval mode: "
    "the answer depends on this image alone and never changes the model.",
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses=error_responses(401, 403, 404, 409, 413, 415, 422),
)
async def predict(request: Request) -> Response:
    timer = PredictTimer()
    try:
        response = await _predict(request, timer)
    except Exception as exc:
        timer.done("client_error" if 400 <= STATUS.get(type(exc), 500) < 500
                   or isinstance(exc, RequestValidationError) else "error")
        raise
    timer.done("ok")
    return response


async def _predict(request: Request, timer: PredictTimer) -> Response:
    settings: Settings = request.app.state.settings
    if settings.PROTECT_READS:
        check_token(settings, request.headers.get("authorization"))
    X, model_id = await _read_input(request, settings)
    timer.decoded()
    loaded = _model_store(request).get(model_id)
    timer.variant = str(loaded.metadata.get("variant", "unknown"))
    started = time.perf_counter()
    probs = predict_probabilities(loaded.model, X)[0].tolist()  # (10,)
    timer.inferred(time.perf_counter() - started)
    k = max(range(len(probs)), key=probs.__getitem__)
    body = {"class_index": k, "class_name": CLASS_NAMES[k], "probabilities": probs, "model_id": loaded.model_id}
    return Response(json.dumps(body), media_type="application/json")


def _model_store(request: Request) -> ModelStore:
    return request.app.state.model_store


async def _read_input(request: Request, settings: Settings) -> tuple[Tensor, str | None]:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        return await _read_upload(request, settings)
    if ctype.startswith("application/json"):
        try:
            body = PredictRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
        try:
            return pixels_to_tensor(body.pixels), body.model_id
        except ImageError as exc:
            raise BadInput(str(exc)) from exc
    raise UnsupportedMedia(
        f"content type {ctype or 'none'!r} is not accepted: send multipart/form-data with the image in "
        "field 'file', or application/json with {\"pixels\": 28x28 numbers in [0, 1]}"
    )


async def _read_upload(request: Request, settings: Settings) -> tuple[Tensor, str | None]:
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=64 * 1024)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # the multipart parser's own errors: a malformed body
        raise BadInput(f"the multipart body cannot be parsed: {exc}") from exc
    try:
        upload = form.get("file")
        model_id = form.get("model_id")
        if not isinstance(upload, UploadFile):
            raise BadInput("send the image as a file in the multipart field 'file'")
        if model_id is not None and not isinstance(model_id, str):
            raise BadInput("model_id must be a plain form field, not a file")
        data = await upload.read(settings.MAX_UPLOAD_BYTES + 1)
        if len(data) > settings.MAX_UPLOAD_BYTES:
            raise PayloadTooLarge(f"the image is larger than the limit of {settings.MAX_UPLOAD_BYTES} bytes")
    finally:
        await form.close()
    try:
        # Decoding takes milliseconds to tens of them: off the event loop, so one upload never
        # holds up the other requests (or /healthz) of this process.
        return await run_in_threadpool(image_to_tensor, data), model_id or None
    except ImageError as exc:
        if isinstance(exc.__cause__, UnidentifiedImageError):
            raise UnsupportedMedia(f"the upload is not an image PIL can read (PNG, JPEG, ...): {exc}") from exc
        raise BadInput(str(exc)) from exc
