"""Serving from the S3 model store against the local directory: predict latency once loaded, and how soon a new model serves.

Starts a real S3 server (SeaweedFS's ``weed mini``) and two API processes side by side, one
with ``CHECKPOINT_DIR`` a local directory and one with ``s3://bucket/prefix`` (and its own
download cache), both holding the same checkpoint. Latency and throughput come from wrk
(concurrency 1 and 16) in alternating rounds, medians reported. Then, for each store, a new
model is published from this process and the time until the API answers with it is measured:
named (``?model_id=``) and as the default (the newest, seen once the listing refreshes,
``NEWEST_MODEL_REFRESH_S`` = 1 s).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.predict import _prepare, _wrk, latency_round, median_columns, wait_for_runtime, with_ratio
from bench.service import http, start, stop, wait_for

TITLE = "Predict from the S3 model store against a local directory"
NOTES = (
    "Both API processes are `python -m app.edge` with one process each, on the same machine as the SeaweedFS "
    "server and wrk, timed once each answers with its PREDICT_RUNTIME (default onnxruntime). \"first prediction\" is the time from the end of a publish (upload or file rename) in "
    "another process to the API's first answer with that model, polled every 10 ms: named in the query, and as "
    "the default model."
)
PIXELS = {"pixels": [[0.5] * 28] * 28}


def _publish(location: str, cache: Path, model_id: str) -> None:
    import torch

    from bnlenet.checkpoint_storage import open_storage
    from bnlenet.model_store import ModelStore
    from models.lenet import build_lenet

    torch.manual_seed(len(model_id))
    ModelStore(open_storage(location, cache_dir=cache)).publish(model_id, build_lenet("builtin").eval(),
                                                                 {"variant": "builtin"})


def _until_served(base: str, model_id: str, named: bool, timeout: float = 30) -> float:
    """Seconds until POST /predict/pixels answers with ``model_id`` (named in the query, or as the default)."""
    started = time.perf_counter()
    url = base + "/predict/pixels" + (f"?model_id={model_id}" if named else "")
    while time.perf_counter() - started < timeout:
        status, body = http("POST", url, PIXELS, timeout=5)
        if status == 200 and body.get("model_id") == model_id:
            return time.perf_counter() - started
        time.sleep(0.01)
    raise TimeoutError(f"{model_id} was not served by {base} within {timeout} s")


def run(quick: bool = False) -> list[dict[str, Any]]:
    if shutil.which("wrk") is None:
        return [{"benchmark": "object store", "result": "not measured: wrk is not installed (apt-get install wrk)"}]
    from bnlenet.checkpoint_storage import S3Storage
    from bnlenet.local.redis_server import free_port
    from bnlenet.local.s3_server import S3Server, WeedNotFound

    seconds, rounds, publishes = (2, 1, 2) if quick else (8, 3, 5)
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        script = _prepare(tmpdir)  # tmpdir/ck/bench-model.safetensors and wrk's upload script
        try:
            server = S3Server(tmpdir / "s3").start()
        except WeedNotFound as exc:
            return [{"benchmark": "object store", "result": f"not measured: {exc}"}]
        processes = []
        try:
            os.environ.update(server.client_env())
            url = f"s3://{server.bucket}/bench"
            S3Storage(url, tmpdir / "uploader").publish("bench-model", (tmpdir / "ck" / "bench-model.safetensors")
                                                        .read_bytes())
            common = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "NEWEST_MODEL_REFRESH_S": "1"}
            stores = {"local directory": str(tmpdir / "ck"), "S3 (SeaweedFS)": url}
            bases = {}
            for name, location in stores.items():
                port = free_port()
                env = {**common, "CHECKPOINT_DIR": location, "MODEL_CACHE_DIR": str(tmpdir / f"cache-{port}")}
                processes.append(start([sys.executable, "-m", "app.edge", "--host", "127.0.0.1", "--port", str(port),
                                        "--log-level", "warning"], env))
                bases[name] = f"http://127.0.0.1:{port}"
                wait_for(lambda b=bases[name]: http("GET", b + "/healthz", timeout=1)[0] == 200, 120, name)
                _wrk(bases[name] + "/predict?model_id=bench-model", script, 4, 1, 2)  # load the model, warm up
                wait_for_runtime(bases[name])  # its onnxruntime session built, if that is the runtime
            measured: dict[str, list[dict[str, float]]] = {name: [] for name in stores}
            for _ in range(rounds):
                for name, base in bases.items():
                    measured[name].append(latency_round(base + "/predict?model_id=bench-model", script, seconds))
            first: dict[str, dict[str, list[float]]] = {name: {"named": [], "default": []} for name in stores}
            for i in range(publishes):
                for name, location in stores.items():
                    for how in ("named", "default"):
                        model_id = f"new-{how}-{i}"
                        _publish(location, tmpdir / "publisher", model_id)
                        first[name][how].append(_until_served(bases[name], model_id, how == "named"))
        finally:
            for process in processes:
                stop(process, 30)
            server.stop()
    rows = []
    for name, runs in measured.items():
        rows.append({
            "store": name, **median_columns(runs),
            "first prediction, named (ms)": round(1000 * statistics.median(first[name]["named"]), 1),
            "first prediction, default (ms)": round(1000 * statistics.median(first[name]["default"]), 1),
        })
    return with_ratio(rows, "local")


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
