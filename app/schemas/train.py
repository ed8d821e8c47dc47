"""POST /train's body, derived, and the typed views of stored parameters.

``TrainRequest`` is not written here: ``train_request_model`` derives it from the declarations on
``models.training.TrainConfig`` (names, defaults, help, lower limits) and the settings'
``MAX_<NAME>`` caps. ``JobParams`` and ``Hyperparameters`` show stored records with the declared
types and no limits.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from bnlenet.settings import Settings
from models.params import ParamField, params_of
from models.training import TrainConfig

__all__ = ["DEFAULT_PARAMS", "Hyperparameters", "JobParams", "job_params", "train_request_model"]


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
    model: type[BaseModel] = create_model(
        "TrainRequest",
        __config__=ConfigDict(
            extra="forbid",
            allow_inf_nan=False,
            json_schema_extra={"examples": [DEFAULT_PARAMS]},
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


# A job's parameters as POST /train stores them with no field given: the defaults, derived.
DEFAULT_PARAMS = {f.name: f.default for f in job_params()}
