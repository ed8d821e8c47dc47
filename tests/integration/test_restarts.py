"""Restarts and outages over real HTTP: Redis goes away and comes back, Redis and the API restart.

One stack for the module: a job trains to ``succeeded``, then the worker stops so that the
next jobs stay ``queued`` (one of them is cancelled). The tests run in file order.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import Stack, running_stack

pytestmark = pytest.mark.integration

SMALL_JOB = {"epochs": 1, "batch_size": 64}


def _png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(28, 28)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def restart_stack(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("restarts"), synthetic_data_dir) as s:
        yield s


@pytest.fixture(scope="module")
def jobs(restart_stack: Stack) -> dict[str, str]:
    """One succeeded job (and its model), then with the worker stopped one queued and one cancelled job."""
    s = restart_stack
    done = s.client.post("/train", json=SMALL_JOB).json()["job_id"]
    assert s.wait_job(done, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    s.workers[-1].stop()
    queued = s.client.post("/train", json=SMALL_JOB).json()["job_id"]
    cancelled = s.client.post("/train", json=SMALL_JOB).json()["job_id"]
    assert s.client.post(f"/jobs/{cancelled}/cancel").json()["status"] == "cancelled"
    return {"succeeded": done, "queued": queued, "cancelled": cancelled}


def _predict(s: Stack, model_id: str) -> dict:
    """The answer for one image, less the runtime that gave it (eager answers until onnxruntime is ready)."""
    r = s.client.post("/predict", files={"file": ("x.png", _png(), "image/png")}, data={"model_id": model_id})
    assert r.status_code == 200, r.text
    answer = r.json()
    answer.pop("runtime")
    return answer


def _same(answer: dict, expected: dict) -> bool:
    """The same class, and probabilities to 1e-5: eager and onnxruntime agree to about 1e-7, not to the last bit."""
    return (answer["model_id"], answer["class_index"]) == (expected["model_id"], expected["class_index"]) and all(
        abs(a - b) <= 1e-5 for a, b in zip(answer["probabilities"], expected["probabilities"], strict=True))


def _snapshot(s: Stack) -> tuple[dict, dict[str, dict], dict]:
    listing = s.client.get("/jobs", params={"limit": 500}).json()
    records = {j["job_id"]: s.job(j["job_id"]) for j in listing["data"]}
    models = s.client.get("/models").json()
    return listing, records, models


def test_restarts_redis_down_service_up_then_back_without_an_api_restart(restart_stack: Stack, jobs: dict[str, str]):
    s = restart_stack
    model_id = jobs["succeeded"]
    before = _predict(s, model_id)
    total = s.client.get("/jobs").json()["count"]

    s.redis.stop()
    assert s.client.get("/healthz").status_code == 200
    r = s.client.get("/readyz")
    assert r.status_code == 503 and "Redis" in r.json()["detail"]
    for r in (s.client.post("/train", json=SMALL_JOB), s.client.get("/jobs"), s.client.get(f"/jobs/{model_id}")):
        assert r.status_code == 503, r.text
        assert "Redis" in r.json()["detail"] and "unavailable" in r.json()["detail"]
    assert _same(_predict(s, model_id), before)  # the model is on disk: serving goes on
    assert s.client.get("/models").json()["count"] == 1

    s.redis.start()  # same data directory and port; the API process is the same one
    assert s.client.get("/readyz").status_code == 200
    assert s.client.get("/jobs").json()["count"] == total
    r = s.client.post("/train", json=SMALL_JOB)
    assert r.status_code == 202, r.text
    jobs["queued-after-outage"] = r.json()["job_id"]
    assert s.client.get("/jobs").json()["count"] == total + 1
    assert _same(_predict(s, model_id), before)


def test_restarts_redis_and_api_restart_lose_no_job_or_model(restart_stack: Stack, jobs: dict[str, str]):
    s = restart_stack
    listing, records, models = _snapshot(s)
    assert {r["status"] for r in records.values()} == {"succeeded", "queued", "cancelled"}
    assert set(jobs.values()) <= set(records)
    prediction = _predict(s, jobs["succeeded"])

    s.api.stop()
    s.redis.stop()  # cleanly: Redis writes its append-only file and snapshot
    s.redis.start()  # the same data directory and port
    s.start_api()  # a new API process

    assert _snapshot(s) == (listing, records, models)
    assert listing["count"] == len(records) == len(jobs)
    assert models["count"] == 1 and models["data"][0]["model_id"] == jobs["succeeded"]
    assert _same(_predict(s, jobs["succeeded"]), prediction)

    # The queued jobs' tasks survived too: a new worker runs them; the cancelled one never starts.
    s.start_worker("w2")
    for key in [k for k in jobs if k.startswith("queued")]:  # with the outage test's job, when it ran
        job = s.wait_job(jobs[key], {"succeeded", "failed", "cancelled"}, timeout=120)
        assert job["status"] == "succeeded", job
    cancelled = s.job(jobs["cancelled"])
    assert cancelled["status"] == "cancelled" and cancelled["attempts"] == 0
