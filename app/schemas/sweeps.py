"""Sweeps as the API takes and shows them: SweepRequest, SweepOut (with its trials, settings, best), SweepList.

The request's shape is checked here; what each parameter may take (names, types, limits, the
service's caps) is checked by ``bnlenet.sweeps.spec`` against the job parameters' declarations,
so it is never restated.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import EXAMPLE_ID, FINAL_TEST_ACC_DESCRIPTION
from bnlenet.jobs import JobStatus
from bnlenet.sweeps.record import SweepStatus

__all__ = ["SweepList", "SweepOut", "SweepRequest"]


class ValuesDimension(BaseModel):
    """Listed values of one job parameter: the grid takes each, a random sweep draws among them."""

    model_config = ConfigDict(extra="forbid")
    values: list[Any] = Field(min_length=1, description="values the job parameter takes (as in POST /train)")


class RangeDimension(BaseModel):
    """A range a random sweep draws a numeric job parameter from."""

    model_config = ConfigDict(extra="forbid")
    min: int | float
    max: int | float
    distribution: Literal["uniform", "log_uniform", "int_uniform"] = Field(
        "uniform", description="log_uniform for learning rates; int_uniform for whole-number parameters")


class MedianRule(BaseModel):
    """Stop a trial whose best test_acc is below the median of the others' running averages at that epoch."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["median"]
    min_epochs: int = Field(1, ge=1, description="no trial stops before this many epochs")


class AshaRule(BaseModel):
    """Successive halving, asynchronous: at rungs min_epochs * reduction_factor**k only the top 1/reduction_factor go on."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["asha"]
    min_epochs: int = Field(1, ge=1, description="the first rung")
    reduction_factor: int = Field(3, ge=2)


_EXAMPLE_REQUEST: dict[str, Any] = {
    "name": "lr and BN implementation", "method": "grid",
    "parameters": {"lr": {"values": [0.3, 1.0]}, "variant": {"values": ["scratch", "builtin"]},
                   "seed": {"values": [0, 1, 2]}},
    "base": {"epochs": 5}, "max_trials": None, "seed": 0, "objective": "test_acc",
    "early_stopping": {"type": "median", "min_epochs": 2}, "pack": True,
}


class SweepRequest(BaseModel):
    """POST /sweeps: a grid, or seeded random draws, over any POST /train parameter."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE_REQUEST, {
        "method": "random", "parameters": {"lr": {"min": 0.05, "max": 3.0, "distribution": "log_uniform"},
                                           "batch_size": {"values": [64, 128, 256]}},
        "base": {"epochs": 3}, "max_trials": 12, "seed": 7,
        "early_stopping": {"type": "asha", "min_epochs": 1, "reduction_factor": 3}}]})

    name: str | None = Field(None, max_length=200)
    method: Literal["grid", "random"] = "grid"
    parameters: dict[str, ValuesDimension | RangeDimension] = Field(
        description="job parameter -> its values (grid or random) or a range (random only)")
    base: dict[str, Any] = Field(default_factory=dict, description="POST /train parameters every trial shares")
    max_trials: int | None = Field(None, ge=1, description="random: how many trials to draw; grid: a cap the grid "
                                   "must fit (MAX_SWEEP_TRIALS caps both)")
    seed: int = Field(0, ge=0, description="of the random draws (a trial's own seed is the job parameter seed)")
    objective: Literal["test_acc"] = Field("test_acc", description="maximized: each epoch's test accuracy for "
                                           "early stopping, the served model's for the best trial")
    early_stopping: MedianRule | AshaRule | None = Field(None, discriminator="type")
    pack: bool = Field(True, description="run trials that can share a step as one pack where packing pays "
                       "(see docs/sweeps.md); the results are the same either way")


class TrialOut(BaseModel):
    """One trial: its job and how it ended."""

    job_id: str
    params: dict[str, Any] = Field(description="the values the sweep gave this trial")
    setting: str = Field(description="its swept values less the seed, e.g. 'lr=0.3, variant=scratch'")
    status: JobStatus
    epochs_run: int
    final_test_acc: float | None = Field(None, description=FINAL_TEST_ACC_DESCRIPTION)
    stopped_early: bool = Field(description="ended by the early-stopping rule (succeeded, with the model after "
                                "epochs_run epochs)")
    model_id: str | None = None


class BestOut(BaseModel):
    """The succeeded trial whose served model scores highest."""

    job_id: str
    params: dict[str, Any]
    final_test_acc: float
    model_id: str | None


class SettingOut(BaseModel):
    """One setting across its seeds: the served models' test accuracy (trials that ran to the end)."""

    setting: str
    params: dict[str, Any] = Field(description="the swept values less the seed")
    trials: int = Field(description="trials counted: succeeded and not stopped early")
    mean: float | None
    std: float | None = Field(description="sample standard deviation (n - 1); 0 for one trial")
    min: float | None
    max: float | None


class SweepOut(BaseModel):
    """A sweep: its request, its trials, its status (derived from theirs), the best trial, per setting."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "sw-5f0c2a9e1b7d4c33", "name": "lr and BN implementation", "status": "running",
        "created_at": "2025-01-01T12:00:00Z", "finished_at": None, "method": "grid",
        "parameters": _EXAMPLE_REQUEST["parameters"], "base": {"epochs": 5}, "max_trials": None, "seed": 0,
        "objective": "test_acc", "early_stopping": {"type": "median", "min_epochs": 2}, "pack": True,
        "cancel_requested": False,
        "trials": [{"job_id": EXAMPLE_ID, "params": {"lr": 0.3, "variant": "scratch", "seed": 0},
                    "setting": "lr=0.3, variant=scratch", "status": "succeeded", "epochs_run": 5,
                    "final_test_acc": 0.884, "stopped_early": False, "model_id": EXAMPLE_ID}],
        "best": {"job_id": EXAMPLE_ID, "params": {"lr": 0.3, "variant": "scratch", "seed": 0},
                 "final_test_acc": 0.884, "model_id": EXAMPLE_ID},
        "settings": [{"setting": "lr=0.3, variant=scratch", "params": {"lr": 0.3, "variant": "scratch"},
                      "trials": 1, "mean": 0.884, "std": 0.0, "min": 0.884, "max": 0.884}],
    }]})

    id: str
    name: str | None
    status: SweepStatus
    created_at: datetime
    finished_at: datetime | None
    method: str
    parameters: dict[str, Any]
    base: dict[str, Any]
    max_trials: int | None
    seed: int
    objective: str
    early_stopping: dict[str, Any] | None
    pack: bool
    cancel_requested: bool
    trials: list[TrialOut]
    best: BestOut | None
    settings: list[SettingOut]


class SweepList(BaseModel):
    """One page of sweeps, newest first, and how many there are."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [], "count": 0}]})

    data: list[SweepOut]
    count: int
