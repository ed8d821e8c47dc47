"""Packed sweeps on a real worker told to pack on the CPU: the same results as trials run alone, exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dataset_uploads import fashion_mnist_subset, folder_zip
from tests.integration.conftest import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration

TRIALS = {"parameters": {"seed": {"values": [0, 1, 2]}, "lr": {"values": [0.5]}}, "base": {"epochs": 2, "batch_size": 64}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("pack-stack"), synthetic_data_dir, SWEEP_PACK_ON_CPU="true",
                       TRAINING_THREADS="1") as s:
        yield s


def _run(stack: Stack, body: dict, timeout: float = 180) -> dict:
    sweep_id = stack.client.post("/sweeps", json=body).json()["id"]
    wait_for(lambda: stack.client.get(f"/sweeps/{sweep_id}").json()["status"] in {"succeeded", "failed", "cancelled"},
             timeout, lambda: "\n".join(w.tail() for w in stack.workers))
    return stack.client.get(f"/sweeps/{sweep_id}").json()


def _jobs(stack: Stack, sweep_id: str) -> list[dict]:
    return stack.client.get("/jobs", params={"sweep": sweep_id}).json()["data"]


def test_packed_trials_equal_the_same_trials_run_alone(stack):
    alone = _run(stack, {**TRIALS, "pack": False})
    assert f"of sweep {alone['id']} as one pack" not in stack.worker_logs()
    packed = _run(stack, TRIALS)
    assert packed["status"] == "succeeded" and alone["status"] == "succeeded"
    assert f"training 3 trials of sweep {packed['id']} as one pack" in stack.worker_logs()
    for solo, pack in zip(_jobs(stack, alone["id"]), _jobs(stack, packed["id"]), strict=True):
        assert pack["params"]["seed"] == solo["params"]["seed"] and pack["attempts"] == 1
        assert pack["final_test_acc"] == pytest.approx(solo["final_test_acc"], abs=2 / 128)  # a test image or two
        for a, b in zip(pack["history"], solo["history"], strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
        model = stack.client.get(f"/models/{pack['model_id']}").json()
        assert model["final_test_acc"] == pack["final_test_acc"]


def test_a_crashed_pack_resumes_each_trial_from_its_last_epoch_exactly_once(stack):
    body = {**TRIALS, "base": {"epochs": 30, "batch_size": 16}}
    sweep = stack.client.post("/sweeps", json=body).json()
    ids = [t["job_id"] for t in sweep["trials"]]
    wait_for(lambda: all(stack.job(i)["history"] for i in ids), 120,
             lambda: "the pack did not train:\n" + stack.worker_logs()[-3000:])
    assert f"training 3 trials of sweep {sweep['id']} as one pack" in stack.worker_logs()
    stack.workers[-1].kill()  # the whole pack dies mid-training
    stack.start_worker("w2")
    for job_id in ids:
        job = stack.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=240)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2 and len(job["history"]) == 30 and job["model_id"] == job_id
        first, second = job["attempt_log"]
        assert (first["attempt"], second["attempt"]) == (1, 2)
        # The pack saved each trial's state after every epoch: the lone second attempt went on from it.
        assert first["saved_epoch"] >= 1 and second["resumed_from"] == first["saved_epoch"], job["attempt_log"]
        assert [m["epoch"] for m in job["history"]] == list(range(1, 31))  # each epoch once
    time.sleep(1)
    assert {stack.job(i)["attempts"] for i in ids} == {2}  # no third run: each ran once more, and once only


def test_a_pack_trains_on_the_sweeps_uploaded_data_set(stack):
    arrays, names = fashion_mnist_subset((0, 1, 7), train=300, test=90)  # T-shirt/top, Trouser, Sneaker
    ds = stack.upload_dataset(folder_zip(arrays, names), "three.zip", name="pack-three")
    sweep = _run(stack, {"parameters": {"seed": {"values": [0, 1]}},
                         "base": {"epochs": 2, "batch_size": 16, "dataset": "pack-three"}})
    assert sweep["status"] == "succeeded", sweep
    assert f"training 2 trials of sweep {sweep['id']} as one pack" in stack.worker_logs()
    for job in _jobs(stack, sweep["id"]):
        assert job["params"]["dataset"] == ds["id"]
        assert job["progress"]["batches"] == 300 // 16 + 1  # an epoch of the upload's 300 images, not the built-in set
        model = stack.client.get(f"/models/{job['model_id']}").json()
        assert model["dataset"] == ds["id"] and model["classes"] == ds["classes"], model
        assert model["final_test_acc"] > 0.6, model  # three easy classes; chance is a third


def test_the_sweeps_rule_takes_a_trial_out_of_its_pack(stack):
    # lr 1e-9 leaves its network near chance while lr 0.5 learns: the median rule stops it after epoch 1.
    body = {"parameters": {"lr": {"values": [0.5, 1e-9]}}, "base": {"epochs": 3, "batch_size": 16, "precise_bn": False},
            "early_stopping": {"type": "median", "min_epochs": 1}}
    sweep = _run(stack, body)
    assert sweep["status"] == "succeeded", sweep
    assert f"training 2 trials of sweep {sweep['id']} as one pack" in stack.worker_logs()
    good, behind = sweep["trials"]
    assert good["epochs_run"] == 3 and not good["stopped_early"]
    assert behind["stopped_early"] and behind["epochs_run"] == 1 and behind["status"] == "succeeded", behind
    for trial in (good, behind):
        job = stack.job(trial["job_id"])
        assert job["attempts"] == 1 and job["attempt_log"][0]["saved_epoch"] == trial["epochs_run"], job
        model = stack.client.get(f"/models/{trial['model_id']}").json()
        assert model["hyperparameters"]["epochs"] == trial["epochs_run"], model  # the run its model equals


def test_a_trial_that_leaves_its_pack_is_recorded_then_and_keeps_its_model_when_the_sweep_is_cancelled(stack):
    # One pack of a 1-epoch and a 100-epoch trial: the short one's outcome is written when it leaves the pack,
    # not when the pack ends, so the sweep's cancel that ends the long one cannot take the short one's model.
    sweep = stack.client.post("/sweeps", json={"parameters": {"epochs": {"values": [1, 100]}},
                                               "base": {"batch_size": 2}}).json()
    assert "trials" in sweep, sweep
    short_id, long_id = (t["job_id"] for t in sweep["trials"])
    short = stack.wait_job(short_id, {"succeeded", "failed", "cancelled"}, timeout=60)
    assert f"training 2 trials of sweep {sweep['id']} as one pack" in stack.worker_logs()
    assert short["status"] == "succeeded" and short["model_id"] == short_id, short
    assert stack.job(long_id)["status"] == "running"  # the pack goes on with the other trial
    assert stack.client.post(f"/sweeps/{sweep['id']}/cancel").status_code == 200
    assert stack.wait_job(long_id, {"succeeded", "failed", "cancelled"}, timeout=60)["status"] == "cancelled"
    short = stack.job(short_id)
    assert short["status"] == "succeeded" and short["model_id"] == short_id and len(short["history"]) == 1, short
    model = stack.client.get(f"/models/{short_id}")
    assert model.status_code == 200 and model.json()["final_test_acc"] == short["final_test_acc"]


def test_a_packed_trial_stops_only_after_an_epoch_whose_state_it_holds(stack):
    # As a lone trial: with checkpoint_every 2 the rule is first asked after epoch 2, not 1.
    body = {"parameters": {"lr": {"values": [0.5, 1e-9]}},
            "base": {"epochs": 4, "batch_size": 16, "precise_bn": False, "checkpoint_every": 2},
            "early_stopping": {"type": "median", "min_epochs": 1}}
    sweep = _run(stack, body)
    assert f"training 2 trials of sweep {sweep['id']} as one pack" in stack.worker_logs()
    good, behind = sweep["trials"]
    assert good["epochs_run"] == 4 and not good["stopped_early"]
    assert behind["stopped_early"] and behind["epochs_run"] == 2, behind
    assert stack.job(behind["job_id"])["attempt_log"][0]["saved_epoch"] == 2
