"""Batch predict over HTTP: images/sec at batch 1, 16 and 256, eager PyTorch against onnxruntime.

Two API processes as the tests and containers run them (``python -m app.edge``, one intra-op
thread), one per ``PREDICT_RUNTIME``, on the same checkpoint, started together and measured in
turns: every round times each batch size on both servers back to back (the order alternating
between rounds), so the ratio compares the runtimes under the same load. wrk (its own process,
one connection) posts ``POST /predict/batch`` with ``batch`` PNG files in the multipart field
``files``; images/sec = requests/sec x batch. The onnxruntime server is measured only once its
answers say ``runtime: onnxruntime`` (its session is built in the background after the first
request).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.predict import BOUNDARY, _lua_script, _png, _write_model, _wrk, wait_for_runtime
from bench.service import start, stop

TITLE = "Batch predict over HTTP: images/sec, eager PyTorch against onnxruntime"
NOTES = (
    "`POST /predict/batch` with `batch` 28x28 PNGs (one multipart field `files` each) from wrk with one "
    "connection, on the same machine; one API process per runtime (`python -m app.edge`, PREDICT_THREADS=1), "
    "same checkpoint (builtin variant), measured in alternating turns. `images/s` = requests/sec x batch; "
    "`p50 ms` is one request of `batch` images; medians over rounds. The request includes multipart parsing "
    "and PNG decoding of every image, which both runtimes pay alike."
)
RUNTIMES = ("eager", "onnxruntime")
BATCHES = (1, 16, 256)


def _batch_body(png: bytes, batch: int) -> bytes:
    part = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode() + png + b"\r\n"
    return part * batch + f"--{BOUNDARY}--\r\n".encode()


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def run(quick: bool = False, rounds: int = 3) -> list[dict[str, Any]]:
    """One row per (batch, runtime): images/sec and latency, medians over ``rounds``, and the ratio to eager."""
    if shutil.which("wrk") is None:
        return [{"benchmark": "predict batch", "result": "not measured: wrk is not installed (apt-get install wrk)"}]
    from bnlenet.local.redis_server import free_port

    seconds = 2 if quick else 5
    rounds = 1 if quick else rounds
    runs: dict[tuple[int, str], list[dict[str, float]]] = {(b, r): [] for b in BATCHES for r in RUNTIMES}
    loads: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "ck").mkdir()
        _write_model(tmpdir / "ck")
        png = _png()
        scripts = {}
        for batch in BATCHES:
            scripts[batch] = tmpdir / f"batch{batch}.lua"
            scripts[batch].write_text(_lua_script(_batch_body(png, batch)))
        servers, bases = {}, {}
        try:
            for runtime in RUNTIMES:
                port = free_port()
                env = {**os.environ, "CHECKPOINT_DIR": str(tmpdir / "ck"), "PREDICT_RUNTIME": runtime,
                       "PREDICT_THREADS": "1", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
                servers[runtime] = start([sys.executable, "-m", "app.edge", "--host", "127.0.0.1", "--port",
                                          str(port), "--log-level", "warning"], env)
                bases[runtime] = f"http://127.0.0.1:{port}"
            for runtime, base in bases.items():
                wait_for_runtime(base, runtime)
            for i in range(rounds):
                loads.append(_load())
                for batch in BATCHES:
                    order = RUNTIMES if (i + batch) % 2 == 0 else RUNTIMES[::-1]
                    for runtime in order:
                        url = bases[runtime] + "/predict/batch"
                        _wrk(url, scripts[batch], 1, 1, 1)  # warm this size: allocator, threadpool
                        runs[batch, runtime].append(_wrk(url, scripts[batch], 1, 1, seconds))
            loads.append(_load())
        finally:
            for server in servers.values():
                stop(server, 30)
    rows = []
    for batch in BATCHES:
        eager_ips = statistics.median(r["rps"] for r in runs[batch, "eager"]) * batch
        for runtime in RUNTIMES:
            measured = runs[batch, runtime]
            ips = statistics.median(r["rps"] for r in measured) * batch
            ratios = [o["rps"] / e["rps"] for o, e in zip(measured, runs[batch, "eager"], strict=True)]
            rows.append({
                "batch": batch, "runtime": runtime, "images/s": round(ips),
                "p50 ms": statistics.median(r["p50_ms"] for r in measured),
                "p99 ms": statistics.median(r["p99_ms"] for r in measured),
                "x eager": f"{ips / eager_ips:.2f}",
                "x eager per round": ", ".join(f"{x:.2f}" for x in ratios),
                "errors": sum(int(r["errors"]) for r in measured), "rounds": len(measured),
            })
    rows.append({"batch": "load average (1, 5, 15 min) at each round's start and the end", "runtime": "; ".join(loads)})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
