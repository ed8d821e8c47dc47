"""GET /models/{model_id}/checkpoint: download a model's safetensors file."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.routes.models import ModelId
from app.deps import ModelStoreDep, ReaderDep
from app.errors import error_responses

router = APIRouter(prefix="/models", tags=["models"])

# safetensors has no registered media type; the Hugging Face Hub serves it as octet-stream too.
MEDIA_TYPE = "application/octet-stream"


@router.get(
    "/{model_id}/checkpoint",
    response_class=FileResponse,
    summary="Download the model's checkpoint (safetensors)",
    description="The file as the worker wrote it: weights, BN statistics and metadata (with its SHA-256 "
    "checksum). `bnlenet predict` and `bnlenet inspect` read it; nothing in it is ever unpickled.",
    dependencies=[ReaderDep],
    responses={
        200: {"content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
              "description": "The safetensors file, as an attachment named `<model_id>.safetensors`"},
        **error_responses(401, 403, 404, 409, 422, 503),
    },
)
def download_checkpoint(model_id: ModelId, store: ModelStoreDep) -> FileResponse:
    resolved = store.resolve(model_id)
    path = store.local_checkpoint(resolved)  # verified: 404 unknown, 409 not a valid checkpoint
    return FileResponse(path, media_type=MEDIA_TYPE, filename=f"{resolved}.safetensors")
