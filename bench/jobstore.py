"""The job store at scale: API latencies and a /metrics scrape with 100,000 job records in Redis.

Starts its own Redis, writes 100,000 finished job records (plus a few queued) with the job
store's layout, starts the API under uvicorn (one process, no worker), and times each call
over one kept-alive HTTP connection: GET /jobs (the first page, and a status filter), GET
/jobs/{id}, POST /train and GET /metrics.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bnlenet.jobs import JobStore, new_record
from bnlenet.local import procs
from bnlenet.local.redis_server import RedisServer, free_port

TITLE = "Job store at scale: API medians with 100,000 job records"
NOTES = (
    "One API process (uvicorn, app.main:app) and the client on the same two-core machine, one kept-alive "
    "connection, requests one after another. The records are finished jobs with a one-epoch history; "
    "50 are queued. Targets: medians under 5 ms, a /metrics scrape under 50 ms."
)
RECORDS = 100_000
QUEUED = 50
TARGETS_MS = {"/metrics": 50.0}


def fill(store: JobStore, n: int) -> list[str]:
    """Write ``n`` records the way the store lays them out, pipelined; their ids."""
    now = time.time()
    statuses = ("succeeded", "failed", "cancelled")
    ids = []
    pipe = store.redis.pipeline(transaction=False)
    epoch = {"epoch": 1, "loss": 0.5, "train_acc": 0.8, "test_acc": 0.8, "examples_per_sec": 20000.0, "seconds": 3.0}
    for i in range(n):
        job_id = f"{i:032x}"
        status = "queued" if i >= n - QUEUED else statuses[i % 3]
        record = {**new_record(job_id, {"variant": "scratch", "epochs": 1}, now - n + i), "status": status,
                  "history": [epoch] if status == "succeeded" else []}
        pipe.set(f"bnlenet:job:{job_id}", json.dumps(record))  # JobStore._job_key
        pipe.zadd(JobStore.index_key(), {job_id: record["created_at"]})
        pipe.zadd(JobStore.index_key(status), {job_id: record["created_at"]})
        ids.append(job_id)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    return ids


def timed(client: httpx.Client, method: str, path: str, n: int, **kwargs: Any) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        r = client.request(method, path, **kwargs)
        out.append((time.perf_counter() - started) * 1000)
        assert r.status_code < 300, (path, r.status_code, r.text[:200])
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    n = 10_000 if quick else RECORDS
    calls = 50 if quick else 300
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        api = None
        try:
            store = JobStore.from_url(redis.url)
            ids = fill(store, n)
            port = free_port()
            env = {**os.environ, "REDIS_URL": redis.url, "CHECKPOINT_DIR": str(Path(tmp) / "checkpoints"),
                   "MAX_QUEUED_JOBS": "0"}
            env.pop("API_TOKEN", None)
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            api = procs.start([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port",
                               str(port), "--log-level", "warning"], env=env, log=Path(tmp) / "api.log")
            url = f"http://127.0.0.1:{port}"
            procs.wait_until(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200, 60,
                             "the API did not come up", interval=0.1, ignore=(httpx.HTTPError,))
            rows = []
            with httpx.Client(base_url=url, timeout=30) as client:
                cases = [
                    ("GET", "/jobs", {}),
                    ("GET", "/jobs?status=failed", {}),
                    ("GET", f"/jobs/{ids[n // 2]}", {}),
                    ("POST", "/train", {"json": {"epochs": 1}}),
                    ("GET", "/metrics", {}),
                ]
                for method, path, kwargs in cases:
                    timed(client, method, path, 10, **kwargs)  # warm
                    ms = sorted(timed(client, method, path, calls, **kwargs))
                    target = TARGETS_MS.get(path, 5.0)
                    median = statistics.median(ms)
                    rows.append({
                        "call": f"{method} {'/jobs/{id}' if path.startswith('/jobs/0') else path}",
                        "records": n, "calls": calls, "median ms": round(median, 2),
                        "p99 ms": round(ms[int(len(ms) * 0.99) - 1], 2), "target ms": target,
                        "met": median < target,
                    })
            return rows
        finally:
            if api is not None:
                procs.stop(api, 15)
            redis.stop()


if __name__ == "__main__":
    from bench.run import markdown_table

    print(markdown_table(run("--quick" in sys.argv)))
