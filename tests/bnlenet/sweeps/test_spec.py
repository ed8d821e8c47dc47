"""A sweep request: checked against the job parameters' declarations and the caps, and expanded into trials."""

from __future__ import annotations

import pytest

from bnlenet.jobs import JOB_PARAMS
from bnlenet.settings import Settings
from bnlenet.sweeps.spec import SweepLimits, SweepRejected, expand, parse_spec, setting_of, trial_params

LIMITS = SweepLimits.from_settings(Settings())


def _rejected(body: dict, limits: SweepLimits = LIMITS) -> str:
    with pytest.raises(SweepRejected) as info:
        parse_spec(body, limits)
    return str(info.value)


def test_spec_grid_is_the_product_in_parameter_order():
    spec = parse_spec({"parameters": {"lr": {"values": [0.1, 0.3]}, "seed": {"values": [0, 1, 2]}}}, LIMITS)
    trials = expand(spec)
    assert trials == [{"lr": lr, "seed": s} for lr in (0.1, 0.3) for s in (0, 1, 2)]
    assert [setting_of(t) for t in trials[:4]] == ["lr=0.1"] * 3 + ["lr=0.3"]


def test_spec_trial_params_are_defaults_then_base_then_swept():
    spec = parse_spec({"parameters": {"lr": {"values": [0.3]}}, "base": {"epochs": 2}}, LIMITS)
    params = trial_params(spec, expand(spec)[0])
    assert set(params) == set(JOB_PARAMS)
    assert params["epochs"] == 2 and params["lr"] == 0.3 and params["variant"] == JOB_PARAMS["variant"].default


def test_spec_random_draws_are_seeded_and_within_the_range():
    body = {"method": "random", "max_trials": 20, "seed": 3,
            "parameters": {"lr": {"min": 0.01, "max": 3.0, "distribution": "log_uniform"},
                           "batch_size": {"min": 16, "max": 64, "distribution": "int_uniform"},
                           "variant": {"values": ["scratch", "builtin"]}}}
    first, again = expand(parse_spec(body, LIMITS)), expand(parse_spec(body, LIMITS))
    other = expand(parse_spec({**body, "seed": 4}, LIMITS))
    assert first == again and first != other and len(first) == 20
    assert all(0.01 <= t["lr"] <= 3.0 and 16 <= t["batch_size"] <= 64 and isinstance(t["batch_size"], int)
               for t in first)
    assert {t["variant"] for t in first} == {"scratch", "builtin"}


def test_spec_rejects_what_a_job_cannot_take_saying_what_to_change():
    assert "sweep one of" in _rejected({"parameters": {"learning_rate": {"values": [1]}}})
    assert "should be one of scratch, builtin" in _rejected({"parameters": {"variant": {"values": ["fancy"]}}})
    assert "should be a whole number" in _rejected({"parameters": {"epochs": {"values": ["3"]}}})
    assert "greater than 0" in _rejected({"parameters": {"lr": {"values": [0.0]}}})
    assert "MAX_EPOCHS=100" in _rejected({"parameters": {"epochs": {"values": [101]}}})
    assert "base: epochs" in _rejected({"parameters": {"lr": {"values": [1.0]}}, "base": {"epochs": 0}})


def test_spec_caps_follow_the_settings():
    limits = SweepLimits.from_settings(Settings(MAX_LR=2.0, MAX_SWEEP_TRIALS=4))
    assert "MAX_LR=2" in _rejected({"parameters": {"lr": {"values": [3.0]}}}, limits)
    message = _rejected({"parameters": {"seed": {"values": [0, 1, 2, 3, 4]}}}, limits)
    assert "5 trials" in message and "MAX_SWEEP_TRIALS=4" in message
    parse_spec({"parameters": {"seed": {"values": [0, 1, 2, 3]}}}, limits)  # at the cap: fine


def test_spec_total_epochs_are_capped():
    limits = SweepLimits.from_settings(Settings(MAX_SWEEP_TOTAL_EPOCHS=10))
    message = _rejected({"parameters": {"seed": {"values": [0, 1, 2]}}, "base": {"epochs": 4}}, limits)
    assert "12 epochs" in message and "MAX_SWEEP_TOTAL_EPOCHS=10" in message


def test_spec_rejects_malformed_requests():
    assert "random sweep draws max_trials" in _rejected({"method": "random", "parameters": {"lr": {"values": [1.0]}}})
    assert "ranges are for method random" in _rejected({"parameters": {"lr": {"min": 0.1, "max": 1.0}}})
    assert "int_uniform" in _rejected({"method": "random", "max_trials": 2,
                                       "parameters": {"epochs": {"min": 1, "max": 3}}})
    assert "both swept and in base" in _rejected({"parameters": {"lr": {"values": [1.0]}}, "base": {"lr": 1.0}})
    assert "repeats a value" in _rejected({"parameters": {"lr": {"values": [1.0, 1.0]}}})
    assert "min_epochs" in _rejected({"parameters": {"lr": {"values": [1.0]}},
                                      "early_stopping": {"type": "median", "min_epochs": 0}})
    assert "grid has 4 trials" in _rejected({"parameters": {"seed": {"values": [0, 1, 2, 3]}}, "max_trials": 3})


def test_spec_setting_leaves_out_the_seed_and_names_a_seed_only_sweep():
    assert setting_of({"seed": 3, "variant": "builtin", "lr": 1.0}) == "lr=1, variant=builtin"
    assert setting_of({"seed": 3}) == "base"
    assert setting_of({"precise_bn": False}) == "precise_bn=false"
