"""A worker on "another host" (its own directories, the store an S3 bucket) fetches an uploaded data set once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bnlenet.checkpoint_storage import S3Storage
from bnlenet.local.s3_server import S3Server
from tests.dataset_uploads import fashion_mnist_subset, folder_zip
from tests.integration.conftest import Stack
from tests.integration.test_object_store import _as_a_client, s3  # noqa: F401 (the fixtures, this module's own)

pytestmark = [pytest.mark.integration, pytest.mark.s3]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path, s3: S3Server) -> Iterator[Stack]:  # noqa: F811 (the imported fixture)
    root = tmp_path_factory.mktemp("hosts")
    stack = Stack(root, synthetic_data_dir)
    stack.env.update(s3.client_env(), CHECKPOINT_DIR=f"s3://{s3.bucket}/models", OBJECT_STORE_RETRY_S="2")
    try:
        stack.redis.start()
        worker_host = root / "worker-host"
        (worker_host / "tmp").mkdir(parents=True)
        stack.start_worker("gpu-host", MODEL_CACHE_DIR=str(worker_host / "model-cache"),
                           DATASET_CACHE_DIR=str(worker_host / "dataset-cache"), TMPDIR=str(worker_host / "tmp"))
        (root / "api-host" / "tmp").mkdir(parents=True)
        stack.start_api(MODEL_CACHE_DIR=str(root / "api-host" / "model-cache"),
                        DATASET_CACHE_DIR=str(root / "api-host" / "dataset-cache"), TMPDIR=str(root / "api-host" / "tmp"))
        stack.wait_for_worker()
        yield stack
    finally:
        stack.stop()


def test_a_worker_of_another_host_fetches_a_dataset_once(hosts, s3):  # noqa: F811
    arrays, names = fashion_mnist_subset((0, 1, 7), train=120, test=30)
    r = hosts.client.post("/datasets", files={"file": ("three.zip", folder_zip(arrays, names), "application/zip")})
    assert r.status_code == 201, r.text
    ds_id = r.json()["id"]
    stored = S3Storage(f"s3://{s3.bucket}/models/datasets", hosts.root / "reader", suffix=".npz")
    assert list(stored.versions()) == [ds_id]  # in the bucket, beside the models
    cache = hosts.root / "worker-host" / "dataset-cache"
    stamps = []
    for _ in range(2):
        job = hosts.client.post("/train", json={"epochs": 1, "batch_size": 32, "lr": 0.9, "dataset": ds_id})
        assert job.status_code == 202, job.text
        done = hosts.wait_job(job.json()["job_id"], {"succeeded", "failed"}, timeout=180)
        assert done["status"] == "succeeded", done
        files = sorted(cache.glob(f"{ds_id}.*"))
        assert len(files) == 1, files  # one download, by id, into the worker's own cache
        st = files[0].stat()
        stamps.append((files[0].name, st.st_ino, st.st_mtime_ns))
    assert stamps[0] == stamps[1]  # the second job downloaded nothing
    log = hosts.workers[0].log.read_text(errors="replace")
    assert log.count(f"dataset {ds_id}: read") == 1, log[-3000:]  # decoded once: the second job had it in memory
    assert not (hosts.root / "api-host" / "dataset-cache").exists() or \
        not list((hosts.root / "api-host" / "dataset-cache").glob(f"{ds_id}.*"))
