"""The real stack, as processes: a Redis server, a Celery worker and the API as it runs in production (``app.edge``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bnlenet.local import procs
from bnlenet.local.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    """A child process in its own session (so its pool children stop with it), logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.args, self.env = name, args, env
        self.log = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.process = procs.start(self.args, env=self.env, cwd=ROOT, log=self.log)
        return self

    def signal_group(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            procs.signal_group(self.process, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is not None:
            procs.stop(self.process, timeout, sig=signal.SIGTERM, group=True)

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or the OOM killer would."""
        if self.process is not None:
            procs.kill(self.process)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


class Stack:
    """Redis + worker + API on 127.0.0.1, configured through the environment as in production."""

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.root = root
        self.redis = RedisServer(root / "redis")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.checkpoint_dir = root / "checkpoints"
        self.env = {
            **os.environ,
            "REDIS_URL": self.redis.url,
            "CHECKPOINT_DIR": str(self.checkpoint_dir),
            "DATA_DIR": str(data_dir),
            "DATA_DOWNLOAD": "false",
            "JOB_HEARTBEAT_INTERVAL_S": "0.3",
            "JOB_PROGRESS_INTERVAL_S": "0.2",
            "JOB_STALE_AFTER_S": "3",
            "REAPER_INTERVAL_S": "1",
            "OUTBOX_GRACE_S": "1",
            "MAX_LR": "1e37",  # lets a test ask for a learning rate that diverges
            "PYTHONUNBUFFERED": "1",
        }
        self.workers: list[Proc] = []
        self.api: Proc | None = None
        self.extra_apis: list[Proc] = []
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def start_worker(self, name: str = "w1", **env: str) -> Proc:
        """A Celery worker with the stack's environment (plus ``env``, its own)."""
        args = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "prefork",
                "--concurrency", "1", "-Q", "training", "--loglevel", "INFO", "-n", f"{name}@%h",
                "--without-gossip", "--without-mingle"]
        worker = Proc(f"worker-{name}-{len(self.workers)}", args, {**self.env, **env}, self.root).start()
        self.workers.append(worker)
        return worker

    def start_api(self, port: int | None = None, *, unset: tuple[str, ...] = (), wait: bool = True,
                  **env: str) -> Proc:
        """The API (on the stack's port unless ``port`` names another) with the stack's environment plus
        ``env``, less the variables named in ``unset``; answering ``/healthz`` unless ``wait`` is false."""
        port = port or self.port
        args = [sys.executable, "-m", "app.edge", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning"]
        environment = {k: v for k, v in {**self.env, **env}.items() if k not in unset}
        api = Proc(f"api-{time.monotonic_ns()}", args, environment, self.root).start()
        if port == self.port:
            self.api = api
        else:
            self.extra_apis.append(api)
        if wait:
            wait_for(lambda: self._healthy(port), 60, f"the API did not come up:\n{api.tail()}")
        return api

    def _healthy(self, port: int | None = None) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port or self.port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for_worker(self, timeout: float = 60) -> None:
        def ready() -> bool:
            r = self.client.get("/readyz")
            return r.status_code == 200 and bool(r.json()["workers"])

        wait_for(ready, timeout, f"no worker became ready:\n{self.workers[-1].tail() if self.workers else ''}")

    def stop(self) -> None:
        self.client.close()
        for api in [self.api, *self.extra_apis]:
            if api is not None:
                api.stop()
        for worker in self.workers:
            worker.stop()
        self.redis.stop()

    def job(self, job_id: str) -> dict:
        r = self.client.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def worker_logs(self) -> str:
        """Everything the stack's workers have logged so far."""
        return "".join(w.log.read_text(errors="replace") for w in self.workers if w.log.exists())

    def upload_dataset(self, data: bytes, filename: str, **fields: str) -> dict:
        """POST a data set archive to /datasets; the data set the API answers with."""
        r = self.client.post("/datasets", files={"file": (filename, data, "application/zip")}, data=fields, timeout=120)
        assert r.status_code in (200, 201), r.text
        body: dict = r.json()
        return body

    def wait_job(self, job_id: str, statuses: set[str], timeout: float = 90) -> dict:
        seen: list[str] = []

        def done() -> bool:
            job = self.job(job_id)
            if not seen or seen[-1] != job["status"]:
                seen.append(job["status"])
            return job["status"] in statuses

        wait_for(done, timeout, lambda: f"job {job_id} went {seen}, not to {statuses}:\n"
                 + "\n".join(w.tail() for w in self.workers))
        record = self.job(job_id)
        record["_seen"] = seen
        return record


def wait_for(check: Callable[[], object], timeout: float, message: str | Callable[[], str],
             interval: float = 0.05) -> None:
    """Poll ``check`` until it is truthy; fail the test with ``message`` (or what it returns) past ``timeout``."""
    try:
        procs.wait_until(check, timeout, message if callable(message) else lambda: message, interval=interval,
                         ignore=())
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


@contextlib.contextmanager
def running_stack(root: Path, data_dir: Path, **env: str) -> Iterator[Stack]:
    """Redis, one worker and the API started (``env`` added to their environment), stopped on exit."""
    s = Stack(root, data_dir)
    s.env.update(env)
    try:
        s.redis.start()
        s.start_worker()
        s.start_api()
        s.wait_for_worker()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Iterator[Stack]:
    """A running stack with one worker, shared by a module's tests."""
    with running_stack(tmp_path_factory.mktemp("stack"), synthetic_data_dir) as s:
        yield s
