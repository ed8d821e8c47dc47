"""Request and response bodies, in families per resource, each with examples for /docs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bnlenet.jobs import STATUSES
from bnlenet.settings import get_settings
from models.data import CLASS_NAMES

_limits = get_settings()  # limits are fixed when the app starts

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
assert set(JobStatus.__args__) == set(STATUSES)  # type: ignore[attr-defined]

_EXAMPLE_ID = "3f2b8c1d9a7e4f60b1c2d3e4f5a6b7c8"


# train -------------------------------------------------------------------------------------

class TrainRequest(BaseModel):
    """Hyperparameters of a training job; the defaults are the chapter's."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"variant": "scratch", "epochs": 10, "lr": 1.0, "batch_size": 256}]},
    )

    variant: Literal["scratch", "builtin"] = Field(
        "scratch", description="BN written from scratch (the chapter's) or PyTorch's builtin layers"
    )
    epochs: int = Field(10, ge=1, le=_limits.MAX_EPOCHS, description=f"1 to {_limits.MAX_EPOCHS}")
    lr: float = Field(
        1.0, gt=0, le=_limits.MAX_LR, allow_inf_nan=False,
        description=f"learning rate, a finite number in (0, {_limits.MAX_LR:g}]",
    )
    batch_size: int = Field(
        256, ge=2, le=_limits.MAX_BATCH_SIZE,
        description=f"2 to {_limits.MAX_BATCH_SIZE}: BN learns nothing from one example",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="weight init and shuffling")
    precise_bn: bool = Field(False, description="recompute BN statistics as true averages after training")
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$")] | None = Field(
        None, description="auto (default: CUDA when the worker has it), cpu, cuda or cuda:N"
    )


# jobs --------------------------------------------------------------------------------------

class ProgressOut(BaseModel):
    epoch: int
    epochs: int
    batch: int
    batches: int
    fraction: float = Field(description="of the whole job, 0 to 1")
    loss: float | None = None
    train_acc: float | None = None


class EpochOut(BaseModel):
    epoch: int
    loss: float | None
    train_acc: float
    test_acc: float
    examples_per_sec: float
    seconds: float


class JobOut(BaseModel):
    """A training job as the store holds it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": _EXAMPLE_ID, "status": "running",
        "params": {"variant": "scratch", "epochs": 10, "lr": 1.0, "batch_size": 256, "seed": 0,
                   "precise_bn": False, "device": None},
        "progress": {"epoch": 2, "epochs": 10, "batch": 120, "batches": 235, "fraction": 0.151,
                     "loss": 0.41, "train_acc": 0.85},
        "history": [{"epoch": 1, "loss": 0.58, "train_acc": 0.79, "test_acc": 0.83,
                     "examples_per_sec": 41000.0, "seconds": 1.46}],
        "created_at": "2025-01-01T12:00:00Z", "started_at": "2025-01-01T12:00:01Z",
        "first_step_at": "2025-01-01T12:00:01.2Z", "finished_at": None,
        "worker": "gpu0@host:4242", "device": "cuda", "model_id": None, "error": None,
        "attempts": 1, "cancel_requested": False,
    }]})

    job_id: str
    status: JobStatus
    params: dict[str, Any]
    progress: ProgressOut | None = None
    history: list[EpochOut] = Field(default_factory=list)
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
    """A trained model: how it was trained and how well it did."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={"examples": [{
            "model_id": _EXAMPLE_ID, "variant": "scratch",
            "hyperparameters": {"variant": "scratch", "epochs": 10, "lr": 1.0, "batch_size": 256, "seed": 0,
                                "precise_bn": False, "precise_bn_images": 4096},
            "metrics": [{"epoch": 10, "loss": 0.25, "train_acc": 0.91, "test_acc": 0.88,
                         "examples_per_sec": 41000.0, "seconds": 1.4}],
            "test_acc": 0.88, "precise_bn_test_acc": None, "device": "cuda",
            "created_at": "2025-01-01T12:01:00Z", "job_id": _EXAMPLE_ID,
        }]},
    )

    model_id: str
    variant: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: list[dict[str, Any]] = Field(default_factory=list, description="per-epoch history")
    test_acc: float | None = None
    precise_bn_test_acc: float | None = None
    device: str | None = None
    created_at: datetime | None = None
    job_id: str | None = None


class ModelList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [], "count": 0}]})

    data: list[ModelOut]
    count: int


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
