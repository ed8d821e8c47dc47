"""Open job event streams: what 100 of them cost Redis and ``/predict``.

Starts ``bnlenet up`` (its own Redis, a worker and one API process per core) with one
checkpoint, and jobs written straight into the job store and taken out of its outbox, so no
worker runs them (they stay queued): the streams are idle, as a watched job's are between
events. Then:

- ``/predict`` from wrk (concurrency 16, and 1 for latency) with no stream open, then with 100
  streams open (one client thread holding them, reading their heartbeats);
- Redis commands per second (``INFO stats`` ``total_commands_processed`` over a window, less
  the INFO calls) with 0 and 100 idle streams, and with 1 and 100 streams following one job
  whose progress the benchmark writes twice a second (as a running job's worker does).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.predict import _lua_script, _multipart, _png, _write_model, _wrk
from bench.service import running_stack
from bnlenet.jobs import JobStore
from bnlenet.local.redis_server import free_port

TITLE = "Event streams: /predict and Redis with 100 open streams"
NOTES = (
    "Streams are `GET /jobs/{id}/events` held open by one asyncio client in the benchmark process (httpx), "
    "split by the kernel across the API processes; idle streams get a heartbeat comment every 15 s and no "
    "Redis command. 'commands/sec' is the whole Redis server's rate (the worker's broker polling, heartbeats "
    "and reaper included), so the rows compare with the 0-stream row. The progress rows add a writer that "
    "updates one job's progress twice a second: the streams of that job share one read per API process per "
    "write, not one per stream."
)
STREAMS = 100
ROUNDS = 3


class Streams:
    """``n`` event streams held open by an event loop in a thread, counting what they receive."""

    def __init__(self, base: str, job_ids: list[str]) -> None:
        self.base, self.job_ids = base, job_ids
        self.events = 0
        self.opened = 0
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _one(self, client: httpx.AsyncClient, job_id: str) -> None:
        opened = False
        async with client.stream("GET", f"{self.base}/jobs/{job_id}/events") as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    self.events += 1
                    if not opened:
                        opened = True
                        self.opened += 1  # open once its snapshot came: the reads of opening are done

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=len(self.job_ids) + 10)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None), limits=limits) as client:
            tasks = [asyncio.create_task(self._one(client, j)) for j in self.job_ids]
            await self.stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> Streams:
        self.thread.start()
        deadline = time.monotonic() + 60
        while self.opened < len(self.job_ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.opened} of {len(self.job_ids)} streams opened")
            time.sleep(0.05)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def commands_per_sec(client: redis.Redis, seconds: float) -> tuple[float, str]:
    """The Redis server's command rate over ``seconds``, and which commands (the measuring INFO calls left out)."""
    before = _command_counts(client)
    time.sleep(seconds)
    after = _command_counts(client)
    diff = {name: after[name] - before.get(name, 0) for name in after}
    diff["info"] = diff.get("info", 0) - 1  # the second INFO call is counted before it answers
    diff = {name: n for name, n in diff.items() if n > 0}
    which = ", ".join(f"{name} {n}" for name, n in sorted(diff.items(), key=lambda kv: -kv[1]))
    return sum(diff.values()) / seconds, which or "none"


def _command_counts(client: redis.Redis) -> dict[str, int]:
    stats: Any = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


class ProgressWriter:
    """Writes one claimed job's progress twice a second, as a running job's heartbeat thread does."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self.done = threading.Event()
        self.writes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        batch = 0
        while not self.done.wait(0.5):
            batch += 1
            progress = {"epoch": 1, "epochs": 1, "batch": batch, "batches": 10**6, "fraction": batch / 10**6,
                        "loss": 1.0, "train_acc": 0.5}
            self.store.beat(self.job_id, worker="bench@writer", attempt=1, progress=progress)
            self.writes += 1

    def __enter__(self) -> ProgressWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)


def _unpublished_job(store: JobStore) -> str:
    """A queued job that no worker will run: out of the outbox before the workers' sweep publishes it."""
    job_id = store.submit({"epochs": 1})[0]["job_id"]
    store.drop_from_outbox(job_id)
    return job_id


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _predict_pair(url: str, script: Path, seconds: int) -> dict[str, float]:
    """wrk at concurrency 16 (throughput) and 1 (latency), keyed ``<measure>@<concurrency>``."""
    out: dict[str, float] = {}
    for concurrency, threads in ((16, 2), (1, 1)):
        r = _wrk(url, script, concurrency, threads, seconds)
        out.update({f"requests/sec@{concurrency}": r["rps"], f"p50 ms@{concurrency}": r["p50_ms"],
                    f"p99 ms@{concurrency}": r["p99_ms"], f"errors@{concurrency}": r["errors"]})
    return out


def run(quick: bool = False) -> list[dict[str, Any]]:
    if shutil.which("wrk") is None:
        return [{"benchmark": "events", "result": "not measured: wrk is not installed (apt-get install wrk)"}]
    seconds = 3 if quick else 8
    window = 5.0 if quick else 10.0
    rows: list[dict[str, Any]] = []
    redis_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "ck").mkdir()
        _write_model(tmpdir / "ck")
        script = tmpdir / "predict.lua"
        script.write_text(_lua_script(_multipart(_png())))
        with running_stack(tmpdir, env_extra={"BNLENET_REDIS_PORT": str(redis_port)}) as (base, _stack):
            client = redis.Redis(host="127.0.0.1", port=redis_port)
            store = JobStore(client)
            idle_jobs = [_unpublished_job(store) for _ in range(STREAMS)]
            url = base + "/predict"
            _wrk(url, script, 16, 2, 2)  # warm every API process

            # Alternate without and with the streams, so that load from elsewhere on the machine
            # falls on both; medians over the rounds.
            measured: dict[int, list[dict[str, float]]] = {0: [], STREAMS: []}
            for _ in range(1 if quick else ROUNDS):
                measured[0].append(_predict_pair(url, script, seconds))
                with Streams(base, idle_jobs):
                    measured[STREAMS].append(_predict_pair(url, script, seconds))
            for n in (0, STREAMS):
                with Streams(base, idle_jobs[:n]):
                    rate, which = commands_per_sec(client, window)
                rows.append({"benchmark": "Redis commands/sec, idle streams", "open streams": n,
                             "commands/sec": round(rate, 1), f"commands in {window:.0f} s": which})
            for concurrency in (16, 1):
                for streams, results in measured.items():
                    rows.append({
                        "benchmark": f"predict, concurrency {concurrency}", "open streams": streams,
                        **{k: _median([r[f"{k}@{concurrency}"] for r in results])
                           for k in ("requests/sec", "p50 ms", "p99 ms")},
                        "errors": sum(int(r[f"errors@{concurrency}"]) for r in results),
                        "rounds": len(results)})

            busy = _unpublished_job(store)
            store.claim(busy, worker="bench@writer", pid=0, task_id=None, max_attempts=3, stale_after=3600)
            for n in (1, STREAMS):
                with Streams(base, [busy] * n) as followers, ProgressWriter(store, busy) as writer:
                    rate, which = commands_per_sec(client, window)
                rows.append({"benchmark": "Redis commands/sec, streams of one job writing progress 2/s",
                             "open streams": n, "commands/sec": round(rate, 1), f"commands in {window:.0f} s": which,
                             "events delivered": followers.events, "progress writes": writer.writes})
            store.finish(busy, "cancelled")
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
