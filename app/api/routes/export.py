"""GET /models/{model_id}/export: the model as ONNX, a torch.export program (pt2) or safetensors.

Exports are made on first request, by a child process (``bnlenet.model_store.exports``: the exporter's
imports never load into the API, and ``torch.export`` never runs beside a serving thread), and
cached per model and format (``EXPORT_DIR``, default ``<CHECKPOINT_DIR>/exports``), written
atomically. The handler is a plain ``def``, so FastAPI waits for the child in its threadpool,
never on the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from app.api.routes.models import ModelId
from app.deps import ModelStoreDep, ReaderDep, SettingsDep
from app.errors import error_responses
from bnlenet.model_store.exports import export
from models.export import EXPORT_FORMATS, INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, ExportFormat, export_filename

router = APIRouter(prefix="/models", tags=["models"])

MEDIA_TYPE = "application/octet-stream"  # none of the three formats has a registered media type


@router.get(
    "/{model_id}/export",
    response_class=FileResponse,
    operation_id="export_model",
    summary="Export the model: ONNX, torch.export (pt2) or safetensors",
    description=f"Formats: {', '.join(EXPORT_FORMATS)}. The model in eval mode (BN uses its running "
    f"statistics). `onnx`: opset {ONNX_OPSET}, input `{INPUT_NAME}` (N, 1, 28, 28) float32 pixel / 255, "
    f"any batch size, output `{OUTPUT_NAME}` (N, 10) softmax, the same numbers `/predict` answers; class "
    "names and preprocessing in its `metadata_props`. `pt2`: a `torch.export` program for "
    "`torch.export.load`, same input and output, metadata in its extra file `bnlenet.json`. "
    "`safetensors`: the checkpoint. Made on first request (an ONNX export takes a few seconds) and cached.",
    dependencies=[ReaderDep],
    responses={
        200: {"content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
              "description": "The file, as an attachment named `<model_id>.<format>`"},
        **error_responses(401, 403, 404, 409, 422, 503),
    },
)
def export_model(
    model_id: ModelId,
    store: ModelStoreDep,
    settings: SettingsDep,
    format: Annotated[ExportFormat, Query(description="onnx, pt2 or safetensors")] = "onnx",
) -> FileResponse:
    resolved = store.resolve(model_id)
    path = export(store, resolved, format, settings.EXPORT_DIR)
    return FileResponse(path, media_type=MEDIA_TYPE, filename=export_filename(resolved, format))
