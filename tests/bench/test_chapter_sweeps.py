"""The chapter's sweeps in sweeps/: valid requests whose every trial is a valid TrainConfig."""

from __future__ import annotations

import math

import pytest

from bench.chapter_sweeps import SWEEPS, expand_grid, load_sweep, setting_of, settings_summary
from models.training import TrainConfig

S1_KEYS = {"name", "method", "parameters", "base", "max_trials", "seed", "objective", "early_stopping", "pack"}


@pytest.mark.parametrize("name", SWEEPS)
def test_chapter_sweep_is_a_request_of_valid_trials(name: str) -> None:
    sweep = load_sweep(name)
    assert set(sweep) == S1_KEYS and sweep["method"] == "grid"
    trials = expand_grid(sweep)
    sizes = [len(p["values"]) for p in sweep["parameters"].values()]
    assert len(trials) == math.prod(sizes)
    for params in trials:
        TrainConfig(**{**sweep["base"], **params})  # raises on an unknown field or a value out of range


def test_chapter_sweeps_ask_the_chapter_questions() -> None:
    assert {t["variant"] for t in expand_grid(load_sweep("variants"))} == {"scratch", "builtin"}
    assert len({t["seed"] for t in expand_grid(load_sweep("variants"))}) == 5
    assert [t["lr"] for t in expand_grid(load_sweep("learning-rates"))][::2] == [0.1, 0.3, 1.0, 3.0]
    sizes = [t["batch_size"] for t in expand_grid(load_sweep("batch-sizes"))]
    assert sizes[0] == 16 and sizes[-1] == 1024


def test_settings_summary_counts_seeds_and_diverged_trials() -> None:
    trials = [{"setting": setting_of({"lr": 1.0, "seed": s}), "final_test_acc": a} for s, a in enumerate((0.8, 0.9))]
    trials.append({"setting": "lr=3.0", "final_test_acc": None})
    rows = {r["setting"]: r for r in settings_summary(trials)}
    assert rows["lr=1.0"]["trials"] == 2 and rows["lr=1.0"]["mean"] == pytest.approx(0.85)
    assert rows["lr=1.0"]["min"] == 0.8 and rows["lr=1.0"]["max"] == 0.9
    assert rows["lr=3.0"]["diverged"] == 1
