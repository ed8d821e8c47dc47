"""POST /datasets (upload), GET /datasets, GET and DELETE /datasets/{id}, PUT and DELETE
/datasets/{id}/aliases/{alias}, GET /datasets/{id}/samples.png.

An upload streams into a temporary file (``BodyLimit`` refuses it with 413 as soon as it passes
``DATASET_MAX_UPLOAD_BYTES``); validating it (``bnlenet.datasets.ingest``: decoding every image,
seconds for tens of thousands) runs in the app's bounded executor of ``DATASET_INGEST_WORKERS``
threads, off the event loop, so the API answers other requests meanwhile and a flood of uploads
waits its turn instead of taking every core.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tempfile
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path as FilePath
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query, Request, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.deps import DatasetStoreDep, JobStoreDep, ModelStoreDep, ReaderDep, SettingsDep, WriterDep
from app.errors import BadInput, PayloadTooLarge, error_responses
from app.schemas import DatasetAliasOut, DatasetList, DatasetOut, DatasetRejectedOut
from bnlenet.datasets import IngestLimits, PreparedDataset, ingest, read_dataset
from bnlenet.datasets.builtin import BUILTIN_ID
from bnlenet.datasets.store import DatasetInUse, DatasetStore
from bnlenet.datasets.usage import jobs_using, models_using
from bnlenet.model_store import MODEL_ID_PATTERN, valid_model_id
from bnlenet.settings import Settings
from models.data import load_fashion_mnist
from models.lenet import IMAGE_SIZE

__all__ = ["IngestPool", "router"]

router = APIRouter(prefix="/datasets", tags=["datasets"])

DatasetName = Annotated[str, Path(pattern=MODEL_ID_PATTERN, description="the data set's id, or an alias of it")]
DatasetId = Annotated[str, Path(pattern=MODEL_ID_PATTERN, description="the data set's id")]
AliasName = Annotated[str, Path(pattern=MODEL_ID_PATTERN, description="the alias, e.g. `digits`")]
_FIELDS = ("file", "classes", "test_fraction", "seed", "name")
MAX_PER_CLASS = 32  # samples.png: tiles per row


class IngestPool:
    """The app's bounded executor for validating uploads, and the sample grids it made (content-addressed)."""

    def __init__(self, workers: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dataset-ingest")
        self.grids: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _out(info: dict[str, Any]) -> DatasetOut:
    return DatasetOut.model_validate(info)


@router.post(
    "",
    response_model=DatasetOut,
    status_code=201,
    summary="Upload a data set",
    description="Multipart: `file` (a zip of class folders, with `train/` and `test/` inside or one set the "
    "service splits; the four IDX files of the MNIST family, gzipped or not, in a zip; or an `.npz` shaped like "
    "MedMNIST's), optional `classes` (comma-separated or a JSON list: the names of labels 0, 1, ...), "
    "`test_fraction` (0.2) and `seed` (0) for the service's seeded, stratified split, and `name` (an alias). "
    "Every image is converted exactly as `/predict` converts an upload. Answers 201 with the data set and its "
    "validation report, or 200 with the one already stored when the same images, labels and classes were "
    "uploaded before (in any format). An upload training cannot use (one class, an empty split, too few images "
    "per class, a hostile archive) is refused with 4xx and `problems`, every one found; nothing is stored. "
    "A body over `DATASET_MAX_UPLOAD_BYTES` is a 413 as soon as it passes the limit.",
    dependencies=[WriterDep],
    # Read by hand (streamed to disk under BodyLimit's cap), so the body is stated here.
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "a zip of class folders, IDX files in a "
                     "zip, or a MedMNIST-shaped .npz"},
            "classes": {"type": "string", "description": "names of labels 0, 1, ...: comma-separated or a JSON list"},
            "test_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.2},
            "seed": {"type": "integer", "minimum": 0, "default": 0},
            "name": {"type": "string", "pattern": MODEL_ID_PATTERN, "description": "an alias for the data set"},
        }}}}}},
    responses={200: {"model": DatasetOut, "description": "The same content was uploaded before: that data set"},
               **{code: {"model": DatasetRejectedOut, "description": "The upload was refused: every problem found"}
                  for code in (413, 415, 422)},
               **error_responses(401, 403, 409, 503)},
)
async def upload_dataset(request: Request, response: Response, settings: SettingsDep,
                         store: DatasetStoreDep) -> DatasetOut:
    pool: IngestPool = request.app.state.ingest_pool
    with tempfile.TemporaryDirectory(prefix="bnlenet-upload-") as scratch:
        path, filename, options = await _receive(request, FilePath(scratch) / "upload")
        limits = IngestLimits(max_upload_bytes=settings.DATASET_MAX_UPLOAD_BYTES)
        prepared: PreparedDataset = await pool.run(ingest, path, filename, limits=limits, **options["ingest"])
    info, created = await run_in_threadpool(store.add, prepared, name=options["name"])
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/datasets/{info['id']}"
    return _out(info)


async def _receive(request: Request, target: FilePath) -> tuple[FilePath, str, dict[str, Any]]:
    """The uploaded file, written to ``target``, its name, and the form's options (422 for a bad one)."""
    try:
        form = await request.form(max_files=1, max_fields=len(_FIELDS), max_part_size=64 * 1024)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # the multipart parser's own errors
        raise BadInput(f"the multipart body cannot be parsed: {exc}; send the data set as the file field 'file'") \
            from exc
    try:
        unknown = sorted(set(form.keys()) - set(_FIELDS))
        if unknown:
            raise BadInput(f"unknown multipart field(s) {', '.join(map(repr, unknown))}: send {', '.join(_FIELDS)}")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadInput("send the data set as a file in the multipart field 'file'")
        fields = {k: form.get(k) for k in _FIELDS if k != "file" and form.get(k) is not None}
        if any(not isinstance(v, str) for v in fields.values()):
            raise BadInput("classes, test_fraction, seed and name are plain form fields, not files")
        options = _options(fields)
        filename = upload.filename or "upload"
        await run_in_threadpool(_copy, upload, target)
    finally:
        await form.close()
    return target, filename, options


def _copy(upload: UploadFile, target: FilePath) -> None:
    upload.file.seek(0)
    with open(target, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)


def _options(fields: dict[str, Any]) -> dict[str, Any]:
    ingest_options: dict[str, Any] = {}
    if "classes" in fields:
        ingest_options["classes"] = _classes(fields["classes"])
    try:
        if "test_fraction" in fields:
            ingest_options["test_fraction"] = float(fields["test_fraction"])
        if "seed" in fields:
            ingest_options["seed"] = int(fields["seed"])
    except ValueError:
        raise BadInput("test_fraction must be a number and seed a whole number") from None
    fraction = ingest_options.get("test_fraction", 0.2)
    if not 0 < fraction < 1:
        raise BadInput(f"test_fraction must be between 0 and 1 (exclusive), got {fraction}")
    if ingest_options.get("seed", 0) < 0:
        raise BadInput("seed must be 0 or more")
    name = fields.get("name") or None
    if name is not None and not valid_model_id(name):
        raise BadInput(f"name {name!r} cannot be an alias: 1-64 letters, digits, '-' or '_', starting with a letter "
                       "or digit")
    return {"ingest": ingest_options, "name": name}


def _classes(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        try:
            names = json.loads(text)
        except ValueError:
            raise BadInput("classes is neither a JSON list nor comma-separated names") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadInput("classes must be a JSON list of strings")
        return [n.strip() for n in names]
    return [n.strip() for n in text.split(",")]


@router.get(
    "",
    response_model=DatasetList,
    summary="List data sets: the built-in Fashion-MNIST first, then uploads, newest first",
    dependencies=[ReaderDep],
    responses=error_responses(401, 403, 503),
)
def list_datasets(store: DatasetStoreDep) -> DatasetList:
    found = store.list()
    return DatasetList(data=[_out(i) for i in found], count=len(found))


@router.get(
    "/{name}",
    response_model=DatasetOut,
    summary="One data set, with its validation report",
    dependencies=[ReaderDep],
    responses=error_responses(401, 403, 404, 422, 503),
)
def get_dataset(name: DatasetName, store: DatasetStoreDep) -> DatasetOut:
    return _out(store.info(name))


@router.delete(
    "/{name}",
    status_code=204,
    summary="Delete an uploaded data set",
    description="Refused (409) while a queued or running job trains on it or a model was trained on it, "
    "naming them (delete those models first), while an alias points at it, and for the built-in Fashion-MNIST.",
    dependencies=[WriterDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def delete_dataset(name: DatasetId, store: DatasetStoreDep, jobs: JobStoreDep,
                   models: ModelStoreDep) -> Response:
    # One path template with GET /datasets/{name}, so that both answer with one Allow header.
    ds_id = store.resolve(name)
    if ds_id != name:
        raise BadInput(f"{name!r} is an alias of {ds_id!r}: DELETE takes the data set's id")
    if ds_id != BUILTIN_ID:
        using_jobs, using_models = jobs_using(jobs, ds_id), models_using(models, ds_id)
        if using_jobs or using_models:
            named = [f"job(s) {', '.join(using_jobs)}" if using_jobs else "",
                     f"model(s) {', '.join(using_models)}" if using_models else ""]
            raise DatasetInUse(f"dataset {ds_id!r} is used by {' and '.join(n for n in named if n)}: cancel or "
                               "wait for the jobs and delete the models first", jobs=using_jobs, models=using_models)
    store.delete(ds_id)
    return Response(status_code=204)


@router.put(
    "/{name}/aliases/{alias}",
    response_model=DatasetAliasOut,
    summary="Point an alias at a data set",
    description="Creates the alias or moves it here; `dataset` in POST /train takes it. It may not be a data "
    "set's id, nor `fashion-mnist` (409).",
    dependencies=[WriterDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def set_dataset_alias(name: DatasetName, alias: AliasName, store: DatasetStoreDep) -> DatasetAliasOut:
    return DatasetAliasOut(alias=alias, id=store.set_alias(alias, name))


@router.delete(
    "/{name}/aliases/{alias}",
    status_code=204,
    summary="Remove an alias of a data set",
    dependencies=[WriterDep],
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def delete_dataset_alias(name: DatasetName, alias: AliasName, store: DatasetStoreDep) -> Response:
    target = store.aliases().get(alias)
    if target is not None and target != store.resolve(name):
        raise DatasetInUse(f"alias {alias!r} points at dataset {target!r}, not {name!r}: nothing removed")
    store.delete_alias(alias)
    return Response(status_code=204)


@router.get(
    "/{name}/samples.png",
    response_class=Response,
    summary="A grid of sample training images: one row per class, in class order",
    dependencies=[ReaderDep],
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "PNG, 28 px tiles"},
               **error_responses(401, 403, 404, 422, 503)},
)
async def dataset_samples(request: Request, name: DatasetName, store: DatasetStoreDep, settings: SettingsDep,
                          per_class: Annotated[int, Query(ge=1, le=MAX_PER_CLASS,
                                                          description="images per row")] = 8) -> Response:
    ds_id = await run_in_threadpool(store.resolve, name)
    pool: IngestPool = request.app.state.ingest_pool
    key = (ds_id, per_class)
    png = pool.grids.get(key)
    if png is None:
        png = await pool.run(_grid_png, store, settings, ds_id, per_class)
        pool.grids[key] = png
        while len(pool.grids) > 64:
            pool.grids.popitem(last=False)
    # An id names the content, so its grid never changes; an alias can move, so it is asked again.
    # Behind the token (PROTECT_READS) only the client may keep it, never a shared cache.
    scope = "private" if settings.PROTECT_READS else "public"
    cache = f"{scope}, max-age=31536000, immutable" if name == ds_id else f"{scope}, no-cache"
    return Response(png, media_type="image/png", headers={"Cache-Control": cache})


def _grid_png(store: DatasetStore, settings: Settings, ds_id: str, per_class: int) -> bytes:
    """The first ``per_class`` training images of each class, a row per class, as a PNG."""
    if ds_id == BUILTIN_ID:
        data = load_fashion_mnist(settings.DATA_DIR, download=False)
        images, labels, classes = data.train_images.numpy(), data.train_labels.numpy(), data.classes
    else:
        prepared = read_dataset(store.local_file(ds_id))
        images, labels, classes = prepared.train_images, prepared.train_labels, prepared.classes
    size = IMAGE_SIZE
    sheet = np.zeros((size * len(classes), size * per_class), dtype=np.uint8)
    for k in range(len(classes)):
        for j, index in enumerate(np.flatnonzero(labels == k)[:per_class]):
            sheet[k * size:(k + 1) * size, j * size:(j + 1) * size] = images[index]
    out = io.BytesIO()
    Image.fromarray(sheet, mode="L").save(out, format="PNG")
    return out.getvalue()
