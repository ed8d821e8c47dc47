"""Read-your-writes across API processes: how soon another API serves a new model, and what /predict pays.

Starts Redis and API processes (``python -m app.edge``, eager runtime) on one checkpoint
directory. This process plays the worker: it publishes a model and, as the worker does before it
records the job succeeded, announces it (``bnlenet.model_news``: publish on Redis, wait for every
subscribed API to list it). "success" is the moment the worker would record the job succeeded;
from then, one API process is asked (``POST /predict/pixels`` without a model, every 10 ms) until
it answers with the new model. The same is measured without the announcement (the API follows at
its background refresh, ``NEWEST_MODEL_REFRESH_S`` = 1 s, as before the change).

The cost on ``/predict``: sequential requests on one keep-alive connection (a PNG upload, the
hot path), in alternating rounds against an API of this tree, the same API while announcements
arrive every 100 ms, and, when ``BENCH_BASELINE_ROOT`` names a checkout of the code before the
change, an API process run from there; medians of the rounds.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.predict import BOUNDARY, _multipart, _png, _write_model
from bench.service import ROOT, http, stop, wait_for

TITLE = "Read-your-writes: a new model served by another API process, and the cost on /predict"
NOTES = (
    "\"success -> served\" is measured from the moment the worker would record the job succeeded (after the "
    "announcement returned) to the first answer of another API process naming the new model; \"polls\" counts "
    "the requests that took (1: the very next request served it). \"announce\" is how long the announcement "
    "held up the success record (publish on Redis, wait for every API to list the storage and acknowledge). "
    "The /predict rows are single-connection sequential uploads (client and servers on the same cores)."
)
PIXELS = {"pixels": [[0.5] * 28] * 28}


def _start_api(port: int, env: dict[str, str], cwd: Path) -> Any:
    from bnlenet.local import procs

    return procs.start([sys.executable, "-m", "app.edge", "--host", "127.0.0.1", "--port", str(port),
                        "--log-level", "warning"], env=env, cwd=cwd)


def _publish(store: Any, model_id: str) -> None:
    import torch

    from models.lenet import build_lenet

    torch.manual_seed(len(model_id))
    store.publish(model_id, build_lenet("builtin").eval(), {"variant": "builtin"})


def _until_served(base: str, model_id: str, timeout: float = 10) -> tuple[float, int]:
    """(seconds, requests) until ``base`` serves ``model_id`` as the default model."""
    started, polls = time.perf_counter(), 0
    while time.perf_counter() - started < timeout:
        polls += 1
        status, body = http("POST", base + "/predict/pixels", PIXELS, timeout=5)
        if status == 200 and body.get("model_id") == model_id:
            return time.perf_counter() - started, polls
        time.sleep(0.01)
    raise TimeoutError(f"{model_id} was not served by {base} within {timeout} s")


def _predict_round(base: str, n: int) -> list[float]:
    """Latencies (ms) of ``n`` sequential uploads on one keep-alive connection."""
    import httpx

    body = _multipart(_png())
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    times = []
    with httpx.Client(base_url=base, timeout=10) as client:
        for _ in range(n):
            started = time.perf_counter()
            r = client.post("/predict", content=body, headers=headers)
            times.append(1000 * (time.perf_counter() - started))
            if r.status_code != 200:
                raise RuntimeError(f"{base}: {r.status_code} {r.text}")
    return times


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(quick: bool = False) -> list[dict[str, Any]]:
    import threading

    from bnlenet.local.redis_server import RedisServer, free_port
    from bnlenet.model_news import ModelNews
    from bnlenet.model_store import ModelStore

    publishes, rounds, per_round = (3, 1, 100) if quick else (15, 3, 500)
    baseline = os.environ.get("BENCH_BASELINE_ROOT")
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "ck").mkdir()
        _write_model(tmpdir / "ck")
        redis = RedisServer(tmpdir / "redis").start()
        env = {**os.environ, "REDIS_URL": redis.url, "CHECKPOINT_DIR": str(tmpdir / "ck"),
               "PREDICT_RUNTIME": "eager", "NEWEST_MODEL_REFRESH_S": "1"}
        roots = {"this tree": ROOT, "this tree, news every 100 ms": None}
        if baseline:
            roots["before the change"] = Path(baseline)
        bases: dict[str, str] = {}
        processes = []
        try:
            for name, cwd in roots.items():
                if cwd is None:
                    continue
                port = free_port()
                processes.append(_start_api(port, {**env, "PYTHONPATH": str(cwd)}, cwd))
                bases[name] = f"http://127.0.0.1:{port}"
            bases["this tree, news every 100 ms"] = bases["this tree"]
            for base in set(bases.values()):
                wait_for(lambda b=base: http("GET", b + "/healthz", timeout=1)[0] == 200, 120, base)
                wait_for(lambda b=base: http("POST", b + "/predict/pixels", PIXELS, timeout=5)[0] == 200, 60, base)
            writer = ModelStore(tmpdir / "ck")
            news = ModelNews.from_url(redis.url)
            base = bases["this tree"]
            fresh: dict[str, list[tuple[float, int, float]]] = {"announced (this change)": [],
                                                                 "not announced (before)": []}
            for i in range(publishes):
                for how in fresh:
                    model_id = f"m-{i}-{len(how)}"
                    _publish(writer, model_id)
                    started = time.perf_counter()
                    if how.startswith("announced"):
                        news.announce(f"model {model_id} published")
                    announce_s = time.perf_counter() - started
                    seconds, polls = _until_served(base, model_id)
                    fresh[how].append((seconds, polls, announce_s))

            stop_news = threading.Event()

            def announce_forever() -> None:
                while not stop_news.wait(0.1):
                    news.announce("bench")

            latencies: dict[str, list[list[float]]] = {name: [] for name in bases}
            for _ in range(rounds):
                for name, url in bases.items():
                    noisy = name.endswith("100 ms")
                    if noisy:
                        stop_news.clear()
                        announcer = threading.Thread(target=announce_forever, daemon=True)
                        announcer.start()
                    try:
                        latencies[name].append(_predict_round(url, per_round))
                    finally:
                        if noisy:
                            stop_news.set()
                            announcer.join()
            news.close()
        finally:
            for process in processes:
                stop(process, 30)
            redis.stop()
    rows: list[dict[str, Any]] = []
    for how, runs in fresh.items():
        rows.append({
            "measure": f"success -> served by another API, {how}",
            "median ms": round(1000 * statistics.median(r[0] for r in runs), 1),
            "max ms": round(1000 * max(r[0] for r in runs), 1),
            "polls (median / max)": f"{statistics.median(r[1] for r in runs):g} / {max(r[1] for r in runs)}",
            "announce ms (median / max)": (f"{1000 * statistics.median(r[2] for r in runs):.1f} / "
                                           f"{1000 * max(r[2] for r in runs):.1f}") if how.startswith("announced")
            else "-",
            "n": len(runs),
        })
    for name, runs in latencies.items():
        rows.append({
            "measure": f"/predict upload, {name}",
            "median ms": round(statistics.median(statistics.median(r) for r in runs), 3),
            "max ms": round(max(max(r) for r in runs), 1),
            "p99 ms": round(statistics.median(_percentile(r, 0.99) for r in runs), 3),
            "n": sum(len(r) for r in runs),
        })
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
