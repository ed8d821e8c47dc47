"""What the service benchmarks share: a JSON HTTP client, polling, and the stack as the README runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from bnlenet.local import procs

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> tuple[int, Any]:
    """A JSON request; (status, parsed body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy; that value."""
    return procs.wait_until(predicate, timeout, what, interval=every)


def stop(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Ctrl-C a server started in its own session; kill its whole group if it lingers."""
    procs.stop(process, timeout, sig=signal.SIGINT)


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A server process in its own session, quiet, from the repository root."""
    return procs.start(args, env=env, cwd=ROOT)


@contextmanager
def running_stack(tmpdir: Path, api_workers: int | None = None,
                  env_extra: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``bnlenet up`` on a free port with its state in ``tmpdir``; (base URL, launcher), stopped on exit.

    Checkpoints live in ``tmpdir / "ck"``. ``api_workers`` None: one API process per core, as
    the README runs it. ``env_extra`` is added to the stack's environment.
    """
    from bnlenet.local.redis_server import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(CHECKPOINT_DIR=str(tmpdir / "ck"), BNLENET_VAR_DIR=str(tmpdir / "var"))
    if api_workers is not None:
        env["BNLENET_API_WORKERS"] = str(api_workers)
    env.update(env_extra or {})
    stack = start([sys.executable, "-m", "bnlenet.local.cli", "up", "--host", "127.0.0.1", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http("GET", base + "/healthz", timeout=1)[0] == 200, 180, "the API")
        wait_for(lambda: http("GET", base + "/readyz", timeout=2)[1].get("workers"), 120, "a worker to listen")
        yield base, stack
    finally:
        stop(stack)
