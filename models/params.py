"""How a run's parameters are declared: one ``param(...)`` per ``TrainConfig`` field.

Each field carries its default, a one-line help text and its limits in one place; the engine's
checks (``check_params``), the API's request model (``app.schemas``), the CLI's options
(``bnlenet.local.cli``) and the checkpoint's hyperparameters are all derived from it, so adding a
hyperparameter means adding one field.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Param", "ParamField", "check_params", "param", "params_of", "stored_value_problem"]

T = TypeVar("T")
_KEY = "param"  # where a field's ``Param`` sits in its dataclass metadata


@dataclass(frozen=True)
class Param:
    """What users may set for one field, and where they may set it."""

    help: str  # one line; the API's description and the CLI's help
    ge: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    le: float | None = None  # inclusive upper bound (the service may cap lower: ``MAX_<NAME>`` settings)
    choices: tuple[str, ...] | None = None
    pattern: str | None = None  # a regular expression a string value must match in full
    api: bool = True  # a parameter of a training job (POST /train)
    cli: bool = True  # an option of ``bnlenet train``
    describes_run: bool = True  # recorded as a hyperparameter (False: where or how fast it ran, not what)


def param(
    default: T,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
    pattern: str | None = None,
    api: bool = True,
    cli: bool = True,
    describes_run: bool = True,
) -> T:
    """A dataclass field with ``default`` and its ``Param`` (typed as the default, like ``field``)."""
    meta = Param(help, ge=ge, gt=gt, le=le, choices=choices, pattern=pattern, api=api, cli=cli,
                 describes_run=describes_run)
    return dataclasses.field(default=default, metadata={_KEY: meta})


@dataclass(frozen=True)
class ParamField:
    """One declared field: its name, Python type, default and ``Param``."""

    name: str
    type: Any  # the resolved annotation, e.g. ``int`` or ``str | None``
    default: Any
    param: Param


def params_of(cls: type) -> Iterator[ParamField]:
    """The declared fields of dataclass ``cls``, in declaration order (fields without ``param`` are skipped)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        p = f.metadata.get(_KEY)
        if isinstance(p, Param):
            yield ParamField(f.name, hints[f.name], f.default, p)


def describes_run(f: dataclasses.Field[Any]) -> bool:
    """Whether a field belongs in the recorded hyperparameters (undeclared fields do)."""
    p = f.metadata.get(_KEY)
    return not isinstance(p, Param) or p.describes_run


def check_params(obj: object) -> None:
    """Raise ``ValueError`` naming the first declared field of dataclass ``obj`` outside its limits."""
    for f in params_of(type(obj)):
        value = getattr(obj, f.name)
        p = f.param
        if value is None:
            continue
        if p.choices is not None and value not in p.choices:
            raise ValueError(f"unknown {f.name} {value!r}; choose one of {', '.join(p.choices)}")
        if p.pattern is not None and isinstance(value, str) and not re.fullmatch(p.pattern, value):
            raise ValueError(f"{f.name} {value!r} is not allowed: {p.help}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")
        if p.ge is not None and value < p.ge:
            raise ValueError(f"{f.name} must be at least {_number(p.ge)}, got {value} ({p.help})")
        if p.gt is not None and value <= p.gt:
            raise ValueError(f"{f.name} must be greater than {_number(p.gt)}, got {value} ({p.help})")
        if p.le is not None and value > p.le:
            raise ValueError(f"{f.name} must be at most {_number(p.le)}, got {value}")


def stored_value_problem(f: ParamField, value: Any) -> str | None:
    """What ``value`` should be to stand for field ``f`` in a stored record (JSON), or None when it does.

    Its declared type (``3`` is no ``str``, ``"3"`` no ``int``) and choices; null stands for
    any field (a record from before the field existed). Limits are not checked: they belong
    to requests, and a service's caps may change after a job was stored.
    """
    if value is None:
        return None
    if f.param.choices is not None:
        return None if value in f.param.choices else f"one of {', '.join(f.param.choices)}"
    kinds = [t for t in (typing.get_args(f.type) or (f.type,)) if t is not type(None)]
    if any(_JSON_KINDS[t][0](value) for t in kinds if t in _JSON_KINDS):
        return None
    return " or ".join(_JSON_KINDS[t][1] if t in _JSON_KINDS else t.__name__ for t in kinds)


# A declared type, as a JSON value holds it: the check and how to name it.
_JSON_KINDS: dict[Any, tuple[Any, str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"
