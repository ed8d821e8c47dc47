"""A sweep request: what it may sweep, checked, and expanded into its trials' job parameters.

A sweep varies any job parameter (``bnlenet.jobs.JOB_PARAMS``, declared once on
``models.training.TrainConfig``): its names, types and limits are read from those declarations and
the service's ``MAX_<NAME>`` caps, never restated here. ``parse_spec`` takes the request as plain
JSON values and raises ``SweepRejected`` listing every problem, each saying what to change.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from bnlenet.jobs.record import JOB_PARAMS
from models.params import stored_value_problem
from models.training import TrainConfig

__all__ = [
    "DISTRIBUTIONS", "METHODS", "OBJECTIVES", "RULES", "SweepLimits", "SweepRejected", "SweepSpec", "StoppingRule",
    "expand", "param_problem", "parse_spec", "setting_of",
]

Method = Literal["grid", "random"]
METHODS: tuple[Method, ...] = ("grid", "random")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform")
OBJECTIVES = ("test_acc",)  # maximized: each epoch's test accuracy (history) and the served model's (final_test_acc)
RULES = ("median", "asha")
NO_SETTING = "base"  # the setting of trials that differ only in their seed


class SweepRejected(ValueError):
    """A sweep request that cannot run as asked; ``problems`` says each thing to change."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class SweepLimits:
    """The service's caps on one sweep (``Settings.MAX_SWEEP_*``) and on any job (``MAX_<NAME>``)."""

    max_trials: int = 64
    max_total_epochs: int = 2000  # summed over the trials: what one request may ask of the workers
    max_values: int = 64  # listed values of one parameter
    caps: tuple[tuple[str, float], ...] = ()  # (job parameter, its MAX_<NAME> cap)

    @classmethod
    def from_settings(cls, settings: Any) -> SweepLimits:
        caps = tuple((name, getattr(settings, f"MAX_{name.upper()}")) for name in JOB_PARAMS
                     if getattr(settings, f"MAX_{name.upper()}", None) is not None)
        return cls(max_trials=settings.MAX_SWEEP_TRIALS, max_total_epochs=settings.MAX_SWEEP_TOTAL_EPOCHS,
                   max_values=settings.MAX_SWEEP_VALUES, caps=caps)


@dataclass(frozen=True)
class StoppingRule:
    """When a trial that is behind stops (``bnlenet.sweeps.stopping``)."""

    type: Literal["median", "asha"]
    min_epochs: int = 1  # no trial stops before it has run this many epochs
    reduction_factor: int = 3  # ASHA: rungs at min_epochs * rf**k; the top 1/rf of each rung go on

    def as_dict(self) -> dict[str, Any]:
        if self.type == "median":
            return {"type": "median", "min_epochs": self.min_epochs}
        return {"type": "asha", "min_epochs": self.min_epochs, "reduction_factor": self.reduction_factor}


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep request."""

    method: Method
    parameters: dict[str, dict[str, Any]]  # name -> {"values": [...]} or {"min", "max", "distribution"}
    base: dict[str, Any]  # job parameters every trial shares (the rest are the defaults)
    name: str | None = None
    max_trials: int | None = None
    seed: int = 0  # of the random draws
    objective: str = "test_acc"
    early_stopping: StoppingRule | None = None
    pack: bool = True  # run trials that can share a step as one pack where packing pays

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "parameters": self.parameters, "base": self.base,
                "max_trials": self.max_trials, "seed": self.seed, "objective": self.objective,
                "early_stopping": None if self.early_stopping is None else self.early_stopping.as_dict(),
                "pack": self.pack}


def param_problem(name: str, value: Any, limits: SweepLimits) -> str | None:
    """What is wrong with ``value`` for job parameter ``name``, said as what to change; None when it is fine.

    The type and choices come from the declaration, the limits from ``TrainConfig``'s own check
    and the service's ``MAX_<NAME>`` cap.
    """
    field = JOB_PARAMS.get(name)
    if field is None:
        return f"{name!r} is not a job parameter; sweep one of {', '.join(JOB_PARAMS)}"
    if value is None:
        return None if field.default is None else f"{name} cannot be null: give a value or leave it out"
    kind = stored_value_problem(field, value)
    if kind is not None:
        return f"{name} {value!r} should be {kind}"
    cap = dict(limits.caps).get(name)
    if cap is not None and value > cap:
        return f"{name} {value!r} is over this service's cap (MAX_{name.upper()}={cap:g}): use at most {cap:g}"
    try:
        TrainConfig(**{name: value})
    except ValueError as exc:
        return str(exc)
    return None


def parse_spec(body: dict[str, Any], limits: SweepLimits) -> SweepSpec:
    """The checked request, or ``SweepRejected`` naming every problem and what to change."""
    problems: list[str] = []
    unknown = sorted(set(body) - {"name", "method", "parameters", "base", "max_trials", "seed", "objective",
                                  "early_stopping", "pack"})
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}; a sweep takes name, method, parameters, base, "
                        "max_trials, seed, objective, early_stopping, pack")
    method = body.get("method", "grid")
    if method not in METHODS:
        problems.append(f"method {method!r}: choose grid or random")
    base = body.get("base") or {}
    if not isinstance(base, dict):
        problems.append("base should be an object of job parameters")
        base = {}
    problems += [f"base: {p}" for n, v in base.items() if (p := param_problem(n, v, limits)) is not None]
    parameters = body.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        problems.append("parameters should name at least one job parameter to sweep, e.g. "
                        '{"lr": {"values": [0.1, 1.0]}}')
        parameters = {}
    for name, dimension in parameters.items():
        problems += _dimension_problems(name, dimension, method, limits)
    overlap = sorted(set(base) & set(parameters))
    if overlap:
        problems.append(f"{', '.join(overlap)} both swept and in base: leave them out of base")
    max_trials = body.get("max_trials")
    if max_trials is not None and (not _whole(max_trials) or max_trials < 1):
        problems.append(f"max_trials {max_trials!r} should be a whole number of at least 1 (or null)")
        max_trials = None
    if method == "random" and max_trials is None:
        problems.append("a random sweep draws max_trials trials: set max_trials")
    seed = body.get("seed", 0)
    if not _whole(seed) or seed < 0:
        problems.append(f"seed {seed!r} should be a whole number of at least 0")
    objective = body.get("objective", "test_acc")
    if objective not in OBJECTIVES:
        problems.append(f"objective {objective!r}: the only objective is test_acc (maximized)")
    rule = _rule(body.get("early_stopping"), problems)
    pack = body.get("pack", True)
    if not isinstance(pack, bool):
        problems.append("pack should be true or false")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        problems.append("name should be a string of at most 200 characters (or null)")
    if problems:
        raise SweepRejected(problems)
    spec = SweepSpec(method=method, parameters=parameters, base=base, name=name, max_trials=max_trials, seed=seed,
                     objective=objective, early_stopping=rule, pack=pack)
    _check_size(spec, limits)
    return spec


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """Each trial's swept values, in order: the grid's product (parameters in the order given), or seeded draws."""
    names = list(spec.parameters)
    if spec.method == "grid":
        grid = [dict(zip(names, combo, strict=True))
                for combo in itertools.product(*(spec.parameters[n]["values"] for n in names))]
        return grid
    rng = random.Random(spec.seed)
    assert spec.max_trials is not None
    return [{n: _draw(rng, spec.parameters[n]) for n in names} for _ in range(spec.max_trials)]


def trial_params(spec: SweepSpec, swept: dict[str, Any]) -> dict[str, Any]:
    """A trial's whole job parameters: the defaults, then the sweep's base, then its swept values."""
    return {**{n: f.default for n, f in JOB_PARAMS.items()}, **spec.base, **swept}


def setting_of(swept: dict[str, Any]) -> str:
    """The setting a trial belongs to: its swept values less the seed, ``lr=0.3, variant=scratch``."""
    parts = [f"{k}={_text(v)}" for k, v in sorted(swept.items()) if k != "seed"]
    return ", ".join(parts) or NO_SETTING


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def _draw(rng: random.Random, dimension: dict[str, Any]) -> Any:
    if "values" in dimension:
        return rng.choice(dimension["values"])
    low, high, how = dimension["min"], dimension["max"], dimension.get("distribution", "uniform")
    if how == "int_uniform":
        return rng.randint(int(low), int(high))
    if how == "log_uniform":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.uniform(low, high)


def _dimension_problems(name: str, dimension: Any, method: str, limits: SweepLimits) -> list[str]:
    if name not in JOB_PARAMS:
        return [param_problem(name, None, limits) or ""]
    if not isinstance(dimension, dict):
        return [f"parameters.{name} should be {{\"values\": [...]}} or {{\"min\", \"max\", \"distribution\"}}"]
    if "values" in dimension:
        values = dimension["values"]
        extra = sorted(set(dimension) - {"values"})
        if extra:
            return [f"parameters.{name}: a list of values takes nothing else (drop {', '.join(extra)})"]
        if not isinstance(values, list) or not values:
            return [f"parameters.{name}.values should be a non-empty list"]
        if len(values) > limits.max_values:
            return [f"parameters.{name} lists {len(values)} values, more than MAX_SWEEP_VALUES={limits.max_values}: "
                    "list fewer"]
        found = [f"parameters.{name}: {p}" for v in values if (p := param_problem(name, v, limits)) is not None]
        if not found and len({repr(v) for v in values}) < len(values):
            found.append(f"parameters.{name}.values repeats a value: list each once")
        return found
    if method == "grid":
        return [f"parameters.{name}: a grid sweep takes a list of values ({{\"values\": [...]}}); ranges are for "
                "method random"]
    extra = sorted(set(dimension) - {"min", "max", "distribution"})
    if extra:
        return [f"parameters.{name}: a range takes min, max and distribution (drop {', '.join(extra)})"]
    how = dimension.get("distribution", "uniform")
    if how not in DISTRIBUTIONS:
        return [f"parameters.{name}.distribution {how!r}: choose one of {', '.join(DISTRIBUTIONS)}"]
    low, high = dimension.get("min"), dimension.get("max")
    kind = JOB_PARAMS[name].type
    if kind not in (int, float):
        return [f"parameters.{name}: a range needs a numeric parameter; list the values of {name} instead"]
    if kind is int and how != "int_uniform":
        return [f"parameters.{name} is a whole number: use distribution int_uniform"]
    found = [f"parameters.{name}.{end}: {p}" for end, v in (("min", low), ("max", high))
             if (p := param_problem(name, v, limits) if v is not None else f"set {end}") is not None]
    if found or low is None or high is None:
        return found
    if low > high:
        return [f"parameters.{name}: min {low} is above max {high}"]
    if how == "log_uniform" and low <= 0:
        return [f"parameters.{name}: log_uniform needs min above 0"]
    return []


def _rule(raw: Any, problems: list[str]) -> StoppingRule | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("type") not in RULES:
        problems.append('early_stopping should be null, {"type": "median", "min_epochs": 1} or '
                        '{"type": "asha", "min_epochs": 1, "reduction_factor": 3}')
        return None
    allowed = {"type", "min_epochs"} | ({"reduction_factor"} if raw["type"] == "asha" else set())
    extra = sorted(set(raw) - allowed)
    if extra:
        problems.append(f"early_stopping ({raw['type']}) takes {', '.join(sorted(allowed))}: drop {', '.join(extra)}")
    min_epochs, factor = raw.get("min_epochs", 1), raw.get("reduction_factor", 3)
    if not _whole(min_epochs) or min_epochs < 1:
        problems.append(f"early_stopping.min_epochs {min_epochs!r} should be a whole number of at least 1")
    if not _whole(factor) or factor < 2:
        problems.append(f"early_stopping.reduction_factor {factor!r} should be a whole number of at least 2")
    return StoppingRule(type=raw["type"], min_epochs=min_epochs, reduction_factor=factor) if not extra else None


def _check_size(spec: SweepSpec, limits: SweepLimits) -> None:
    """The trial count and total epochs against the caps (and a grid against its own max_trials)."""
    if spec.method == "grid":
        count = math.prod(len(d["values"]) for d in spec.parameters.values())
        if spec.max_trials is not None and count > spec.max_trials:
            raise SweepRejected([f"the grid has {count} trials, more than its max_trials={spec.max_trials}: "
                                 "list fewer values, or raise max_trials"])
    else:
        assert spec.max_trials is not None
        count = spec.max_trials
    if count > limits.max_trials:
        raise SweepRejected([f"the sweep has {count} trials, more than this service runs in one sweep "
                             f"(MAX_SWEEP_TRIALS={limits.max_trials}): list fewer values or lower max_trials"])
    total = sum(trial_params(spec, swept)["epochs"] for swept in expand(spec))
    if total > limits.max_total_epochs:
        raise SweepRejected([f"the trials ask for {total} epochs in all, more than one sweep may "
                             f"(MAX_SWEEP_TOTAL_EPOCHS={limits.max_total_epochs}): fewer trials or fewer epochs"])


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
