"""Request and response bodies, in families per resource, each with examples for /docs.

The training request is not written here: ``train_request_model`` derives it from the
declarations on ``models.training.TrainConfig`` (names, defaults, help, lower limits) and the
settings' ``MAX_<NAME>`` caps. Job and model shapes reuse the engine's ``Progress`` and
``EpochMetrics`` and the job store's ``JobStatus``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, JsonValue, create_model

from bnlenet.jobs import JobStatus
from bnlenet.settings import Settings
from models.data import CLASS_NAMES
from models.params import ParamField, params_of
from models.runtime import Runtime
from models.training import EpochMetrics, Progress, TrainConfig

_EXAMPLE_ID = "3f2b8c1d9a7e4f60b1c2d3e4f5a6b7c8"
# A job's parameters as POST /train stores them with no field given: the defaults, derived.
_DEFAULT_PARAMS = {f.name: f.default for f in params_of(TrainConfig) if f.param.api}

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


def _typed_record_model(name: str, doc: str, fields: list[ParamField]) -> type[BaseModel]:
    """A response model for stored parameters: the declared fields and types, no limits.

    Limits belong to requests; a stored record is shown as it is. Missing fields (a record
    from an older version) are null, unknown ones are dropped.
    """
    typed: dict[str, Any] = {}
    for f in fields:
        annotation: Any = Literal[f.param.choices] if f.param.choices is not None else f.type
        typed[f.name] = (annotation | None, Field(None, description=f.param.help))
    model: type[BaseModel] = create_model(name, __config__=ConfigDict(extra="ignore"), __doc__=doc, **typed)
    return model


# What a job was asked to do (the POST /train fields) and what a model was trained with (the
# TrainConfig fields that describe the run), both derived from the declarations. Typed ``Any``
# for mypy: they are built at import, and pydantic reads them as the models they are.
JobParams: Any = _typed_record_model("JobParams", "A job's parameters, as POST /train took them.", job_params())
Hyperparameters: Any = _typed_record_model(
    "Hyperparameters", "What the model was trained with (the run's parameters, not where or how fast it ran).",
    [f for f in params_of(TrainConfig) if f.param.describes_run],
)


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
        "params": _DEFAULT_PARAMS,
        "progress": {"epoch": 2, "epochs": 10, "batch": 120, "batches": 235, "fraction": 0.151,
                     "loss": 0.41, "train_acc": 0.85},
        "history": [{"epoch": 1, "loss": 0.58, "train_acc": 0.79, "test_acc": 0.83,
                     "examples_per_sec": 41000.0, "seconds": 1.46}],
        "final_test_acc": None,
        "created_at": "2025-01-01T12:00:00Z", "started_at": "2025-01-01T12:00:01Z",
        "first_step_at": "2025-01-01T12:00:01.2Z", "finished_at": None,
        "worker": "gpu0@host:4242", "device": "cuda", "model_id": None, "error": None,
        "attempts": 1, "cancel_requested": False, "task_id": "3f1c0a9e-5b7d-4e21-9c3a-2d8e6f4b1a07",
    }]})

    job_id: str
    status: JobStatus
    params: JobParams = Field(description="the job's parameters, as POST /train took them")  # type: ignore[valid-type]
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
    task_id: str | None = Field(None, description="the Celery task of the latest delivery (Flower, celery events)")


class BulkCancelOut(BaseModel):
    """What a bulk cancel did."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "queued", "count": 2576, "detail": "2576 queued job(s) cancelled"}]})

    status: JobStatus = Field(description="the status the cancelled jobs had")
    count: int = Field(description="how many jobs were cancelled (queued) or asked to stop (running)")
    detail: str


class JobList(BaseModel):
    """One page of jobs, newest first, and the total that match."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [], "count": 0}]})

    data: list[JobOut]
    count: int = Field(description="jobs matching the filter, over all pages")


# predict -----------------------------------------------------------------------------------

Pixel = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
PixelRow = Annotated[list[Pixel], Field(min_length=28, max_length=28)]
Pixels = Annotated[
    list[PixelRow],
    Field(min_length=28, max_length=28, description="28 rows of 28 numbers in [0, 1] (pixel / 255, 0 is black)"),
]
_ZEROS: JsonValue = [[0] * 28] * 28  # the smallest valid image to show in /docs: 28 rows of 28 zeros
MODEL_ID_DESCRIPTION = ("a model id or alias; default: the model the alias DEFAULT_MODEL_ALIAS (`production`) "
                        "points at, else the newest")
TOP_K_DEFAULT = 3


class PredictRequest(BaseModel):
    """A 28x28 grayscale image as numbers in [0, 1] (pixel / 255), and optionally which model."""

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={"examples": [{"pixels": _ZEROS}]},
    )

    pixels: Pixels
    model_id: str | None = Field(None, description=MODEL_ID_DESCRIPTION)


class PredictBatchRequest(BaseModel):
    """Up to MAX_PREDICT_BATCH (256 by default) 28x28 images, answered in order by one forward pass."""

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={"examples": [{"images": [_ZEROS]}]},
    )

    images: list[Pixels] = Field(min_length=1, description="each 28 rows of 28 numbers in [0, 1]; "
                                 "at most MAX_PREDICT_BATCH (413 beyond)")
    model_id: str | None = Field(None, description=MODEL_ID_DESCRIPTION)


class ClassScore(BaseModel):
    """One class and the probability the model gives it."""

    class_index: int = Field(ge=0, le=9)
    class_name: str
    probability: float = Field(ge=0.0, le=1.0)


class PredictOut(BaseModel):
    """The model's answer for one image: the top class, every class's probability, the top k."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={"examples": [{
            "model_id": _EXAMPLE_ID, "class_index": 9, "class_name": "Ankle boot", "probability": 0.97,
            "scores": dict(zip(CLASS_NAMES, [0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.0, 0.02, 0.0, 0.97], strict=True)),
            "top_k": [{"class_index": 9, "class_name": "Ankle boot", "probability": 0.97},
                      {"class_index": 7, "class_name": "Sneaker", "probability": 0.02},
                      {"class_index": 5, "class_name": "Sandal", "probability": 0.01}],
            "probabilities": [0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.0, 0.02, 0.0, 0.97],
            "bn_mode": "eval", "runtime": "onnxruntime",
        }]},
    )

    model_id: str
    class_index: int = Field(ge=0, le=9, description="the most probable class")
    class_name: str = Field(description=f"its name: one of {', '.join(CLASS_NAMES)}")
    probability: float = Field(ge=0.0, le=1.0, description="its probability")
    scores: dict[str, float] = Field(description="every class's probability, keyed by class name")
    top_k: list[ClassScore] = Field(description="the k most probable classes, most probable first (?top_k=)")
    probabilities: list[float] = Field(min_length=10, max_length=10,
                                       description="every class's probability in class order (as scores)")
    bn_mode: Literal["eval"] = Field("eval", description="always eval: BN uses its running statistics")
    runtime: Runtime = Field(description="what computed the answer: PREDICT_RUNTIME, or eager PyTorch while a "
                             "model's onnxruntime session is being built (or if it cannot be)")


class PredictBatchOut(BaseModel):
    """One answer per image, in the order sent."""

    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    data: list[PredictOut]
    count: int


# models ------------------------------------------------------------------------------------

class ModelOut(BaseModel):
    """A trained model: how it was trained and how well it does."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={"examples": [{
            "model_id": _EXAMPLE_ID, "variant": "scratch",
            "hyperparameters": cast("dict[str, JsonValue]", TrainConfig().hyperparameters()),
            "history": [{"epoch": 10, "loss": 0.25, "train_acc": 0.91, "test_acc": 0.85,
                         "examples_per_sec": 41000.0, "seconds": 1.4}],
            "final_test_acc": 0.886, "device": "cuda",
            "created_at": "2025-01-01T12:01:00Z", "job_id": _EXAMPLE_ID, "parent": None, "children": [],
        }]},
    )

    model_id: str
    variant: str
    hyperparameters: Hyperparameters = Field(default_factory=dict)  # type: ignore[valid-type]
    history: list[EpochMetrics] = Field(default_factory=list, description=HISTORY_DESCRIPTION)
    final_test_acc: float | None = Field(None, description="test accuracy of this model as stored and served")
    device: str | None = None
    created_at: datetime | None = None
    aliases: list[str] = Field(default_factory=list, description="the aliases that point at this model")
    job_id: str | None = None
    parent: str | None = Field(None, description="the model it started from (its job's init_model), or null for "
                               "fresh weights; kept when that model is deleted")
    children: list[str] = Field(default_factory=list,
                                description="the models started from this one (their parent), oldest first")


class UnusableModelOut(BaseModel):
    """A checkpoint file that does not verify: never served, never the default."""

    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    error: str = Field(description="why it cannot be used (corrupt, truncated, tampered, wrong shape)")


class ModelList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"data": [], "count": 0, "unusable": [], "aliases": {}, "default_model_id": None}]})

    data: list[ModelOut]
    count: int
    unusable: list[UnusableModelOut] = Field(
        default_factory=list, description="checkpoint files that fail verification, left out of data"
    )
    aliases: dict[str, str] = Field(default_factory=dict, description="every alias and the model id it points at")
    default_model_id: str | None = Field(
        None, description="the model POST /predict serves when none is named: the one DEFAULT_MODEL_ALIAS points "
        "at if that alias exists, else the newest; null when there is no model")


class AliasOut(BaseModel):
    """An alias and the model it points at."""

    model_config = ConfigDict(protected_namespaces=(),
                              json_schema_extra={"examples": [{"alias": "production", "model_id": _EXAMPLE_ID}]})

    alias: str
    model_id: str


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


class FieldError(BaseModel):
    """One field that failed validation."""

    loc: list[str | int] = Field(description="where: 'body', 'query' or 'path', then the field's path")
    msg: str
    type: str = Field(description="pydantic's error type, e.g. 'less_than_equal'")
    ctx: dict[str, str] | None = Field(None, description="the limit or pattern the value broke, as text")


class ErrorOut(BaseModel):
    """Every error answer: what went wrong and what to do about it; field errors for a 422."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "no job with id 'abc'"}, {
        "detail": "invalid input: body.epochs: Input should be less than or equal to 100",
        "errors": [{"loc": ["body", "epochs"], "msg": "Input should be less than or equal to 100",
                    "type": "less_than_equal", "ctx": {"le": "100"}}],
    }]})

    detail: str = Field(description="what went wrong, in words")
    errors: list[FieldError] | None = Field(None, description="422 only: each field that failed validation")
