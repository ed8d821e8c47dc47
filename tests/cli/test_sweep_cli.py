"""``bnlenet sweep``'s request building: --param values typed as the job parameters declare them."""

from __future__ import annotations

import json

import httpx
import pytest

from bnlenet.local.sweep_cli import SweepCliError, parse_param, settings_table, sweep_request


def test_parse_param_lists_ranges_and_declared_types():
    assert parse_param("lr=0.1,1") == ("lr", [0.1, 1.0])
    assert isinstance(parse_param("lr=1")[1][0], float)  # lr is declared a float
    assert parse_param("seed=0..4") == ("seed", [0, 1, 2, 3, 4])
    assert parse_param("variant=scratch,builtin") == ("variant", ["scratch", "builtin"])
    assert parse_param("precise-bn=true,false") == ("precise_bn", [True, False])
    assert parse_param("init_model=123") == ("init_model", ["123"])  # a text parameter keeps the text


@pytest.mark.parametrize("bad", ["lr", "=1", "lr=", "seed=4..0"])
def test_parse_param_rejects_what_it_cannot_read(bad):
    with pytest.raises(SweepCliError):
        parse_param(bad)


def test_sweep_request_from_options_or_a_file(tmp_path):
    body = sweep_request(None, ["lr=0.3,1.0", "seed=0..1"], ["epochs=3"], early_stopping="median")
    assert body["parameters"] == {"lr": {"values": [0.3, 1.0]}, "seed": {"values": [0, 1]}}
    assert body["base"] == {"epochs": 3} and body["early_stopping"] == {"type": "median", "min_epochs": 1}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"parameters": {"seed": {"values": [0]}}}))
    assert sweep_request(str(path), [], []) == {"parameters": {"seed": {"values": [0]}}}
    with pytest.raises(SweepCliError, match="not both"):
        sweep_request(str(path), ["lr=1"], [])
    with pytest.raises(SweepCliError, match="nothing to sweep"):
        sweep_request(None, [], [])


def test_settings_table_shows_each_setting_and_the_best():
    sweep = {"settings": [{"setting": "lr=0.3", "trials": 2, "mean": 0.81, "std": 0.01, "min": 0.8, "max": 0.82},
                          {"setting": "lr=1", "trials": 0, "mean": None, "std": None, "min": None, "max": None}],
             "best": {"job_id": "j", "params": {"lr": 0.3, "seed": 1}, "final_test_acc": 0.82, "model_id": "j"}}
    lines = settings_table(sweep).splitlines()
    assert lines[1].split() == ["lr=0.3", "2", "0.8100", "0.0100", "0.8000", "0.8200"]
    assert lines[2].split() == ["lr=1", "0", "-", "-", "-", "-"]
    assert "best: job j (lr=0.3, seed=1), final test acc 0.8200" in lines[3]


def test_a_refused_sweep_lists_each_problem_once():
    from bnlenet.local.sweep_cli import _answer

    problems = ["parameters.lr: lr -1 should be above 0", "base.epochs: epochs 0 should be at least 1"]
    response = httpx.Response(422, json={"detail": "; ".join(problems), "problems": problems})
    with pytest.raises(SweepCliError) as caught:
        _answer(response, 202)
    message = str(caught.value)
    assert all(message.count(p) == 1 for p in problems), message
    assert message.splitlines() == ["the service answered 422:", *(f"  - {p}" for p in problems)]
