"""GET /models/{model_id}/export: the model as ONNX, a torch.export program (pt2) or safetensors.

Exports are made on first request, by a child process (``bnlenet.model_store.exports``: the exporter's
imports never load into the API, and ``torch.export`` never runs beside a serving thread), in a
background thread, and cached per model and format (``EXPORT_DIR``, default
``<CHECKPOINT_DIR>/exports``), written atomically. A request waits a few seconds at most
(``ExportBuilds.wait_s``): a build still under way then is a 202 with ``Location`` (this URL)
and ``Retry-After``. The handler is a plain ``def``, so that wait is in FastAPI's threadpool,
never on the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse, JSONResponse

from app.api.routes.models import ModelId
from app.deps import ExportBuildsDep, ModelStoreDep, ReaderDep, SettingsDep
from app.errors import error_responses
from models.export import EXPORT_FORMATS, INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, ExportFormat, export_filename

router = APIRouter(prefix="/models", tags=["models"])

MEDIA_TYPE = "application/octet-stream"  # none of the three formats has a registered media type
RETRY_AFTER_S = 2  # a 202's advice: an ONNX export takes a few seconds


@router.get(
    "/{model_id}/export",
    response_class=FileResponse,
    operation_id="export_model",
    summary="Export the model: ONNX, torch.export (pt2) or safetensors",
    description=f"Formats: {', '.join(EXPORT_FORMATS)}. The model in eval mode (BN uses its running "
    f"statistics). `onnx`: opset {ONNX_OPSET}, input `{INPUT_NAME}` (N, 1, 28, 28) float32 pixel / 255, "
    f"any batch size, output `{OUTPUT_NAME}` (N, K) softmax over the model's K classes, the same numbers `/predict` answers; class "
    "names and preprocessing in its `metadata_props`. `pt2`: a `torch.export` program for "
    "`torch.export.load`, same input and output, metadata in its extra file `bnlenet.json`. "
    "`safetensors`: the checkpoint. Made on first request, in the background, and cached: a request waits a few "
    "seconds at most, then gets a 202 with `Location` (this URL) and `Retry-After` while the export is built "
    "(an ONNX export takes several seconds on a busy machine).",
    dependencies=[ReaderDep],
    responses={
        200: {"content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
              "description": "The file, as an attachment named `<model_id>.<format>`"},
        202: {"description": "The export is being built: ask again at `Location` after `Retry-After` seconds",
              "headers": {"Location": {"schema": {"type": "string"}, "description": "where to ask again"},
                          "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
              "content": {"application/json": {"schema": {
                  "type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}}}},
        **error_responses(401, 403, 404, 409, 422, 503),
    },
)
def export_model(
    model_id: ModelId,
    store: ModelStoreDep,
    builds: ExportBuildsDep,
    settings: SettingsDep,
    format: Annotated[ExportFormat, Query(description="onnx, pt2 or safetensors")] = "onnx",
) -> Response:
    resolved = store.resolve(model_id)
    path = builds.get(store, resolved, format, settings.EXPORT_DIR)
    if path is None:
        return JSONResponse(
            {"detail": f"the {format} export of model {resolved!r} is being built: ask again at Location"},
            status_code=202,
            headers={"Location": f"/models/{resolved}/export?format={format}", "Retry-After": str(RETRY_AFTER_S)},
        )
    return FileResponse(path, media_type=MEDIA_TYPE, filename=export_filename(resolved, format))
