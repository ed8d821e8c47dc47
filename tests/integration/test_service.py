"""End to end over HTTP: train, follow, predict, cancel, fail, restart the API."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(28, 28)).astype(np.int32)
    img[6:9, 4:24] += 180
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _bnlenet_predict(checkpoint, image) -> dict:
    exe = shutil.which("bnlenet", path=str(ROOT / ".venv" / "bin")) or shutil.which("bnlenet")
    cmd = [exe] if exe else [sys.executable, "-m", "bnlenet.local.cli"]
    out = subprocess.run([*cmd, "predict", str(checkpoint), str(image), "--json"], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_service_trains_then_predicts_like_the_cli(stack, tmp_path):
    r = stack.client.post("/train", json={"variant": "scratch", "epochs": 8, "batch_size": 8, "lr": 0.5})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/jobs/{job_id}"
    job = stack.wait_job(job_id, {"succeeded", "failed", "cancelled"})
    assert job["status"] == "succeeded", job
    assert "running" in job["_seen"]
    assert job["model_id"] == job_id
    assert len(job["history"]) == 8
    assert job["progress"]["fraction"] == pytest.approx(1.0)
    assert job["attempts"] == 1 and job["device"] == "cpu" and job["worker"]
    assert job["started_at"] and job["finished_at"]
    meta = json.loads(stack.client.get(f"/models/{job_id}").text)
    assert job["final_test_acc"] is not None and job["final_test_acc"] == meta["final_test_acc"]  # as stored
    assert job["params"]["precise_bn"] is True and meta["history"] == job["history"]

    image = tmp_path / "item.png"
    image.write_bytes(_png(1))
    r = stack.client.post("/predict", files={"file": ("item.png", image.read_bytes(), "image/png")},
                          data={"model_id": job_id})
    assert r.status_code == 200, r.text
    served = r.json()
    cli = _bnlenet_predict(stack.checkpoint_dir / f"{job_id}.safetensors", image)
    assert served["class_index"] == cli["class_index"]
    np.testing.assert_allclose(served["probabilities"], cli["probabilities"], atol=1e-5)
    # The default runtime, onnxruntime, takes over once the model's session is built (eager
    # answered meanwhile): its answers equal the CLI's too.
    assert served["runtime"] == "eager"

    def by_onnxruntime() -> dict | None:
        answer = stack.client.post("/predict", files={"file": ("item.png", image.read_bytes(), "image/png")},
                                   data={"model_id": job_id}).json()
        return answer if answer["runtime"] == "onnxruntime" else None

    wait_for(by_onnxruntime, 120, "onnxruntime never took over from eager", interval=0.5)
    served = by_onnxruntime()
    assert served is not None and served["class_index"] == cli["class_index"]
    np.testing.assert_allclose(served["probabilities"], cli["probabilities"], atol=1e-5)

    # the newest model is the default, and the model is described
    wait_for(lambda: stack.client.post("/predict", files={"file": ("x.png", _png(2), "image/png")})
             .json().get("model_id") == job_id, 5, "the new model did not become the default")
    model = stack.client.get(f"/models/{job_id}").json()
    assert model["variant"] == "scratch" and model["hyperparameters"]["lr"] == 0.5
    assert len(stack.client.get(f"/models/{job_id}/batchnorm").json()["layers"]) == 4


def test_service_cancels_a_running_job(stack):
    job_id = stack.client.post("/train", json={"epochs": 100, "batch_size": 2}).json()["job_id"]
    wait_for(lambda: (stack.job(job_id).get("progress") or {}).get("batch", 0) > 0, 60,
             "the long job never showed progress")
    r = stack.client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    job = stack.wait_job(job_id, {"cancelled", "succeeded", "failed"}, timeout=15)
    assert job["status"] == "cancelled"
    assert not (stack.checkpoint_dir / f"{job_id}.safetensors").exists()


def test_service_cancelled_queued_job_never_starts(stack):
    first = stack.client.post("/train", json={"epochs": 100, "batch_size": 2}).json()["job_id"]
    second = stack.client.post("/train", json={"epochs": 1}).json()["job_id"]
    wait_for(lambda: stack.job(first)["status"] == "running", 60, "the first job never ran")
    assert stack.client.post(f"/jobs/{second}/cancel").json()["status"] == "cancelled"
    stack.client.post(f"/jobs/{first}/cancel")
    stack.wait_job(first, {"cancelled"}, timeout=15)
    # the worker has now taken the second task from the queue and skipped it
    wait_for(lambda: stack.client.get("/jobs", params={"status": "running"}).json()["count"] == 0, 10, "still running")
    job = stack.job(second)
    assert job["status"] == "cancelled" and job["started_at"] is None and job["attempts"] == 0


def test_service_diverging_job_fails_with_the_reason(stack):
    job_id = stack.client.post("/train", json={"epochs": 2, "batch_size": 32, "lr": 1e36}).json()["job_id"]
    job = stack.wait_job(job_id, {"failed", "succeeded", "cancelled"})
    assert job["status"] == "failed"
    assert "diverged" in job["error"] and "1e+36" in job["error"]
    assert job["model_id"] is None
    assert not (stack.checkpoint_dir / f"{job_id}.safetensors").exists()


def test_service_api_restart_loses_no_jobs(stack):
    stack.client.post("/train", json={"epochs": 1, "batch_size": 64})
    before = stack.client.get("/jobs", params={"limit": 500}).json()
    stack.api.stop()
    stack.start_api()
    after = stack.client.get("/jobs", params={"limit": 500}).json()
    assert after["count"] == before["count"] >= 1
    assert {j["job_id"] for j in after["data"]} == {j["job_id"] for j in before["data"]}


def test_service_job_from_a_model_records_its_lineage(stack):
    """Train A, then B from A: B starts at A's weights, records A as parent, and A lists B as a child."""
    from models.checkpoint import load_checkpoint

    body = {"variant": "builtin", "epochs": 1, "batch_size": 64, "lr": 0.5}
    a = stack.client.post("/train", json=body).json()["job_id"]
    assert stack.wait_job(a, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    r = stack.client.post("/train", json={**body, "init_model": a, "seed": 1})
    assert r.status_code == 202, r.text
    b = r.json()["job_id"]
    job = stack.wait_job(b, {"succeeded", "failed", "cancelled"})
    assert job["status"] == "succeeded", job
    assert job["params"]["init_model"] == a

    child = load_checkpoint(stack.checkpoint_dir / f"{b}.safetensors").metadata
    assert child["parent"] == a and child["hyperparameters"]["init_model"] == a
    assert stack.client.get(f"/models/{b}").json()["parent"] == a
    assert stack.client.get(f"/models/{a}").json()["children"] == [b]
    # Fine-tuned from A: B's first epoch starts where A ended, far better than a fresh start's.
    fresh = stack.client.get(f"/models/{a}").json()["history"][0]
    assert job["history"][0]["train_acc"] > fresh["train_acc"]


def test_service_job_from_a_model_deleted_before_it_runs_fails_saying_so(stack):
    body = {"variant": "builtin", "epochs": 1, "batch_size": 64}
    a = stack.client.post("/train", json=body).json()["job_id"]
    assert stack.wait_job(a, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    busy = stack.client.post("/train", json={**body, "epochs": 100, "batch_size": 2}).json()["job_id"]
    b = stack.client.post("/train", json={**body, "init_model": a}).json()["job_id"]  # queued behind it
    assert stack.client.delete(f"/models/{a}").status_code == 204
    assert stack.client.post(f"/jobs/{busy}/cancel").status_code == 200
    job = stack.wait_job(b, {"succeeded", "failed", "cancelled"}, timeout=180)
    assert job["status"] == "failed" and "init_model" in job["error"] and a in job["error"], job
