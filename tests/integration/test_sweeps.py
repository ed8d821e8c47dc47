"""Sweeps end to end: the API stores the trials, a real worker runs them, early stopping and cancel work."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from tests.dataset_uploads import fashion_mnist_subset, folder_zip
from tests.integration.conftest import ROOT, Stack, wait_for

pytestmark = pytest.mark.integration


def _sweep(stack: Stack, sweep_id: str) -> dict:
    r = stack.client.get(f"/sweeps/{sweep_id}")
    assert r.status_code == 200, r.text
    return r.json()


def _wait_sweep(stack: Stack, sweep_id: str, statuses: set[str], timeout: float = 180) -> dict:
    wait_for(lambda: _sweep(stack, sweep_id)["status"] in statuses, timeout,
             lambda: f"sweep {sweep_id} is {_sweep(stack, sweep_id)['status']}:\n"
             + "\n".join(w.tail() for w in stack.workers))
    return _sweep(stack, sweep_id)


def _events(stack: Stack, sweep_id: str) -> list[tuple[str, dict]]:
    """The sweep's event stream, read in this thread until the server closes it (the sweep ended)."""
    events, kind = [], None
    with stack.client.stream("GET", f"/sweeps/{sweep_id}/events", timeout=180) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind is not None:
                events.append((kind, json.loads(line.split(":", 1)[1])))
                kind = None
    return events


def test_sweep_grid_runs_every_trial_and_reports_per_setting(stack):
    body = {"parameters": {"lr": {"values": [0.3, 1.0]}, "seed": {"values": [0, 1]}},
            "base": {"epochs": 2, "batch_size": 64}}
    r = stack.client.post("/sweeps", json=body)
    assert r.status_code == 202, r.text
    sweep_id = r.json()["id"]
    events = _events(stack, sweep_id)  # follows it live, to the end
    sweep = _sweep(stack, sweep_id)
    assert sweep["status"] == "succeeded"
    jobs = stack.client.get("/jobs", params={"sweep": sweep_id}).json()["data"]
    assert len(jobs) == 4 and all(j["status"] == "succeeded" and j["sweep_id"] == sweep_id for j in jobs)
    assert [(j["params"]["lr"], j["params"]["seed"]) for j in jobs] == [(0.3, 0), (0.3, 1), (1.0, 0), (1.0, 1)]
    for job, trial in zip(jobs, sweep["trials"], strict=True):
        assert trial["job_id"] == job["job_id"] and trial["final_test_acc"] == job["final_test_acc"]
        assert trial["epochs_run"] == 2 and not trial["stopped_early"]
        model = stack.client.get(f"/models/{trial['model_id']}")
        assert model.status_code == 200 and model.json()["final_test_acc"] == job["final_test_acc"]
    for setting, lr in (("lr=0.3", 0.3), ("lr=1", 1.0)):
        accs = [j["final_test_acc"] for j in jobs if j["params"]["lr"] == lr]
        entry = next(s for s in sweep["settings"] if s["setting"] == setting)
        assert entry["trials"] == 2 and entry["params"] == {"lr": lr}
        assert entry["mean"] == pytest.approx(statistics.fmean(accs), abs=1e-12)
        assert entry["std"] == pytest.approx(statistics.stdev(accs), abs=1e-12)
        assert (entry["min"], entry["max"]) == (min(accs), max(accs))
    best = max(jobs, key=lambda j: j["final_test_acc"])
    assert sweep["best"]["final_test_acc"] == best["final_test_acc"]
    # The live stream: the snapshot, every trial's epochs and statuses, and the sweep's end last.
    assert events[0][0] == "sweep" and events[-1][0] == "sweep" and events[-1][1]["status"] == "succeeded"
    epochs = sorted((d["job_id"], d["epoch"]) for k, d in events if k == "epoch")
    assert epochs == sorted((j["job_id"], e) for j in jobs for e in (1, 2))
    assert {d["job_id"] for k, d in events if k == "trial" and d["status"] == "succeeded"} == {j["job_id"] for j in jobs}


def test_sweep_early_stopping_ends_a_trial_that_is_clearly_behind(stack):
    # lr 1e-9 leaves the network where it started (near chance) while lr 0.5 learns: the median rule
    # stops the second trial after its first epoch (the one worker runs them in order, unpacked).
    body = {"parameters": {"lr": {"values": [0.5, 1e-9]}}, "base": {"epochs": 3, "batch_size": 32, "precise_bn": False},
            "early_stopping": {"type": "median", "min_epochs": 1}, "pack": False}
    sweep_id = stack.client.post("/sweeps", json=body).json()["id"]
    sweep = _wait_sweep(stack, sweep_id, {"succeeded", "failed", "cancelled"})
    assert sweep["status"] == "succeeded"
    good, behind = sweep["trials"]
    assert good["epochs_run"] == 3 and not good["stopped_early"]
    assert behind["stopped_early"] and behind["epochs_run"] == 1 and behind["status"] == "succeeded"
    job = stack.job(behind["job_id"])
    assert job["stopped_early"] and "median rule" in job["note"]
    # Its model is the model after the epoch it ran (moving-average BN statistics, as precise_bn is off),
    # stored and served, scoring what that epoch scored.
    assert job["final_test_acc"] == job["history"][0]["test_acc"]
    model = stack.client.get(f"/models/{behind['model_id']}").json()
    assert model["final_test_acc"] == job["final_test_acc"]
    assert model["hyperparameters"]["epochs"] == 1  # the run it equals: its one epoch, not the 3 asked
    assert [s["trials"] for s in sweep["settings"]] == [1, 0]  # a stopped trial is no full run of its setting
    assert sweep["best"]["job_id"] == good["job_id"]


def test_a_trial_stopped_early_keeps_its_uploaded_data_sets_classes(stack):
    arrays, names = fashion_mnist_subset((0, 1, 7), train=300, test=90)  # T-shirt/top, Trouser, Sneaker
    ds = stack.upload_dataset(folder_zip(arrays, names), "three.zip", name="stop-three")
    body = {"parameters": {"lr": {"values": [0.5, 1e-9]}},
            "base": {"epochs": 3, "batch_size": 32, "precise_bn": False, "dataset": "stop-three"},
            "early_stopping": {"type": "median", "min_epochs": 1}, "pack": False}  # a lone trial's stop
    sweep = _wait_sweep(stack, stack.client.post("/sweeps", json=body).json()["id"], {"succeeded", "failed", "cancelled"})
    assert sweep["status"] == "succeeded", sweep
    good, behind = sweep["trials"]
    assert behind["stopped_early"] and behind["epochs_run"] == 1 and behind["status"] == "succeeded", (
        sweep, stack.job(behind["job_id"]), stack.workers[0].tail())
    for trial in (good, behind):
        model = stack.client.get(f"/models/{trial['model_id']}").json()
        assert model["dataset"] == ds["id"] and model["classes"] == ds["classes"], model


def test_a_cpu_worker_packs_the_trials_of_small_batches_only(stack):
    """Where packing pays on the CPU (``packing_pays``: batches up to 32), without SWEEP_PACK_ON_CPU."""
    def run(batch_size: int) -> dict:
        body = {"parameters": {"seed": {"values": [0, 1]}}, "base": {"epochs": 1, "batch_size": batch_size}}
        sweep = _wait_sweep(stack, stack.client.post("/sweeps", json=body).json()["id"], {"succeeded", "failed"})
        assert sweep["status"] == "succeeded", sweep
        return sweep

    small, large = run(16), run(64)
    assert f"training 2 trials of sweep {small['id']} as one pack" in stack.worker_logs()
    assert f"of sweep {large['id']} as one pack" not in stack.worker_logs()


def test_sweep_cancel_cancels_queued_and_running_trials(stack):
    body = {"parameters": {"seed": {"values": [0, 1, 2]}}, "base": {"epochs": 100, "batch_size": 2}, "pack": False}
    sweep = stack.client.post("/sweeps", json=body).json()
    first = sweep["trials"][0]["job_id"]
    stack.wait_job(first, {"running"})
    cancelled = stack.client.post(f"/sweeps/{sweep['id']}/cancel").json()
    assert [t["status"] for t in cancelled["trials"]] == ["running", "cancelled", "cancelled"]
    assert stack.wait_job(first, {"cancelled", "succeeded", "failed"}, timeout=30)["status"] == "cancelled"
    ended = _wait_sweep(stack, sweep["id"], {"cancelled", "succeeded", "failed"}, timeout=30)
    assert ended["status"] == "cancelled" and {t["status"] for t in ended["trials"]} == {"cancelled"}
    assert stack.client.delete(f"/sweeps/{sweep['id']}").status_code == 204
    assert stack.client.get("/jobs", params={"sweep": sweep["id"]}).status_code == 404


def _bnlenet(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnlenet.local.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


def test_sweep_command_line_submits_follows_shows_and_deletes(stack):
    env = {**stack.env, "BNLENET_URL": stack.url}
    done = _bnlenet("sweep", "--param", "lr=0.5", "--param", "seed=0..1", "--base", "epochs=1",
                    "--base", "batch_size=64", "--name", "cli", env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    sweep_id = done.stdout.split()[1].rstrip(":")
    sweep = _sweep(stack, sweep_id)
    assert sweep["status"] == "succeeded" and sweep["name"] == "cli" and len(sweep["trials"]) == 2
    assert [t["params"] for t in sweep["trials"]] == [{"lr": 0.5, "seed": 0}, {"lr": 0.5, "seed": 1}]
    for trial in sweep["trials"]:
        assert f"trial {trial['job_id']} (lr=0.5, seed={trial['params']['seed']}): succeeded" in done.stdout
    entry = sweep["settings"][0]
    table_row = next(line for line in done.stdout.splitlines() if line.startswith("lr=0.5 "))
    assert table_row.split() == ["lr=0.5", "2", *(f"{entry[k]:.4f}" for k in ("mean", "std", "min", "max"))]
    shown = _bnlenet("sweeps", "show", sweep_id, "--json", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == sweep_id
    listed = _bnlenet("sweeps", "list", env=env)
    assert sweep_id in listed.stdout
    refused = _bnlenet("sweep", "--param", "lr=-1", env=env)
    assert refused.returncode == 2 and "lr must be greater than 0" in refused.stderr
    assert _bnlenet("sweeps", "delete", sweep_id, env=env).returncode == 0
    assert stack.client.get(f"/sweeps/{sweep_id}").status_code == 404
