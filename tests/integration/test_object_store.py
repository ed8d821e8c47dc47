"""Workers and APIs on "other hosts": processes that share Redis and an S3 bucket (a real SeaweedFS) but no directory.

The worker and each API have their own model cache and temporary directory, as they would on
separate machines; the only things they share are REDIS_URL and CHECKPOINT_DIR=s3://...
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from bnlenet.checkpoint_storage import S3Storage
from bnlenet.local.redis_server import free_port
from bnlenet.local.s3_server import S3Server
from bnlenet.model_store import ModelStore
from models.lenet import build_lenet
from tests.conftest import own_s3_server
from tests.integration.conftest import ROOT, Stack, wait_for
from tests.integration.test_service import _png

pytestmark = [pytest.mark.integration, pytest.mark.s3]

PREFIX = "models"


def _host(root: Path, name: str) -> dict[str, str]:
    """The directories one host has to itself."""
    (root / name / "tmp").mkdir(parents=True)
    return {"MODEL_CACHE_DIR": str(root / name / "model-cache"), "TMPDIR": str(root / name / "tmp")}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with own_s3_server(tmp_path_factory.mktemp("seaweedfs")) as server:  # its own: a test stops it
        yield server


@pytest.fixture(autouse=True)
def _as_a_client(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process reaches the bucket as any client would: through the standard AWS settings."""
    for key, value in s3.client_env().items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path, s3: S3Server) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("hosts")
    stack = Stack(root, synthetic_data_dir)
    stack.env.update(s3.client_env(), CHECKPOINT_DIR=f"s3://{s3.bucket}/{PREFIX}", OBJECT_STORE_RETRY_S="2",
                     NEWEST_MODEL_REFRESH_S="1")
    stack.env.pop("MODEL_CACHE_DIR", None)
    try:
        stack.redis.start()
        stack.start_worker("gpu-host", **_host(root, "worker-host"))
        stack.start_api(**_host(root, "api-host"))
        stack.wait_for_worker()
        yield stack
    finally:
        stack.stop()


def _cli(args: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "bnlenet.local.cli", *args, "--json"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _train(stack: Stack, **params: object) -> str:
    r = stack.client.post("/train", json={"epochs": 1, "batch_size": 64, "lr": 0.9, **params})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def _predict(client: httpx.Client, image: bytes, model_id: str | None = None) -> httpx.Response:
    params = {"model_id": model_id} if model_id else None
    return client.post("/predict", params=params, files={"file": ("x.png", image, "image/png")})


def test_a_worker_publishes_to_the_bucket_and_the_api_serves_it(hosts, s3, tmp_path):
    job_id = _train(hosts, variant="scratch")
    job = hosts.wait_job(job_id, {"succeeded", "failed", "cancelled"})
    assert job["status"] == "succeeded", job
    assert job_id in S3Storage(f"s3://{s3.bucket}/{PREFIX}", tmp_path / "look").versions()

    listing = hosts.client.get("/models").json()
    assert job_id in [m["model_id"] for m in listing["data"]]
    image = tmp_path / "item.png"
    image.write_bytes(_png(4))
    served = _predict(hosts.client, image.read_bytes(), job_id)
    assert served.status_code == 200, served.text

    # The CLI on a third "host": by model id in the service's store, and by the object's URL.
    cli_env = {**hosts.env, **_host(tmp_path, "laptop")}
    for name in (job_id, f"s3://{s3.bucket}/{PREFIX}/{job_id}.safetensors"):
        cli = _cli(["predict", name, str(image)], cli_env)
        assert cli["class_index"] == served.json()["class_index"]
        np.testing.assert_allclose(served.json()["probabilities"], cli["probabilities"], atol=1e-5)
    inspected = _cli(["inspect", job_id], cli_env)["layers"]
    layers = hosts.client.get(f"/models/{job_id}/batchnorm").json()["layers"]
    assert len(layers) == len(inspected) == 4
    for layer in layers:
        for stat in ("running_mean", "running_var", "gamma", "beta"):
            np.testing.assert_allclose(layer[stat], inspected[layer["name"]][stat], atol=1e-6)

    # Nothing came through a shared directory: each host downloaded its own copy.
    worker_cache = Path(hosts.workers[0].env["MODEL_CACHE_DIR"])
    api_cache = Path(hosts.api.env["MODEL_CACHE_DIR"]) if hosts.api else None
    assert api_cache is not None and list(api_cache.glob(f"{job_id}.*.safetensors"))
    assert worker_cache != api_cache and not (worker_cache.exists() and list(worker_cache.glob(f"{job_id}.*")))


def test_a_promotion_reaches_every_api_and_deleting_its_model_is_refused(hosts, s3, tmp_path):
    first = _train(hosts)
    second = _train(hosts)
    for job_id in (first, second):
        assert hosts.wait_job(job_id, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    port = free_port()
    hosts.start_api(port=port, **_host(tmp_path, "api-host-2"))
    apis = [hosts.client, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)]
    image = _png(5)
    wait_for(lambda: all(_predict(api, image).json()["model_id"] == second for api in apis), 10,
             "both APIs should serve the newest model")
    assert hosts.client.put(f"/models/{first}/aliases/production").status_code == 200
    started = time.monotonic()
    wait_for(lambda: all(_predict(api, image).json()["model_id"] == first for api in apis), 10,
             "the promotion did not reach every API")
    assert time.monotonic() - started < 3  # NEWEST_MODEL_REFRESH_S=1, plus a request's worth
    r = apis[1].delete(f"/models/{first}")
    assert r.status_code == 409 and "production" in r.json()["detail"]
    assert hosts.client.delete(f"/models/{first}/aliases/production").status_code == 204
    wait_for(lambda: all(_predict(api, image).json()["model_id"] == second for api in apis), 10,
             "without the alias, the newest model should serve again")
    apis[1].close()


def test_a_tampered_object_is_refused(hosts, s3, tmp_path):
    job_id = _train(hosts)
    assert hosts.wait_job(job_id, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    assert _predict(hosts.client, _png(6), job_id).status_code == 200  # loaded
    storage = S3Storage(f"s3://{s3.bucket}/{PREFIX}", tmp_path / "attacker")
    raw = bytearray(storage.fetch(job_id)[0].read_bytes())
    raw[-3] ^= 0x40
    storage.client.put_object(Bucket=s3.bucket, Key=f"{PREFIX}/{job_id}.safetensors", Body=bytes(raw))
    wait_for(lambda: _predict(hosts.client, _png(6), job_id).status_code == 409, 10,
             "the API kept serving a tampered model")
    r = hosts.client.get(f"/models/{job_id}")
    assert r.status_code == 409 and "checksum" in r.json()["detail"]
    assert job_id in [u["model_id"] for u in hosts.client.get("/models").json()["unusable"]]


def test_the_object_store_down_then_back(hosts, s3, tmp_path):
    served = _train(hosts)
    assert hosts.wait_job(served, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    assert _predict(hosts.client, _png(7), served).status_code == 200  # loaded in the API
    # A model the API has neither loaded nor downloaded, published from "another host" just before the outage.
    torch.manual_seed(0)
    ModelStore(S3Storage(f"s3://{s3.bucket}/{PREFIX}", tmp_path / "publisher")).publish(
        "cold", build_lenet("builtin").eval(), {"variant": "builtin"})
    s3.stop()
    try:
        for _ in range(5):  # loaded models go on being served
            assert _predict(hosts.client, _png(7), served).status_code == 200
        r = _predict(hosts.client, _png(7), "cold")
        assert r.status_code == 503 and "object store" in r.json()["detail"], r.text
        assert "retry-after" in r.headers
        assert hosts.client.get("/models").status_code == 200  # the last listing

        # A job that cannot upload its model fails, with the reason, after OBJECT_STORE_RETRY_S.
        failing = _train(hosts)
        job = hosts.wait_job(failing, {"succeeded", "failed", "cancelled"})
        assert job["status"] == "failed" and "could not publish the model" in job["error"], job
        assert "object store" in job["error"]
    finally:
        s3.start()

    wait_for(lambda: _predict(hosts.client, _png(7), "cold").status_code == 200, 20,
             "the API did not recover when the object store came back")
    again = hosts.client.post("/train", json=job["params"]).json()["job_id"]  # the failed job, re-run
    assert hosts.wait_job(again, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
    assert _predict(hosts.client, _png(7), again).status_code == 200
