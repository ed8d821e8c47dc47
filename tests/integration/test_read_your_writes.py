"""Read-your-writes across API processes: once a client has seen a job succeed, or an alias PUT return,
every API process serves the new model at once, by id, as the newest, and through a moved alias.

Real processes: Redis, one Celery worker and two API processes (``app.edge``) sharing the model
store, a directory or a real S3 bucket (SeaweedFS), each API with its own caches. The client
learns that a job succeeded from the job's event stream, then asks both APIs at once: no
sleeps, no polling, so an API that still serves from an older listing fails the test.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bnlenet.local.redis_server import free_port
from tests.conftest import own_s3_server
from tests.integration.conftest import Stack
from tests.integration.test_service import _png

pytestmark = pytest.mark.integration

JOBS = 30


@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def two_apis(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             synthetic_data_dir: Path) -> Iterator[tuple[Stack, httpx.Client]]:
    """A stack (Redis, a worker, API A) and a second API process B on the same Redis and model store."""
    root = tmp_path_factory.mktemp(f"ryw-{request.param}")
    with _model_store(request.param, root) as store_env:
        stack = Stack(root, synthetic_data_dir)
        stack.env.update(store_env)
        b_port = free_port()
        b = httpx.Client(base_url=f"http://127.0.0.1:{b_port}", timeout=30)
        try:
            stack.redis.start()
            stack.start_worker(**_own_cache(root, "worker"))
            stack.start_api(**_own_cache(root, "api-a"))
            stack.start_api(port=b_port, **_own_cache(root, "api-b"))
            stack.wait_for_worker()
            yield stack, b
        finally:
            b.close()
            stack.stop()


@contextlib.contextmanager
def _model_store(kind: str, root: Path) -> Iterator[dict[str, str]]:
    """The environment that names the model store: a directory, or a bucket on a real S3 server."""
    if kind == "local":
        yield {"CHECKPOINT_DIR": str(root / "checkpoints")}
        return
    with own_s3_server(root / "seaweedfs") as server:
        yield {**server.client_env(), "CHECKPOINT_DIR": f"s3://{server.bucket}/models"}


def _own_cache(root: Path, host: str) -> dict[str, str]:
    return {"MODEL_CACHE_DIR": str(root / host / "model-cache")}


def _succeeded(client: httpx.Client, job_id: str) -> dict:
    """Follow the job's event stream until its final status; that status event (no polling, no sleeps)."""
    with client.stream("GET", f"/jobs/{job_id}/events", timeout=120) as response:
        assert response.status_code == 200, response.read()
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event == "status":
                record = json.loads(line.partition(":")[2])
                if record["status"] in {"succeeded", "failed", "cancelled"}:
                    return record
    raise AssertionError(f"the event stream of job {job_id} ended without a final status")


def _served(client: httpx.Client, model_id: str | None = None) -> str:
    params = {"model_id": model_id} if model_id else None
    r = client.post("/predict", params=params, files={"file": ("x.png", _png(3), "image/png")})
    assert r.status_code == 200, f"{client.base_url}: {r.status_code} {r.text}"
    return str(r.json()["model_id"])


def test_a_model_a_client_was_told_about_is_served_by_every_api_at_once(two_apis):
    stack, b = two_apis
    a = stack.client
    ids: list[str] = []
    for n in range(JOBS):
        r = a.post("/train", json={"epochs": 1, "batch_size": 64, "lr": 0.9, "variant": "builtin"})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        told = _succeeded(a if n % 2 else b, job_id)  # either API may be the one that tells
        assert told["status"] == "succeeded" and told["model_id"] == job_id, told
        # The very next requests, on both APIs: the newest model, then by id.
        assert [_served(a), _served(b)] == [job_id, job_id], f"job {n + 1} of {JOBS}"
        assert [_served(a, job_id), _served(b, job_id)] == [job_id, job_id]
        ids.append(job_id)
    assert [m["model_id"] for m in b.get("/models").json()["data"]][:JOBS] == ids[::-1]


def test_an_alias_moved_on_one_api_is_served_through_the_other_on_the_next_request(two_apis):
    stack, b = two_apis
    a = stack.client
    ids = [m["model_id"] for m in a.get("/models").json()["data"]]
    assert len(ids) >= 3, "the first test trains the models"
    newest = ids[0]
    for n, target in enumerate([ids[2], ids[1], ids[2], ids[1]]):
        writer, reader = (a, b) if n % 2 == 0 else (b, a)
        r = writer.put(f"/models/{target}/aliases/production")
        assert r.status_code == 200 and r.json()["model_id"] == target, r.text
        assert _served(reader) == target, f"move {n + 1}: {reader.base_url} serves the alias's old model"
        assert _served(reader, "production") == target
    r = a.delete(f"/models/{ids[1]}/aliases/production")
    assert r.status_code == 204, r.text
    assert _served(b) == newest  # without the default alias, the newest again
