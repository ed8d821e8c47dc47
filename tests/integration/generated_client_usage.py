"""Calling code for the client that openapi-python-client generates from /openapi.json.

``tests/integration/test_generated_client.py`` generates the package ``bnlenet_client``, runs
these functions against a real stack, and runs mypy on this file, so what a user of the
generated client writes is known to type-check and to work.
"""

from __future__ import annotations

import io
import time

from bnlenet_client import AuthenticatedClient, Client
from bnlenet_client.api.jobs import cancel_job, get_job, list_jobs
from bnlenet_client.api.models import export_model, get_batchnorm, list_models
from bnlenet_client.api.predict import predict, predict_batch, predict_batch_pixels, predict_pixels
from bnlenet_client.api.sweeps import create_sweep, get_sweep
from bnlenet_client.api.train import train
from bnlenet_client.models import (
    BatchNormOut,
    ErrorOut,
    ExportModelFormat,
    JobOut,
    JobOutStatus,
    ModelList,
    PredictBatchBody,
    PredictBatchOut,
    PredictBatchRequest,
    PredictBody,
    PredictOut,
    PredictRequest,
    SweepOut,
    SweepOutStatus,
    SweepRequest,
    SweepRequestBase,
    SweepRequestParameters,
    TrainRequest,
    TrainRequestVariant,
    ValuesDimension,
)
from bnlenet_client.types import File

FINISHED = {JobOutStatus.SUCCEEDED, JobOutStatus.FAILED, JobOutStatus.CANCELLED}


def start_training(client: AuthenticatedClient, *, epochs: int, batch_size: int) -> JobOut:
    job = train.sync(client=client, body=TrainRequest(variant=TrainRequestVariant.SCRATCH, epochs=epochs, batch_size=batch_size, lr=0.5))
    if not isinstance(job, JobOut):
        raise AssertionError(f"train answered {job!r}")
    return job


def wait_for(client: AuthenticatedClient | Client, job_id: str, statuses: set[JobOutStatus],
             timeout: float = 60.0) -> JobOut:
    deadline = time.monotonic() + timeout
    while True:
        job = get_job.sync(job_id, client=client)
        if not isinstance(job, JobOut):
            raise AssertionError(f"get_job answered {job!r}")
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is still {job.status} after {timeout} s")
        time.sleep(0.1)


def cancel(client: AuthenticatedClient, job_id: str) -> JobOut:
    job = cancel_job.sync(job_id, client=client)
    if not isinstance(job, JobOut):
        raise AssertionError(f"cancel_job answered {job!r}")
    return job


def count_jobs(client: AuthenticatedClient | Client) -> int:
    page = list_jobs.sync(client=client, limit=10)
    if page is None or isinstance(page, ErrorOut):
        raise AssertionError(f"list_jobs answered {page!r}")
    return page.count


def predict_upload(client: AuthenticatedClient | Client, png: bytes, model_id: str) -> PredictOut:
    body = PredictBody(file=File(payload=io.BytesIO(png), file_name="item.png", mime_type="image/png"),
                       model_id=model_id)
    answer = predict.sync(client=client, body=body, top_k=3)
    if not isinstance(answer, PredictOut):
        raise AssertionError(f"predict answered {answer!r}")
    return answer


def predict_from_pixels(client: AuthenticatedClient | Client, pixels: list[list[float]], model_id: str) -> PredictOut:
    answer = predict_pixels.sync(client=client, body=PredictRequest(pixels=pixels, model_id=model_id))
    if not isinstance(answer, PredictOut):
        raise AssertionError(f"predict_pixels answered {answer!r}")
    return answer


def predict_uploads(client: AuthenticatedClient | Client, pngs: list[bytes], model_id: str) -> PredictBatchOut:
    files = [File(payload=io.BytesIO(png), file_name=f"{i}.png", mime_type="image/png") for i, png in enumerate(pngs)]
    answer = predict_batch.sync(client=client, body=PredictBatchBody(files=files, model_id=model_id))
    if not isinstance(answer, PredictBatchOut):
        raise AssertionError(f"predict_batch answered {answer!r}")
    return answer


def predict_many_pixels(client: AuthenticatedClient | Client, images: list[list[list[float]]],
                        model_id: str) -> PredictBatchOut:
    answer = predict_batch_pixels.sync(client=client, body=PredictBatchRequest(images=images, model_id=model_id))
    if not isinstance(answer, PredictBatchOut):
        raise AssertionError(f"predict_batch_pixels answered {answer!r}")
    return answer


def newest_model(client: AuthenticatedClient | Client) -> str:
    models = list_models.sync(client=client)
    if not isinstance(models, ModelList) or not models.data:
        raise AssertionError(f"list_models answered {models!r}")
    return models.data[0].model_id


def batchnorm_channels(client: AuthenticatedClient | Client, model_id: str) -> dict[str, int]:
    report = get_batchnorm.sync(model_id, client=client)
    if not isinstance(report, BatchNormOut):
        raise AssertionError(f"get_batchnorm answered {report!r}")
    return {layer.name: len(layer.gamma) for layer in report.layers}


def export_onnx(client: AuthenticatedClient | Client, model_id: str, *, within: float = 120.0) -> bytes:
    """The ONNX file; while the export is being built the API answers 202 with Retry-After: ask again."""
    deadline = time.monotonic() + within
    while True:
        answer = export_model.sync_detailed(model_id, client=client, format_=ExportModelFormat.ONNX)
        if isinstance(answer.parsed, File):
            return answer.parsed.payload.read()
        if answer.status_code != 202 or time.monotonic() > deadline:
            raise AssertionError(f"export_model answered {answer.status_code}: {answer.parsed!r}")
        time.sleep(float(answer.headers.get("retry-after", "1")))


def run_seed_sweep(client: AuthenticatedClient, seeds: list[int], *, epochs: int, timeout: float = 120.0) -> SweepOut:
    """A sweep over ``seeds`` (everything else shared), waited for until it ends."""
    parameters = SweepRequestParameters()
    parameters["seed"] = ValuesDimension(values=list(seeds))
    base = SweepRequestBase.from_dict({"epochs": epochs, "batch_size": 64})
    sweep = create_sweep.sync(client=client, body=SweepRequest(parameters=parameters, base=base, name="seeds"))
    if not isinstance(sweep, SweepOut):
        raise AssertionError(f"create_sweep answered {sweep!r}")
    deadline = time.monotonic() + timeout
    while sweep.status not in {SweepOutStatus.SUCCEEDED, SweepOutStatus.FAILED, SweepOutStatus.CANCELLED}:
        if time.monotonic() > deadline:
            raise AssertionError(f"sweep {sweep.id} is still {sweep.status} after {timeout} s")
        time.sleep(0.2)
        answer = get_sweep.sync(sweep.id, client=client)
        if not isinstance(answer, SweepOut):
            raise AssertionError(f"get_sweep answered {answer!r}")
        sweep = answer
    return sweep
