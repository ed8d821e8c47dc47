"""Memory: the API process with 8 models cached, and a worker before and after a job.

API: one uvicorn process (``--workers 1``, so the server is the measured process) on a free
port, with 16 small checkpoints on disk and no Redis (predict never touches it). Its size is
read from ``/proc/<pid>/smaps_rollup`` after a first request that loads no model (JSON pixels
for a model id that does not exist: 404, the whole request path warmed, nothing cached), then
after predicting with model 1, with models 1-8, and with models 1-16 (the LRU holds
``MODEL_CACHE_SIZE`` = 8, so the last must not grow).

Worker: ``bnlenet up`` as the README runs it; the Celery pool process (the one that trains) is
measured idle, after it has preloaded the data set, then a few seconds after each one-epoch
job on the real data has ended.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.queueing import wait_job_end
from bench.service import http, running_stack, start, stop, wait_for

TITLE = "Memory: the API with 8 models cached, a worker after a job"
NOTES = (
    "RSS is resident memory; PSS shares pages mapped by several processes among them; USS is the "
    "process's private pages. The API's reference ('none cached') is after one request that runs the "
    "whole predict path but loads no model (a 404 for a missing model id), so lazy imports and the "
    "allocator's first arenas are counted in the reference, as they would be in any serving process. "
    "The reference is 'none cached' for the API and 'idle' for the worker. A worker 'returns to its idle size' when its pool process is within 10% of its idle RSS."
)
API_TARGET_MIB = 150.0
WORKER_TOLERANCE = 0.10
MODELS = 16


def memory_mib(pid: int) -> dict[str, float]:
    """RSS, PSS and USS of ``pid`` in MiB, from ``/proc/<pid>/smaps_rollup``."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)  # kB
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"RSS MiB": fields["Rss"] / 1024, "PSS MiB": fields["Pss"] / 1024, "USS MiB": uss / 1024}


def _write_models(directory: Path, count: int) -> list[str]:
    import torch

    from models.checkpoint import save_checkpoint
    from models.lenet import build_lenet

    directory.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(count):
        torch.manual_seed(i)
        variant = ("scratch", "builtin")[i % 2]
        net = build_lenet(variant).train()
        with torch.no_grad():  # real running statistics in every BN layer
            for _ in range(3):
                net(torch.rand(64, 1, 28, 28))
        model_id = f"bench-model-{i + 1:02d}"
        save_checkpoint(directory / f"{model_id}.safetensors", net.eval(), {"variant": variant})
        ids.append(model_id)
    return ids


def _predict(base: str, model_id: str) -> int:
    return http("POST", base + "/predict", {"pixels": [[0.5] * 28] * 28, "model_id": model_id})[0]


def _row(stage: str, now: dict[str, float], ref: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"process": extra.pop("process"), "stage": stage}
    row.update({k: round(v, 1) for k, v in now.items()})
    if ref is not None:
        row["RSS over reference MiB"] = round(now["RSS MiB"] - ref["RSS MiB"], 1)
    row.update(extra)
    return row


def api_rows(settle_s: float) -> list[dict[str, Any]]:
    from bnlenet.local.redis_server import free_port

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ids = _write_models(Path(tmp) / "ck", MODELS)
        port = free_port()
        env = {**os.environ, "CHECKPOINT_DIR": str(Path(tmp) / "ck"),
               "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens: predict needs no Redis
        api = start([sys.executable, "-m", "app.edge", "--host", "127.0.0.1", "--port", str(port),
                     "--workers", "1"], env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: http("GET", base + "/healthz", timeout=1)[0] == 200, 120, "the API")

            def settled() -> dict[str, float]:
                time.sleep(settle_s)
                return memory_mib(api.pid)

            status = _predict(base, "no-such-model")
            assert status == 404, status
            ref = settled()
            rows.append(_row("none cached (after a 404 predict)", ref, ref, process="API"))
            assert _predict(base, ids[0]) == 200
            one = settled()
            rows.append(_row("model 1 cached", one, ref, process="API"))
            for model_id in ids[:8]:
                assert _predict(base, model_id) == 200
            eight = settled()
            grew = eight["RSS MiB"] - ref["RSS MiB"]
            rows.append(_row("models 1-8 cached", eight, ref, process="API",
                             target=f"<= {API_TARGET_MIB:g} MiB over none cached",
                             met="yes" if grew <= API_TARGET_MIB else "no"))
            rows[-1]["RSS over model 1 MiB"] = round(eight["RSS MiB"] - one["RSS MiB"], 1)
            for model_id in ids:
                assert _predict(base, model_id) == 200
            sixteen = settled()
            rows.append(_row(f"after models 1-{MODELS} (LRU keeps 8)", sixteen, ref, process="API"))
        finally:
            stop(api, timeout=30)
    return rows


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pool_process(launcher: int) -> int:
    """The Celery pool process under ``bnlenet up``: the child of the worker's main process."""
    for child in _children(launcher):
        if "celery" in _cmdline(child):
            pool = _children(child)
            if len(pool) == 1:
                return pool[0]
    raise RuntimeError("no Celery pool process found under the stack")


def worker_rows(jobs: int, settle_s: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, running_stack(Path(tmp)) as (base, stack):
        pid = wait_for(lambda: _pool_process(stack.pid), 60, "the worker's pool process")
        # Idle: the data set preloaded and the engine warmed up; wait until the size settles.
        previous = 0.0
        for _ in range(30):
            time.sleep(2)
            idle = memory_mib(pid)
            if abs(idle["RSS MiB"] - previous) < 1.0:
                break
            previous = idle["RSS MiB"]
        rows.append(_row("idle (data set preloaded)", idle, idle, process="worker pool process"))
        for i in range(1, jobs + 1):
            status, job = http("POST", base + "/train", {"epochs": 1, "variant": ("scratch", "builtin")[i % 2 == 0]})
            assert status == 202, (status, job)
            peak = 0.0
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                peak = max(peak, memory_mib(pid)["RSS MiB"])
                record = http("GET", f"{base}/jobs/{job['job_id']}")[1]
                if record["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.5)
            record = wait_job_end(base, job["job_id"])
            time.sleep(settle_s)
            after = memory_mib(pid)
            back = after["RSS MiB"] <= idle["RSS MiB"] * (1 + WORKER_TOLERANCE)
            rows.append(_row(f"after job {i} ({record['params']['variant']}, 1 epoch, {record['status']})", after,
                             idle, process="worker pool process", **{"peak RSS during job MiB": round(peak, 1)},
                             target=f"within {WORKER_TOLERANCE:.0%} of idle RSS", met="yes" if back else "no"))
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    """API rows, then worker rows."""
    settle = 1.0 if quick else 3.0
    return api_rows(settle) + worker_rows(1 if quick else 3, settle)


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
