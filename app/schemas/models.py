"""Trained models as the API shows them: one model, the listing, aliases, the BN layers."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.schemas.common import EXAMPLE_ID, HISTORY_DESCRIPTION
from app.schemas.train import Hyperparameters
from models.training import EpochMetrics, TrainConfig

__all__ = ["AliasOut", "BatchNormLayerOut", "BatchNormOut", "ModelList", "ModelOut", "UnusableModelOut"]


class ModelOut(BaseModel):
    """A trained model: how it was trained and how well it does."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={"examples": [{
            "model_id": EXAMPLE_ID, "variant": "scratch",
            "hyperparameters": cast("dict[str, JsonValue]", TrainConfig().hyperparameters()),
            "history": [{"epoch": 10, "loss": 0.25, "train_acc": 0.91, "test_acc": 0.85,
                         "examples_per_sec": 41000.0, "seconds": 1.4}],
            "final_test_acc": 0.886, "device": "cuda",
            "created_at": "2025-01-01T12:01:00Z", "job_id": EXAMPLE_ID, "parent": None, "children": [],
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
    dataset: str | None = Field(None, description="the id of the data set it was trained on (null: a model from "
                                "before data sets were recorded, trained on Fashion-MNIST)")
    classes: list[str] = Field(default_factory=list, description="its class names, in output order: what "
                               "/predict answers with")


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
                              json_schema_extra={"examples": [{"alias": "production", "model_id": EXAMPLE_ID}]})

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
            "model_id": EXAMPLE_ID, "variant": "scratch",
            "layers": [{"name": "1", "num_features": 6, "gamma": [1.1] * 6, "beta": [0.1] * 6,
                        "running_mean": [0.2] * 6, "running_var": [0.9] * 6}],
        }]},
    )

    model_id: str
    variant: str
    layers: list[BatchNormLayerOut]
