"""What a 202 survives: bursts of ``POST /train``, each followed at once by Redis SIGKILLed and restarted.

Redis appends every write to its append-only file before it replies, so a killed process loses
nothing the operating system holds: every job answered 202 is there after the restart (record,
listing and queued task alike) and runs to the end. The worker is stopped through the kills, so
the jobs wait as queued; a power loss (the OS's buffers gone too) is what ``appendfsync`` decides,
measured in bench/durability.py.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from bnlenet.local.redis_server import APPENDFSYNC
from tests.integration.conftest import Stack, running_stack

pytestmark = pytest.mark.integration

JOB = {"epochs": 1, "batch_size": 64}
BURSTS = 2
CLIENTS = 6
EACH = 3  # POST /train per client and burst


@pytest.fixture(scope="module")
def kill_stack(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("redis-kill"), synthetic_data_dir) as s:
        yield s


def _burst(url: str) -> list[tuple[int, str]]:
    """CLIENTS threads, each with its own connection, sending EACH POST /train: every (status, body)."""
    def one(_: int) -> list[tuple[int, str]]:
        with httpx.Client(base_url=url, timeout=30) as client:
            return [(r.status_code, r.text) for r in (client.post("/train", json=JOB) for _ in range(EACH))]

    with ThreadPoolExecutor(CLIENTS) as pool:
        return [answer for answers in pool.map(one, range(CLIENTS)) for answer in answers]


def test_redis_sigkill_right_after_bursts_of_train_loses_no_acknowledged_job(kill_stack: Stack) -> None:
    s = kill_stack
    assert redis.Redis.from_url(s.redis.url).config_get("appendfsync") == {"appendfsync": APPENDFSYNC}
    s.workers[-1].stop()  # the jobs wait as queued through the kills
    acknowledged: list[str] = []
    for burst in range(BURSTS):
        answers = _burst(s.url)
        s.redis.kill()  # SIGKILL as soon as the last answer is in: no shutdown, no rewrite of its files
        assert s.redis.process is not None and s.redis.process.wait(10) == -signal.SIGKILL
        assert [status for status, _ in answers] == [202] * CLIENTS * EACH, answers
        acknowledged += [httpx.Response(202, text=body).json()["job_id"] for _, body in answers]
        s.redis.start()  # the same data directory and port; the API process is the same one

        listing = s.client.get("/jobs", params={"limit": 500}).json()
        assert listing["count"] == len(acknowledged) == CLIENTS * EACH * (burst + 1)
        assert sorted(j["job_id"] for j in listing["data"]) == sorted(acknowledged)
        assert {s.job(job_id)["status"] for job_id in acknowledged} == {"queued"}

    # Their tasks survived the kills too: a new worker runs every one of them, each once.
    s.start_worker("w2")
    finished = [s.wait_job(job_id, {"succeeded", "failed", "cancelled"}, timeout=300) for job_id in acknowledged]
    assert [job["status"] for job in finished] == ["succeeded"] * len(acknowledged), finished
    assert [job["attempts"] for job in finished] == [1] * len(acknowledged)
    assert s.client.get("/jobs").json()["count"] == len(acknowledged)
    models = s.client.get("/models").json()
    assert sorted(m["model_id"] for m in models["data"]) == sorted(acknowledged)
