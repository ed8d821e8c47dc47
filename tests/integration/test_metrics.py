"""/metrics across two API processes, and job gauges following a real job."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Proc, Stack, wait_for

pytestmark = pytest.mark.integration


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"{url}/metrics", timeout=10)  # a new connection: any of the processes may answer
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(r.text) for s in f.samples}


def jobs(samples, status: str) -> float:
    return samples.get(("bnlenet_jobs", (("status", status),)), 0.0)


def test_metrics_add_up_over_two_api_processes_and_follow_a_job(tmp_path: Path, synthetic_data_dir: Path):
    stack = Stack(tmp_path, synthetic_data_dir)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stack.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        stack.redis.start()
        # Two API processes on one port (the way `bnlenet up` and the containers run it).
        args = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(stack.port),
                "--workers", "2", "--log-level", "warning"]
        stack.api = Proc("api-2", args, stack.env, tmp_path).start()
        wait_for(stack._healthy, 60, lambda: f"the API did not come up:\n{stack.api.tail() if stack.api else ''}")

        key = ("bnlenet_http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))
        before = scrape(stack.url).get(key, 0.0)
        sent = 60
        for _ in range(sent):  # each on a new connection, spread over both processes
            assert httpx.get(f"{stack.url}/healthz", timeout=10).status_code == 200
        assert scrape(stack.url).get(key, 0.0) - before == sent
        # Both processes answered some of them, and each scrape added up both.
        pids = {p.name.split("_")[-1].removesuffix(".db") for p in metrics_dir.glob("counter_*.db")}
        assert len(pids) == 2, pids

        # A real job through queued, running and succeeded, as the gauges see it.
        r = stack.client.post("/train", json={"variant": "scratch", "epochs": 3, "batch_size": 8, "lr": 0.5})
        job_id = r.json()["job_id"]
        s = scrape(stack.url)
        assert jobs(s, "queued") == 1 and jobs(s, "running") == 0
        assert s[("bnlenet_queue_length", ())] == 1
        stack.start_worker()
        seen: list[tuple[float, float, float]] = []

        def reached_succeeded() -> bool:
            s = scrape(stack.url)
            row = (jobs(s, "queued"), jobs(s, "running"), jobs(s, "succeeded"))
            if not seen or seen[-1] != row:
                seen.append(row)
            return row == (0, 0, 1)

        wait_for(reached_succeeded, 120, lambda: f"gauges went {seen}:\n{stack.workers[-1].tail()}", interval=0.02)
        assert (0, 1, 0) in seen, seen  # running was seen between queued and succeeded
        assert stack.job(job_id)["status"] == "succeeded"
        s = scrape(stack.url)
        assert s[("bnlenet_job_duration_seconds_count", (("status", "succeeded"),))] == 1
        assert s[("bnlenet_job_queue_wait_seconds_count", ())] == 1
        assert s[("bnlenet_training_epochs_total", ())] == 3
        assert s[("bnlenet_training_examples_per_second", (("device", "cpu"), ("variant", "scratch")))] > 0
        assert s[("bnlenet_workers_seen", ())] == 1
        assert s[("bnlenet_queue_length", ())] == 0

        # Deleting the model reaches every API process's cache within a second.
        image = {"file": ("x.png", _png(), "image/png")}

        def predict_status() -> int:
            return httpx.post(f"{stack.url}/predict", files=image, data={"model_id": job_id}, timeout=10).status_code

        assert {predict_status() for _ in range(20)} == {200}  # both processes have it cached now
        assert httpx.delete(f"{stack.url}/models/{job_id}", timeout=10).status_code == 204
        time.sleep(1.1)  # NEWEST_MODEL_REFRESH_S
        assert {predict_status() for _ in range(20)} == {404}

        # The scrape stays fast.
        times = []
        for _ in range(5):
            started = time.perf_counter()
            scrape(stack.url)
            times.append(time.perf_counter() - started)
        assert sorted(times)[2] < 0.2, times
    finally:
        stack.stop()
