"""One definition of a training job: the API's schema, the CLI's options and the engine agree
on names, defaults and limits, because both are derived from ``TrainConfig``'s declarations."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import pytest
import torch

from app.schemas import train_request_model
from bnlenet.local.cli import _build_parser
from bnlenet.settings import Settings
from models.params import params_of
from models.training import TrainConfig
from worker.job_config import job_config


def _api_schema(settings: Settings | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = train_request_model(settings or Settings()).model_json_schema()
    return schema


def _cli_options() -> dict[str, argparse.Action]:
    parser = _build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["train"]._actions if a.dest not in ("help", "data_dir", "out", "json")}


def test_parameters_api_cli_and_engine_have_the_same_names() -> None:
    declared = {f.name for f in params_of(TrainConfig)}
    assert declared <= {f.name for f in dataclasses.fields(TrainConfig)}
    api = set(_api_schema()["properties"])
    cli = set(_cli_options())
    assert api == {f.name for f in params_of(TrainConfig) if f.param.api}
    assert cli == {f.name for f in params_of(TrainConfig) if f.param.cli}
    # What a job sets, its checkpoint records: as a hyperparameter, or (where it ran, how often it
    # saved its state: not what it computes) under "device" and "engine".
    assert api - {"device", "checkpoint_every"} <= set(TrainConfig().hyperparameters())
    assert {"device", "checkpoint_every"} <= api


def test_parameters_checkpoint_records_how_often_the_state_was_saved() -> None:
    from models.training import TrainResult, training_metadata

    meta = training_metadata(TrainConfig(checkpoint_every=3), TrainResult(model=torch.nn.Sequential()), ("a",))
    assert meta["engine"]["checkpoint_every"] == 3
    assert "checkpoint_every" not in meta["hyperparameters"]


def test_parameters_api_cli_and_engine_have_the_same_defaults() -> None:
    engine = dataclasses.asdict(TrainConfig())
    api = {name: prop.get("default") for name, prop in _api_schema()["properties"].items()}
    cli = {name: action.default for name, action in _cli_options().items()}
    assert api == {name: engine[name] for name in api}
    assert cli == {name: engine[name] for name in cli}
    assert engine["precise_bn"] is True  # the better model by default, everywhere


def test_parameters_api_limits_are_the_engines() -> None:
    """Every lower limit in the schema is the engine's; the caps are the settings' MAX_<NAME>."""
    settings = Settings(MAX_EPOCHS=7, MAX_LR=3.5, MAX_BATCH_SIZE=512)
    props = _api_schema(settings)["properties"]
    for f in params_of(TrainConfig):
        if not f.param.api:
            continue
        prop = props[f.name]
        if f.param.ge is not None:
            assert prop["minimum"] == f.param.ge
            with pytest.raises(ValueError, match=f.name):
                TrainConfig(**{f.name: f.param.ge - 1})
            TrainConfig(**{f.name: f.param.ge})
        if f.param.gt is not None:
            assert prop["exclusiveMinimum"] == f.param.gt
            with pytest.raises(ValueError, match=f.name):
                TrainConfig(**{f.name: f.param.gt})
        if f.param.choices is not None:
            assert tuple(prop["enum"]) == f.param.choices
            options = _cli_options()
            assert f.name not in options or tuple(options[f.name].choices or ()) == f.param.choices
    assert props["epochs"]["maximum"] == 7 and props["lr"]["maximum"] == 3.5 and props["batch_size"]["maximum"] == 512
    assert props["seed"]["maximum"] == 2**63 - 1  # declared on the field, no setting caps it


def test_parameters_worker_builds_the_engine_config_from_a_validated_request() -> None:
    request = train_request_model(Settings())(variant="builtin", epochs=3, lr=0.5, precise_bn=False)
    config = job_config(request.model_dump(), Settings())
    assert (config.variant, config.epochs, config.lr, config.precise_bn) == ("builtin", 3, 0.5, False)
    assert config.batch_size == TrainConfig.batch_size


@pytest.mark.parametrize("value", [None, "abc", "evil", "3", 3, 3.5, -1, True, "cpu", "scratch", [1], {"a": 1}])
def test_parameters_a_stored_value_the_job_store_reads_is_one_the_api_answers_with(value: Any) -> None:
    """The job store's check of stored parameters (bnlenet.jobs) admits only what JobOut can show."""
    from pydantic import ValidationError

    from app.schemas import JobParams
    from bnlenet.jobs import JOB_PARAMS, params_problems

    for name in JOB_PARAMS:
        if not params_problems({name: value}):
            JobParams.model_validate({name: value})  # no ValidationError: never a 500
        elif value is not None:
            with pytest.raises(ValidationError):  # the checks agree where the response model is strict
                JobParams.model_validate_json(json.dumps({name: value}), strict=True)
