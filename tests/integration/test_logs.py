"""Worker logs with LOG_FORMAT=json: one object per line, every line about a job naming it, its end with status and error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import running_stack, wait_for

pytestmark = pytest.mark.integration


def _records(log: Path) -> list[dict]:
    # The banner Celery prints at start (and Python's warnings) are not log records.
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_logs_json_worker_lines_carry_the_job_id(tmp_path: Path, synthetic_data_dir: Path):
    with running_stack(tmp_path, synthetic_data_dir, LOG_FORMAT="json") as stack:
        ok = stack.client.post("/train", json={"epochs": 1, "batch_size": 64}).json()["job_id"]
        bad = stack.client.post("/train", json={"epochs": 2, "batch_size": 32, "lr": 1e36}).json()["job_id"]
        stack.wait_job(ok, {"succeeded"})
        stack.wait_job(bad, {"failed"})
        log = stack.workers[0].log
        wait_for(lambda: sum("ended" in r["message"] for r in _records(log)) >= 2, 10, lambda: log.read_text()[-3000:])
        records = _records(log)
        for job_id in (ok, bad):
            about = [r for r in records if job_id in r["message"] or job_id in r.get("data", "")]
            assert about, job_id
            assert all(r.get("job_id") == job_id for r in about), about
        (end_ok,) = [r for r in records if r.get("job_id") == ok and "ended" in r["message"]]
        assert end_ok["message"].endswith("ended: succeeded")
        (end_bad,) = [r for r in records if r.get("job_id") == bad and "ended" in r["message"]]
        assert "failed" in end_bad["message"] and "diverged" in end_bad["message"] and end_bad["level"] == "WARNING"
        # Celery's own lines about the task name the job too.
        assert any(r.get("job_id") == ok and "received" in r["message"] for r in records)
        assert any(r.get("job_id") == ok and "succeeded in" in r["message"] for r in records)
        assert any(r.get("job_id") == bad and "JobFailed" in r["message"] for r in records)


def test_logs_json_api_lines_are_json_objects(tmp_path: Path):
    import sys

    from tests.integration.conftest import Proc, Stack

    stack = Stack(tmp_path, tmp_path)
    stack.env["LOG_FORMAT"] = "json"
    try:
        stack.redis.start()
        args = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(stack.port),
                "--log-level", "info"]
        stack.api = Proc("api-json", args, stack.env, tmp_path).start()
        wait_for(stack._healthy, 60, lambda: stack.api.tail() if stack.api else "")
        assert stack.client.get("/jobs/nope").status_code == 404
        wait_for(lambda: "/jobs/nope" in stack.api.log.read_text(), 10, lambda: stack.api.tail() if stack.api else "")
    finally:
        stack.stop()
    lines = [line for line in stack.api.log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line: one JSON object
    assert any(r["logger"] == "uvicorn.access" and "/jobs/nope" in r["message"] for r in records)
    assert any("Started server process" in r["message"] for r in records)
