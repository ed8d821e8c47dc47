"""A sweep's summary: per setting statistics of the served models' accuracy, the best trial, the derived status."""

from __future__ import annotations

import statistics

from bnlenet.sweeps.record import sweep_status
from bnlenet.sweeps.summary import best_trial, settings_summary


def _trial(job_id, setting, seed, acc, status="succeeded", stopped=False):
    lr = float(setting.split("=")[1])
    return {"job_id": job_id, "params": {"lr": lr, "seed": seed}, "setting": setting, "status": status,
            "final_test_acc": acc, "stopped_early": stopped, "model_id": job_id if acc is not None else None,
            "epochs_run": 3}


def test_summary_per_setting_across_seeds():
    trials = [_trial("a", "lr=0.1", 0, 0.80), _trial("b", "lr=0.1", 1, 0.84), _trial("c", "lr=0.1", 2, 0.83),
              _trial("d", "lr=1", 0, 0.88), _trial("e", "lr=1", 1, 0.86)]
    low, high = settings_summary(trials)
    assert low["setting"] == "lr=0.1" and low["params"] == {"lr": 0.1} and low["trials"] == 3
    assert low["mean"] == statistics.fmean([0.80, 0.84, 0.83])
    assert low["std"] == statistics.stdev([0.80, 0.84, 0.83])
    assert (low["min"], low["max"]) == (0.80, 0.84)
    assert high["mean"] == statistics.fmean([0.88, 0.86]) and high["trials"] == 2


def test_summary_leaves_out_unfinished_failed_and_stopped_trials():
    trials = [_trial("a", "lr=0.1", 0, 0.80), _trial("b", "lr=0.1", 1, 0.40, stopped=True),
              _trial("c", "lr=0.1", 2, None, status="failed"), _trial("d", "lr=1", 0, None, status="running")]
    low, high = settings_summary(trials)
    assert low["trials"] == 1 and low["mean"] == 0.80 and low["std"] == 0.0
    assert high["trials"] == 0 and high["mean"] is None and high["std"] is None


def test_best_trial_is_the_highest_served_accuracy():
    trials = [_trial("a", "lr=0.1", 0, 0.80), _trial("b", "lr=1", 0, 0.88), _trial("c", "lr=1", 1, 0.87)]
    assert best_trial(trials) == {"job_id": "b", "params": {"lr": 1.0, "seed": 0}, "final_test_acc": 0.88,
                                  "model_id": "b"}
    assert best_trial([_trial("x", "lr=1", 0, None, status="queued")]) is None


def test_sweep_status_from_its_trials():
    assert sweep_status(["queued", "queued"], False) == "queued"
    assert sweep_status(["succeeded", "queued"], False) == "running"
    assert sweep_status(["running", "queued"], False) == "running"
    assert sweep_status(["succeeded", "succeeded"], False) == "succeeded"
    assert sweep_status(["succeeded", "failed"], False) == "failed"
    assert sweep_status(["succeeded", "cancelled"], True) == "cancelled"
    assert sweep_status(["running", "cancelled"], True) == "running"  # until its running trial stops
    assert sweep_status(["queued", "queued"], True) == "cancelled"
