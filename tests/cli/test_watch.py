"""``bnlenet watch`` against the API served by uvicorn on a real Redis; the job's writes come from the store."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.main import create_app
from bnlenet.jobs import JobStore
from bnlenet.local.cli import main
from bnlenet.local.redis_server import RedisServer, free_port
from bnlenet.local.watch import iter_sse, watch_job
from bnlenet.settings import Settings
from tests.api.test_events import progress, run_rest, serving, start_job
from tests.conftest import empty_database

WATCH_DB = 12  # a database of its own on the shared test Redis, flushed before each test


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    url = empty_database(redis_server, WATCH_DB)
    return url


@pytest.fixture
def store(redis_url: str) -> JobStore:
    return JobStore.from_url(redis_url)


@pytest.fixture
def api(redis_url: str, tmp_path: Path) -> Iterator[str]:
    settings = Settings(REDIS_URL=redis_url, CHECKPOINT_DIR=tmp_path, EVENTS_HEARTBEAT_S=0.5)
    with serving(create_app(settings)) as url:
        yield url


def test_iter_sse_reads_events_ids_and_skips_comments() -> None:
    lines = [": heartbeat", "", "event: epoch", "data: {\"epoch\": 1}", "id: 5-0", "", "data: a", "data: b", ""]
    events = list(iter_sse(lines))
    assert [(e.event, e.data, e.id) for e in events] == [("epoch", '{"epoch": 1}', "5-0"), ("message", "a\nb", "5-0")]


@pytest.mark.integration  # serves the API (uvicorn in a thread)
def test_watch_succeeded_prints_epochs_and_exits_0(api: str, store: JobStore, capsys) -> None:
    job_id = start_job(store)
    writer = run_rest(store, job_id)
    code = main(["watch", job_id, "--url", api])
    writer.join()
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("epoch 1:") == 1 and out.count("epoch 2:") == 1
    assert f"job {job_id} succeeded" in out


@pytest.mark.integration  # serves the API (uvicorn in a thread)
def test_watch_failed_or_cancelled_exits_1(api: str, store: JobStore, capsys) -> None:
    job_id = start_job(store)

    def fail() -> None:
        time.sleep(0.3)
        store.beat(job_id, worker="w@h", attempt=1, progress=progress(1))
        store.finish(job_id, "failed", worker="w@h", attempt=1, error="diverged")

    writer = threading.Thread(target=fail)
    writer.start()
    assert main(["watch", job_id, "--url", api]) == 1
    writer.join()
    assert "failed: diverged" in capsys.readouterr().out
    cancelled = store.submit({})[0]["job_id"]
    store.request_cancel(cancelled)
    assert main(["watch", cancelled, "--url", api]) == 1


@pytest.mark.integration  # serves the API (uvicorn in a thread)
def test_watch_unknown_job_or_unreachable_service_exits_2(api: str, capsys) -> None:
    assert main(["watch", "nope", "--url", api]) == 2
    assert "no job nope" in capsys.readouterr().err
    assert main(["watch", "nope", "--url", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach the service" in capsys.readouterr().err


@pytest.mark.integration  # serves the API (uvicorn in a thread)
def test_watch_needs_the_token_when_reads_are_protected(redis_url: str, store: JobStore, tmp_path: Path,
                                                        capsys) -> None:
    settings = Settings(REDIS_URL=redis_url, CHECKPOINT_DIR=tmp_path, API_TOKEN="t0k", PROTECT_READS=True)
    job_id = store.submit({})[0]["job_id"]
    store.request_cancel(job_id)
    with serving(create_app(settings)) as url:
        assert main(["watch", job_id, "--url", url]) == 2
        assert "401" in capsys.readouterr().err
        assert main(["watch", job_id, "--url", url, "--token", "wrong"]) == 2
        assert main(["watch", job_id, "--url", url, "--token", "t0k"]) == 1  # it was cancelled


@pytest.mark.integration  # serves the API (uvicorn in a thread)
def test_watch_job_returns_the_final_record(api: str, store: JobStore) -> None:
    job_id = start_job(store)
    writer = run_rest(store, job_id)
    record = watch_job(api, job_id, out=io.StringIO())
    writer.join()
    assert record["status"] == "succeeded" and record["model_id"] == job_id
