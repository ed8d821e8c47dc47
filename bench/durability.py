"""What a 202 costs with the append-only file forced to disk: POST /train under ``appendfsync`` everysec and always.

Two Redis servers with their data on the same disk, one per policy, each behind its own API
process (``app.edge``, no worker, so every job stays queued); the rounds alternate between them
so that the machine's load falls on both alike. Also times a bare ``write`` + ``fsync`` of 200
bytes in the same directory, the floor under ``always``. Compare the policies by their ratio.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bnlenet.local import procs
from bnlenet.local.redis_server import RedisServer, free_port

TITLE = "POST /train with the append-only file fsynced every second or before each reply"
NOTES = (
    "One API process and one Redis per policy, no worker, on the same disk; rounds alternate between the "
    "policies. `serial`: one client, one request at a time (latency); `8 clients`: eight threads with their "
    "own connections (throughput, where Redis fsyncs once per batch of replies). `x everysec` is the ratio "
    "to the everysec row of the same load."
)
POLICIES = ("everysec", "always")
BODY = {"variant": "scratch", "epochs": 1}


def fsync_ms(directory: Path, n: int) -> float:
    """Median milliseconds of one 200-byte append and fsync in ``directory``."""
    path = directory / "fsync-probe"
    times = []
    with open(path, "ab") as f:
        for _ in range(n):
            started = time.perf_counter()
            f.write(b"x" * 200)
            f.flush()
            os.fsync(f.fileno())
            times.append((time.perf_counter() - started) * 1000)
    path.unlink()
    return statistics.median(times)


def serial(url: str, n: int) -> list[float]:
    """Milliseconds of ``n`` POST /train, one after another on one connection."""
    out = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(n):
            started = time.perf_counter()
            r = client.post("/train", json=BODY)
            out.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 202, r.text
    return out


def concurrent(url: str, clients: int, each: int) -> float:
    """Accepted jobs per second with ``clients`` threads sending ``each`` POST /train apiece."""
    def one(_: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(each):
                r = client.post("/train", json=BODY)
                assert r.status_code == 202, r.text

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))
    return clients * each / (time.perf_counter() - started)


def run(quick: bool) -> list[dict[str, Any]]:
    calls, rounds, each = (40, 2, 10) if quick else (200, 4, 40)
    with tempfile.TemporaryDirectory(prefix="durability-", dir=os.environ.get("DURABILITY_DIR")) as tmp:
        root = Path(tmp)
        servers: dict[str, RedisServer] = {}
        apis = []
        urls: dict[str, str] = {}
        try:
            for policy in POLICIES:
                servers[policy] = RedisServer(root / policy, appendfsync=policy).start()
                port = free_port()
                env = {**os.environ, "REDIS_URL": servers[policy].url, "CHECKPOINT_DIR": str(root / "checkpoints"),
                       "MAX_QUEUED_JOBS": "0", "PYTHONUNBUFFERED": "1"}
                env.pop("API_TOKEN", None)
                env.pop("PROMETHEUS_MULTIPROC_DIR", None)
                apis.append(procs.start([sys.executable, "-m", "app.edge", "--host", "127.0.0.1", "--port", str(port),
                                         "--log-level", "warning"], env=env, log=root / f"api-{policy}.log"))
                urls[policy] = f"http://127.0.0.1:{port}"
                procs.wait_until(lambda u=urls[policy]: httpx.get(f"{u}/healthz", timeout=1).status_code == 200, 60,
                                 "the API did not come up", interval=0.1, ignore=(httpx.HTTPError,))
            latencies: dict[str, list[float]] = {p: [] for p in POLICIES}
            rates: dict[str, list[float]] = {p: [] for p in POLICIES}
            for policy in POLICIES:
                serial(urls[policy], 10)  # warm
            for i in range(rounds):
                for policy in POLICIES if i % 2 == 0 else POLICIES[::-1]:
                    latencies[policy] += serial(urls[policy], calls // rounds)
                    rates[policy].append(concurrent(urls[policy], 8, each))
            floor = fsync_ms(root, 50 if quick else 200)
            rows = []
            base_median = statistics.median(latencies["everysec"])
            base_rate = statistics.median(rates["everysec"])
            for policy in POLICIES:
                ms = sorted(latencies[policy])
                median, rate = statistics.median(ms), statistics.median(rates[policy])
                rows.append({"appendfsync": policy, "serial median ms": round(median, 2),
                             "serial p99 ms": round(ms[int(len(ms) * 0.99) - 1], 2),
                             "serial x everysec": round(median / base_median, 2),
                             "8 clients jobs/s": round(rate, 1), "8 clients x everysec": round(rate / base_rate, 2),
                             "bare fsync ms": round(floor, 2)})
            return rows
        finally:
            for api in apis:
                procs.stop(api, 15)
            for server in servers.values():
                server.stop()


if __name__ == "__main__":
    from bench.run import markdown_table

    print(markdown_table(run("--quick" in sys.argv)))
