"""Redis's append-only file on a full disk (a real tmpfs, filled): no job is lost, none is invented."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import Stack, wait_for

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; the file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_full_disk_every_job_answered_202_runs_and_a_503_stores_nothing(tmp_path, synthetic_data_dir):
    # Finding 2 of issue 9: the record was created, Redis then refused writes, and the client was
    # told 503 while a job stayed queued forever.
    stack = Stack(tmp_path, synthetic_data_dir)
    with small_tmpfs(stack.redis.data_dir):
        try:
            stack.redis.start()
            stack.start_api()
            direct = redis.Redis.from_url(stack.redis.url)
            filler = _fill(stack.redis.data_dir)
            answers = []
            for _ in range(20):
                r = stack.client.post("/train", json={"epochs": 1, "batch_size": 64})
                answers.append((r.status_code, r.json().get("job_id")))
            codes = {code for code, _ in answers}
            assert codes <= {202, 503}, answers
            assert 503 in codes, f"Redis never refused a write on a full disk: {answers}"
            accepted = [job_id for code, job_id in answers if code == 202]

            filler.unlink()  # space again: Redis writes its file and accepts writes by itself
            wait_for(lambda: direct.info("persistence")["aof_last_write_status"] == "ok", 30,
                     "Redis did not recover its append-only file")
            stack.start_worker()
            for job_id in accepted:
                job = stack.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=120)
                assert job["status"] == "succeeded", job
            records = stack.client.get("/jobs", params={"limit": 100}).json()
            assert records["count"] == len(accepted), (records["count"], answers)  # a 503 stored nothing
            assert direct.zcard("bnlenet:outbox") == 0
        finally:
            stack.stop()
