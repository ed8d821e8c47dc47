"""GET /jobs/{job_id}/events: server-sent events over real HTTP (uvicorn in a thread) on a real Redis.

The job's writes come from the job store directly, as a worker would make them.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI

from app.main import create_app
from bnlenet.jobs import JobStore
from bnlenet.local.redis_server import free_port
from bnlenet.settings import Settings

pytestmark = pytest.mark.integration  # starts the API under uvicorn (in a thread), over real HTTP

TOKEN = "events-token"
METRICS = {"epoch": 1, "loss": 0.5, "train_acc": 0.8, "test_acc": 0.7, "examples_per_sec": 1000.0, "seconds": 1.0}


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` on uvicorn in a thread; its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def serve(redis_url: str, trained_models: tuple[Path, list[str]]) -> Iterator[Callable[..., tuple[str, FastAPI]]]:
    """Start the app with these settings overrides; returns its base URL and the app."""
    stack: list[Any] = []

    def start(**overrides: Any) -> tuple[str, FastAPI]:
        fields = {"REDIS_URL": redis_url, "CHECKPOINT_DIR": trained_models[0], "EVENTS_HEARTBEAT_S": 0.3, **overrides}
        settings = Settings(**fields)
        app = create_app(settings)
        cm = serving(app)
        url = cm.__enter__()
        stack.append(cm)
        # Past its start-up work (the first listing of the model store, in the background since the
        # model news): the tests race a writer thread against the first stream.
        httpx.get(f"{url}/models", timeout=20)  # any answer (401 under PROTECT_READS) comes after it
        return url, app

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def store(redis_url: str) -> JobStore:
    return JobStore.from_url(redis_url)


def parse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Events (and comments, as ``{"comment": ...}``) from an event stream's lines."""
    event: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[name] = json.loads(value) if name == "data" else value


def progress(batch: int, epoch: int = 1) -> dict[str, Any]:
    return {"epoch": epoch, "epochs": 2, "batch": batch, "batches": 4, "fraction": batch / 8, "loss": 1.0,
            "train_acc": 0.5}


def start_job(store: JobStore) -> str:
    job_id = store.submit({"epochs": 2})[0]["job_id"]
    assert store.claim(job_id, worker="w@h", pid=1, task_id="t", max_attempts=3, stale_after=30).run
    return job_id


def run_rest(store: JobStore, job_id: str, delay: float = 0.05) -> threading.Thread:
    """Write the rest of a two-epoch job from a thread, as a worker would."""

    def run() -> None:
        for epoch in (1, 2):
            for batch in (1, 2, 3, 4):
                time.sleep(delay)
                store.beat(job_id, worker="w@h", attempt=1, progress=progress(batch, epoch))
            store.add_epoch(job_id, worker="w@h", attempt=1, metrics={**METRICS, "epoch": epoch},
                            progress=progress(4, epoch))
        store.finish(job_id, "succeeded", worker="w@h", attempt=1, model_id=job_id)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def read_events(url: str, job_id: str, headers: dict[str, str] | None = None, **params: str) -> list[dict[str, Any]]:
    with httpx.stream("GET", f"{url}/jobs/{job_id}/events", headers=headers, params=params, timeout=20) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [e for e in parse(r.iter_lines()) if "comment" not in e]


def test_events_follow_a_job_in_order_and_end_with_its_status(serve, store: JobStore) -> None:
    url, _ = serve()
    job_id = start_job(store)
    writer = run_rest(store, job_id)
    events = read_events(url, job_id)
    writer.join()
    assert events[0]["event"] == "status" and events[0]["data"]["job_id"] == job_id  # the snapshot
    assert [e["data"]["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "succeeded"
    assert events[-1]["data"]["history"][-1]["epoch"] == 2
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(ids) and len(set(ids[1:])) == len(ids) - 1
    batches = [(e["data"]["progress"]["epoch"], e["data"]["progress"]["batch"]) for e in events
               if e["event"] == "progress"]
    assert batches == sorted(batches) and batches[-1] == (2, 4)


def test_events_of_an_ended_job_are_its_snapshot(serve, store: JobStore) -> None:
    url, _ = serve()
    job_id = store.submit({})[0]["job_id"]
    store.request_cancel(job_id)
    events = read_events(url, job_id)
    assert [(e["event"], e["data"]["status"]) for e in events] == [("status", "cancelled")]


def test_events_resume_after_last_event_id_without_gaps_or_repeats(serve, store: JobStore) -> None:
    url, _ = serve()
    job_id = start_job(store)
    writer = run_rest(store, job_id, delay=0.1)
    seen: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{url}/jobs/{job_id}/events", timeout=20) as r:
        for event in parse(r.iter_lines()):
            if "comment" not in event:
                seen.append(event)
            if sum(e["event"] == "progress" for e in seen) == 3:
                break  # the client drops the connection mid-epoch
    time.sleep(0.3)  # events keep coming while it is away
    rest = read_events(url, job_id, headers={"Last-Event-ID": seen[-1]["id"]})
    writer.join()
    assert rest[0]["event"] != "status" or rest[0]["data"]["status"] != "running"  # no snapshot again
    resumed = [e["id"] for e in seen + rest]
    everything = [e["id"] for e in read_events(url, job_id, headers={"Last-Event-ID": "0-0"})]
    assert resumed == [seen[0]["id"], *everything] or resumed[1:] == everything[everything.index(resumed[1]):]
    assert len(set(resumed)) == len(resumed)
    assert everything[-len(rest):] == [e["id"] for e in rest]
    assert rest[-1]["data"]["status"] == "succeeded"


def test_events_refuse_unknown_jobs_and_bad_ids(serve, store: JobStore) -> None:
    url, _ = serve()
    assert httpx.get(f"{url}/jobs/nope/events").status_code == 404
    job_id = store.submit({})[0]["job_id"]
    r = httpx.get(f"{url}/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"})
    assert r.status_code == 422


def test_events_send_heartbeats_while_idle(serve, store: JobStore) -> None:
    url, _ = serve()
    job_id = start_job(store)
    with httpx.stream("GET", f"{url}/jobs/{job_id}/events", timeout=20) as r:
        items = parse(r.iter_lines())
        assert next(items)["event"] == "status"
        started = time.monotonic()
        assert next(items) == {"comment": "heartbeat"}
        assert time.monotonic() - started < 2


def test_events_protected_reads_need_the_header_or_the_query_token(serve, store: JobStore) -> None:
    url, _ = serve(API_TOKEN=TOKEN, PROTECT_READS=True)
    job_id = store.submit({})[0]["job_id"]
    store.request_cancel(job_id)
    assert httpx.get(f"{url}/jobs/{job_id}/events").status_code == 401
    assert httpx.get(f"{url}/jobs/{job_id}/events", params={"access_token": "wrong"}).status_code == 403
    assert read_events(url, job_id, access_token=TOKEN)[0]["data"]["status"] == "cancelled"
    assert read_events(url, job_id, headers={"Authorization": f"Bearer {TOKEN}"})[0]["event"] == "status"
    # the query token is for this route only
    assert httpx.get(f"{url}/jobs/{job_id}", params={"access_token": TOKEN}).status_code == 401


def test_events_a_client_that_leaves_frees_its_stream(serve, store: JobStore) -> None:
    url, app = serve(EVENTS_HEARTBEAT_S=60)
    hub = app.state.event_hub
    job_id = start_job(store)
    clients = []
    for _ in range(5):
        client = httpx.Client(timeout=20)
        response = client.send(client.build_request("GET", f"{url}/jobs/{job_id}/events"), stream=True)
        items = parse(response.iter_lines())  # kept: dropping the iterator closes the connection
        assert next(items)["event"] == "status"
        clients.append((client, response, items))
    assert hub.open_streams == 5
    for client, response, _ in clients:
        response.close()
        client.close()
    deadline = time.monotonic() + 5
    while hub.open_streams and time.monotonic() < deadline:  # noticed at once, not at the next heartbeat
        time.sleep(0.05)
    assert hub.open_streams == 0 and not hub._feeds
    tasks = asyncio.run_coroutine_threadsafe(_task_names(), _loop_of(hub)).result(5)
    assert not [t for t in tasks if t.startswith("job-events-") and t != "job-events-listener"]


async def _task_names() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if not t.done()]


def _loop_of(hub: Any) -> asyncio.AbstractEventLoop:
    return hub._listener.get_loop()


def test_events_idle_streams_send_no_redis_commands(serve, store: JobStore, redis_url: str) -> None:
    url, app = serve(EVENTS_HEARTBEAT_S=60)
    job_ids = [start_job(store) for _ in range(20)]
    clients = []
    for job_id in job_ids:
        client = httpx.Client(timeout=20)
        response = client.send(client.build_request("GET", f"{url}/jobs/{job_id}/events"), stream=True)
        items = parse(response.iter_lines())  # kept: dropping the iterator closes the connection
        assert next(items)["event"] == "status"
        clients.append((client, response, items))
    info = redis.Redis.from_url(redis_url)
    before = int(info.info("stats")["total_commands_processed"])
    time.sleep(1.0)
    after = int(info.info("stats")["total_commands_processed"])
    for client, response, _ in clients:
        response.close()
        client.close()
    assert after - before <= 3  # the INFO call itself, and nothing for 20 idle streams


def test_events_answer_204_once_the_client_saw_the_end(serve, store: JobStore) -> None:
    url, _ = serve()
    job_id = store.submit({})[0]["job_id"]
    store.request_cancel(job_id)
    final = read_events(url, job_id)[-1]["id"]
    assert httpx.get(f"{url}/jobs/{job_id}/events", headers={"Last-Event-ID": final}).status_code == 204


def test_events_end_when_a_queued_job_is_deleted(serve, store: JobStore) -> None:
    url, _ = serve()
    job_id = store.submit({})[0]["job_id"]
    seen: list[dict[str, Any]] = []

    def follow() -> None:
        seen.extend(read_events(url, job_id))

    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(0.5)  # the stream is open, past its snapshot
    store.delete_unless_running(job_id)  # DELETE /jobs/{id}
    reader.join(5)
    assert not reader.is_alive(), "the stream of a deleted job never ended"
    assert [(e["event"], e["data"]["status"]) for e in seen] == [("status", "queued")]
