"""The first job's wait for an uploaded data set on a worker of another host: fetched once, then kept.

Starts a real S3 server (SeaweedFS's ``weed mini``) and ``bnlenet up`` with ``CHECKPOINT_DIR`` in the
bucket and the worker's own ``DATASET_CACHE_DIR`` (nothing shared with the uploader but the bucket
and Redis), uploads a Fashion-MNIST subset as an ``.npz``, then times jobs' setup (the worker's
start of the job to its first training step, from the job record): on the built-in data set, the
first job on the upload (a download, a read and a hash check) and the next one (in memory).
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.queueing import one_trial
from bench.service import running_stack

TITLE = "A worker of another host waits for an uploaded data set once"
NOTES = (
    "One `bnlenet up` (API and one worker) with the store an S3 bucket (SeaweedFS on the same machine), the "
    "worker's dataset cache empty at the start. \"setup s\" is the job record's `first_step_at - started_at`: "
    "resolving the data set, fetching it (first job only), reading it, the training set to the device and the "
    "first step. The upload is Fashion-MNIST's first N training and test images as a MedMNIST-shaped .npz."
)


def _upload(base: str, n_train: int, n_test: int) -> tuple[str, int]:
    import httpx

    from bench.data import fashion_mnist

    data = fashion_mnist()
    arrays = {"train_images": data.train_images[:n_train].numpy(), "train_labels": data.train_labels[:n_train].numpy(),
              "test_images": data.test_images[:n_test].numpy(), "test_labels": data.test_labels[:n_test].numpy()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    r = httpx.post(base + "/datasets", files={"file": ("subset.npz", buf.getvalue(), "application/octet-stream")},
                   data={"classes": ",".join(data.classes)}, timeout=600)
    if r.status_code not in (200, 201):
        raise RuntimeError(f"POST /datasets answered {r.status_code}: {r.text[:500]}")
    body = r.json()
    return str(body["id"]), int(body["size_bytes"])


def run(quick: bool = False) -> list[dict[str, Any]]:
    from bnlenet.local.s3_server import S3Server, WeedNotFound

    n_train, n_test = (6000, 1000) if quick else (30000, 5000)
    rounds = 1 if quick else 3
    rows: list[dict[str, Any]] = []
    measured: dict[str, list[float]] = {"built-in Fashion-MNIST": [], "upload, first job (fetch)": [],
                                        "upload, next job (in memory)": []}
    size = 0
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            tmpdir = Path(tmp)
            try:
                server = S3Server(tmpdir / "s3").start()
            except WeedNotFound as exc:
                return [{"benchmark": "dataset fetch", "result": f"not measured: {exc}"}]
            try:
                env = {**server.client_env(), "CHECKPOINT_DIR": f"s3://{server.bucket}/bench",
                       "DATASET_CACHE_DIR": str(tmpdir / "worker-host" / "dataset-cache"),
                       "MODEL_CACHE_DIR": str(tmpdir / "worker-host" / "model-cache")}
                os.environ.update(server.client_env())
                with running_stack(tmpdir, api_workers=1, env_extra=env) as (base, _):
                    time.sleep(5)  # the pool process preloads Fashion-MNIST and warms up
                    ds_id, size = _upload(base, n_train, n_test)
                    measured["built-in Fashion-MNIST"].append(one_trial(base)["setup"])
                    measured["upload, first job (fetch)"].append(one_trial(base, dataset=ds_id)["setup"])
                    measured["upload, next job (in memory)"].append(one_trial(base, dataset=ds_id)["setup"])
            finally:
                server.stop()
    for name, values in measured.items():
        rows.append({"job": name, "images": "70,000" if name.startswith("built") else f"{n_train + n_test:,}",
                     "stored MB": "" if name.startswith("built") else round(size / 1e6, 1),
                     "setup s (median)": round(statistics.median(values), 3), "max s": round(max(values), 3),
                     "runs": len(values)})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
