"""Request and response bodies, in families per resource, each with examples for /docs.

The training request is not written here: ``train_request_model`` derives it from the
declarations on ``models.training.TrainConfig`` (names, defaults, help, lower limits) and the
settings' ``MAX_<NAME>`` caps. Job and model shapes reuse the engine's ``Progress`` and
``EpochMetrics`` and the job store's ``JobStatus``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from bnlenet.jobs import JobStatus
from bnlenet.settings import Settings
from models.data import CLASS_NAMES
from models.params import ParamField, params_of
from models.training import EpochMetrics, Progress, TrainConfig

_EXAMPLE_ID = "3f2b8c1d9a7e4f60b1c2d3e4f5a6b7c8"

HISTORY_DESCRIPTION = (
    "one entry per finished epoch; its test_acc uses the BN moving averages as that epoch ended "
    "(before any precise BN), so it is not the stored model's accuracy: see final_test_acc"
)
FINAL_TEST_ACC_DESCRIPTION = (
    "test accuracy of the model as stored and served (with precise BN when it is on); "
    "null until the job succeeds"
)


# train -------------------------------------------------------------------------------------

def job_params() -> list[ParamField]:
    """The parameters a training job takes, as declared on ``TrainConfig``."""
    return [f for f in params_of(TrainConfig) if f.param.api]


def train_request_model(settings: Settings) -> type[BaseModel]:
    """``TrainRequest``: the body of POST /train, with this service's caps (``MAX_<NAME>``).

    Strict: ``"epochs": "3"`` or ``"precise_bn": 0`` is a 422, not a guess.
    """
    fields: dict[str, Any] = {}
    for f in job_params():
        cap = getattr(settings, f"MAX_{f.name.upper()}", None)
        fields[f.name] = _request_field(f, cap)
    defaults = {f.name: f.default for f in job_params()}
    model: type[BaseModel] = create_model(
        "TrainRequest",
        __config__=ConfigDict(
            extra="forbid",
            allow_inf_nan=False,
            json_schema_extra={"examples": [defaults]},
        ),
        __doc__="Parameters of a training job; the defaults are the chapter's, with precise BN on.",
        **fields,
    )
    return model


def _request_field(f: ParamField, cap: float | None) -> tuple[Any, Any]:
    p = f.param
    le = p.le if cap is None else cap if p.le is None else min(p.le, cap)
    constraints: dict[str, Any] = {"strict": True}
    if p.ge is not None:
        constraints["ge"] = p.ge
    if p.gt is not None:
        constraints["gt"] = p.gt
    if le is not None:
        constraints["le"] = le
    description = p.help + _range_text(p.ge, p.gt, le)
    annotation: Any = f.type
    if p.choices is not None:
        annotation = Literal[p.choices]
        del constraints["strict"]  # a literal matches exactly anyway
    if p.pattern is not None:
        annotation = Annotated[str, Field(pattern=f"^({p.pattern})$")] | None
    if f.type is float:
        constraints["allow_inf_nan"] = False
    return annotation, Field(f.default, description=description, **constraints)


def _range_text(ge: float | None, gt: float | None, le: float | None) -> str:
    if ge is None and gt is None and le is None:
        return ""
    low = f"[{_num(ge)}" if ge is not None else f"({_num(gt)}" if gt is not None else "(-inf"
    high = f"{_num(le)}]" if le is not None else "inf)"
    return f"; {low}, {high}"


def _num(x: float | None) -> str:
    assert x is not None
    return str(x) if isinstance(x, int) or not math.isfinite(x) else f"{x:g}"


# jobs --------------------------------------------------------------------------------------

class JobOut(BaseModel):
    """A training job as the store holds it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": _EXAMPLE_ID, "status": "running",
        "params": {"variant": "scratch", "epochs": 10, "lr": 1.0, "batch_size": 256, "seed": 0,
                   "precise_bn": True, "device": None},
        "progress": {"epoch": 2, "epochs": 10, "batch": 120, "batches": 235, "fraction": 0.151,
                     "loss": 0.41, "train_acc": 0.85},
        "history": [{"epoch": 1, "loss": 0.58, "train_acc": 0.79, "test_acc": 0.83,
                     "examples_per_sec": 41000.0, "seconds": 1.46}],
        "final_test_acc": None,
        "created_at": "2025-01-01T12:00:00Z", "started_at": "2025-01-01T12:00:01Z",
        "first_step_at": "2025-01-01T12:00:01.2Z", "finished_at": None,
        "worker": "gpu0@host:4242", "device": "cuda", "model_id": None, "error": None,
        "attempts": 1, "cancel_requested": False,
    }]})

    job_id: str
    status: JobStatus
    params: dict[str, Any] = Field(description="the job's parameters, as POST /train took them (TrainRequest)")
    progress: Progress | None = None
    history: list[EpochMetrics] = Field(default_factory=list, description=HISTORY_DESCRIPTION)
    final_test_acc: float | None = Field(None, description=FINAL_TEST_ACC_DESCRIPTION)
    created_at: datetime
    started_at: datetime | None = None
    first_step_at: datetime | None = Field(None, description="when the first training step finished")
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    worker: str | None = None
    device: str | None = None
    model_id: str | None = None
    error: str | None = None
    note: str | None = Field(None, description="why the job was requeued, if it was")
    attempts: int = 0
    cancel_requested: bool = False


class JobList(BaseModel):
    """One page of jobs, newest first, and the total that match."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [], "count": 0}]})

    data: list[JobOut]
    count: int = Field(description="jobs matching the filter, over all pages")


# predict -----------------------------------------------------------------------------------

class PredictRequest(BaseModel):
    """A 28x28 grayscale image as numbers in [0, 1] (pixel / 255), and optionally which model."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"pixels": [[0.0] * 28] * 28, "model_id": None}]},
    )

    pixels: list[list[float]] = Field(description="28 rows of 28 numbers in [0, 1]")
    model_id: str | None = Field(None, description="default: the newest trained model")


class PredictOut(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={"examples": [{
            "class_index": 9, "class_name": "Ankle boot",
            "probabilities": [0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.0, 0.02, 0.0, 0.97],
            "model_id": _EXAMPLE_ID,
        }]},
    )

    class_index: int = Field(ge=0, le=9)
    class_name: str = Field(description=f"one of {', '.join(CLASS_NAMES)}")
    probabilities: list[float] = Field(min_length=10, max_length=10, description="per class, in class order")
    model_id: str


# models ------------------------------------------------------------------------------------

class ModelOut(BaseModel):
    """A trained model: how it was trained and how well it does."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={"examples": [{
            "model_id": _EXAMPLE_ID, "variant": "scratch",
            "hyperparameters": {"variant": "scratch", "epochs": 10, "lr": 1.0, "batch_size": 256, "seed": 0,
                                "precise_bn": True, "precise_bn_images": 4096, "bf16": False},
            "history": [{"epoch": 10, "loss": 0.25, "train_acc": 0.91, "test_acc": 0.85,
                         "examples_per_sec": 41000.0, "seconds": 1.4}],
            "final_test_acc": 0.886, "device": "cuda",
            "created_at": "2025-01-01T12:01:00Z", "job_id": _EXAMPLE_ID,
        }]},
    )

    model_id: str
    variant: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    history: list[EpochMetrics] = Field(default_factory=list, description=HISTORY_DESCRIPTION)
    final_test_acc: float | None = Field(None, description="test accuracy of this model as stored and served")
    device: str | None = None
    created_at: datetime | None = None
    job_id: str | None = None


class UnusableModelOut(BaseModel):
    """A checkpoint file that does not verify: never served, never the default."""

    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    error: str = Field(description="why it cannot be used (corrupt, truncated, tampered, wrong shape)")


class ModelList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [], "count": 0, "unusable": []}]})

    data: list[ModelOut]
    count: int
    unusable: list[UnusableModelOut] = Field(
        default_factory=list, description="checkpoint files that fail verification, left out of data"
    )


class BatchNormLayerOut(BaseModel):
    name: str = Field(description="the layer's name in the network, e.g. '1' for net[1]")
    num_features: int
    gamma: list[float] = Field(description="scale")
    beta: list[float] = Field(description="shift")
    running_mean: list[float]
    running_var: list[float]


class BatchNormOut(BaseModel):
    """Every BN layer's learned scale and shift and its running statistics."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={"examples": [{
            "model_id": _EXAMPLE_ID, "variant": "scratch",
            "layers": [{"name": "1", "num_features": 6, "gamma": [1.1] * 6, "beta": [0.1] * 6,
                        "running_mean": [0.2] * 6, "running_var": [0.9] * 6}],
        }]},
    )

    model_id: str
    variant: str
    layers: list[BatchNormLayerOut]


# health ------------------------------------------------------------------------------------

class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "status": "ready", "redis": "ok", "workers": ["celery@host"], "detail": "1 worker listening",
    }]})

    status: Literal["ready"] = "ready"
    redis: Literal["ok"] = "ok"
    workers: list[str] = Field(description="workers seen recently; empty: jobs will wait in the queue")
    detail: str


class ErrorOut(BaseModel):
    """Every error answer: what went wrong and what to do about it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "no job with id 'abc'"}]})

    detail: Any
