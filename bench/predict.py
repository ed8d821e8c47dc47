"""Predict latency and throughput over HTTP, with the server started as the README starts it.

Starts ``bnlenet up`` (its own Redis, a worker and the API with one process per core) on a
free port with one trained-shape checkpoint, then drives ``POST /predict`` with one 28x28
PNG per request from wrk, a C load generator in its own process: concurrency 1 for latency
percentiles, concurrency 16 for throughput. Timing starts once the API answers with its
``PREDICT_RUNTIME`` (an onnxruntime session is built in the background after a model's first
request; eager answers until then).
"""

from __future__ import annotations

import io
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.service import http, running_stack, start, stop, wait_for

TITLE = "Predict over HTTP: latency and throughput"
NOTES = (
    "One 28x28 PNG per request as multipart upload, from wrk (C, its own process) on the same machine; "
    "the server is `bnlenet up` as the README runs it (one API process per core, one intra-op thread each), "
    "timed once every API process answers with PREDICT_RUNTIME (its onnxruntime sessions built)."
)
ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = "bnlenetbenchboundary"


def _png() -> bytes:
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _multipart(png: bytes) -> bytes:
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def _lua_script(body: bytes) -> str:
    escaped = "".join(f"\\{b}" for b in body)
    return (
        'wrk.method = "POST"\n'
        f'wrk.body = "{escaped}"\n'
        f'wrk.headers["Content-Type"] = "multipart/form-data; boundary={BOUNDARY}"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("RESULT p50=%d p90=%d p99=%d max=%d requests=%d errors=%d non2xx=%d\\n",\n'
        "    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,\n"
        "    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write\n"
        "    + summary.errors.timeout, summary.errors.status))\n"
        "end\n"
    )


def _wrk(url: str, script: Path, connections: int, threads: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-c", str(connections), "-t", str(threads), "-d", f"{seconds}s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    m = re.search(r"RESULT p50=(\d+) p90=(\d+) p99=(\d+) max=(\d+) requests=(\d+) errors=(\d+) non2xx=(\d+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or not rps:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    p50, p90, p99, mx, requests, errors, non2xx = (int(g) for g in m.groups())
    return {"p50_ms": p50 / 1000, "p90_ms": p90 / 1000, "p99_ms": p99 / 1000, "max_ms": mx / 1000,
            "requests": requests, "errors": errors + non2xx, "rps": float(rps.group(1))}


def _write_model(checkpoint_dir: Path) -> None:
    import torch

    from models.checkpoint import save_checkpoint
    from models.lenet import build_lenet

    torch.manual_seed(0)
    net = build_lenet("builtin")
    net.train()
    with torch.no_grad():  # give BN real running statistics
        for _ in range(5):
            net(torch.rand(64, 1, 28, 28))
    save_checkpoint(checkpoint_dir / "bench-model.safetensors", net.eval(), {"variant": "builtin"})


def serving_runtime(base: str, png: bytes) -> str | None:
    """The runtime that answered one /predict (None while the API is not answering)."""
    import httpx

    try:
        r = httpx.post(base + "/predict", files={"file": ("x.png", png, "image/png")}, timeout=5)
    except httpx.HTTPError:
        return None
    return r.json().get("runtime") if r.status_code == 200 else None


def wait_for_runtime(base: str, runtime: str | None = None, in_a_row: int = 20, timeout: float = 300) -> None:
    """Wait until ``in_a_row`` answers in a row come from ``runtime`` (default: PREDICT_RUNTIME as the
    environment sets it), so every API process has built its session before anything is timed."""
    from bnlenet.settings import Settings

    expected = runtime or Settings().PREDICT_RUNTIME
    png, streak = _png(), [0]

    def settled() -> bool:
        streak[0] = streak[0] + 1 if serving_runtime(base, png) == expected else 0
        return streak[0] >= in_a_row

    wait_for(settled, timeout, f"the API to answer with {expected}", every=0.1)


def _prepare(tmpdir: Path) -> Path:
    """A model in ``tmpdir/ck`` and wrk's script for one PNG upload; the script's path."""
    (tmpdir / "ck").mkdir()
    _write_model(tmpdir / "ck")
    script = tmpdir / "predict.lua"
    script.write_text(_lua_script(_multipart(_png())))
    return script


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Rows of the predict table: latency at concurrency 1, throughput at 16."""
    if shutil.which("wrk") is None:
        return [{"benchmark": "predict", "result": "not measured: wrk is not installed (apt-get install wrk)"}]
    seconds = 3 if quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        script = _prepare(tmpdir)
        with running_stack(tmpdir) as (base, _stack):
            url = base + "/predict"
            wait_for_runtime(base)
            _wrk(url, script, 16, 2, 2)  # warm every API process: caches, allocator, model load
            one = _wrk(url, script, 1, 1, seconds)
            many = _wrk(url, script, 16, 2, seconds)
    rows = [
        {"benchmark": "predict, concurrency 1", "p50 ms": one["p50_ms"], "p99 ms": one["p99_ms"],
         "requests/sec": round(one["rps"]), "errors": one["errors"], "target": "p50 <= 1.5 ms, p99 <= 5 ms",
         "met": one["p50_ms"] <= 1.5 and one["p99_ms"] <= 5 and one["errors"] == 0},
        {"benchmark": "predict, concurrency 16", "p50 ms": many["p50_ms"], "p99 ms": many["p99_ms"],
         "requests/sec": round(many["rps"]), "errors": many["errors"], "target": ">= 2,000 requests/sec",
         "met": many["rps"] >= 2000 and many["errors"] == 0},
    ]
    for row in edge_cost(quick):
        rows.append({"benchmark": f"predict through {row['server']}, one API process",
                     "p50 ms": row["p50 ms (c=1)"], "p99 ms": row["p99 ms (c=1)"],
                     "requests/sec": row["requests/sec (c=16)"], "errors": row["errors"],
                     "target": "app.edge within noise of plain uvicorn", "met": row["x uvicorn (c=16)"]})
    return rows


SERVERS = {
    "uvicorn (httptools, no deadlines)": ["-m", "uvicorn", "app.main:app"],
    "app.edge (the guarded protocol)": ["-m", "app.edge"],
}


def latency_round(url: str, script: Path, seconds: int) -> dict[str, float]:
    """One round against ``url``: wrk at concurrency 1 (p50, p99) and at 16 (requests/s)."""
    one = _wrk(url, script, 1, 1, seconds)
    many = _wrk(url, script, 16, 2, seconds)
    return {"p50": one["p50_ms"], "p99": one["p99_ms"], "rps": many["rps"], "errors": one["errors"] + many["errors"]}


def median_columns(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The medians of ``latency_round``'s rounds, as table columns."""
    return {"p50 ms (c=1)": statistics.median(r["p50"] for r in runs),
            "p99 ms (c=1)": statistics.median(r["p99"] for r in runs),
            "requests/sec (c=16)": round(statistics.median(r["rps"] for r in runs)),
            "errors": sum(int(r["errors"]) for r in runs), "rounds": len(runs)}


def with_ratio(rows: list[dict[str, Any]], first: str) -> list[dict[str, Any]]:
    """``rows`` with ``x <first> (c=16)``: each row's requests/s over the first row's (named ``first``)."""
    base = rows[0]["requests/sec (c=16)"]
    return [{**row, f"x {first} (c=16)": f"{row['requests/sec (c=16)'] / base:.2f}"} for row in rows]


def edge_cost(quick: bool = False, rounds: int = 3) -> list[dict[str, Any]]:
    """Predict latency and throughput through plain uvicorn and through ``app.edge``, side by side.

    One API process each on the same checkpoint, measured in alternating rounds (medians), so
    the deadlines' and limits' cost on the hot path shows as a ratio.
    """
    import os

    from bnlenet.local.redis_server import free_port

    seconds = 3 if quick else 8
    results: dict[str, list[dict[str, float]]] = {name: [] for name in SERVERS}
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        script = _prepare(tmpdir)
        env = {**os.environ, "CHECKPOINT_DIR": str(tmpdir / "ck"), "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        for _ in range(1 if quick else rounds):
            for name, argv in SERVERS.items():
                port = free_port()
                server = start([sys.executable, *argv, "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning"], env)
                try:
                    base = f"http://127.0.0.1:{port}"
                    wait_for(lambda base=base: http("GET", base + "/healthz", timeout=1)[0] == 200, 120, name)
                    wait_for_runtime(base)
                    _wrk(base + "/predict", script, 4, 1, 2)  # warm up
                    results[name].append(latency_round(base + "/predict", script, seconds))
                finally:
                    stop(server, 30)
    return with_ratio([{"server": name, **median_columns(runs)} for name, runs in results.items()], "uvicorn")


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
