"""Hostile input over real HTTP: schemathesis fuzzes every operation in /openapi.json.

The app runs under uvicorn on a real Redis with one trained model. No worker listens, so the
training jobs the fuzzer queues just wait in a database of their own. No token is set, so
every operation is reachable.

Every check schemathesis has (what `--checks all` names: no 5xx, documented status codes,
content types and headers, response schemas, negative data rejected, positive data accepted,
unsupported methods, auth, resource availability and the rest) in every phase, the stateful
one included (sequences of calls, each feeding values from one answer into the next request). Where a check flags behaviour that is intended,
`schemathesis.toml` beside this file configures it, with the reason.

Bounded by time, not by examples: fuzzing and stateful sequences repeat until ``FUZZ_S`` is
spent (``--max-time``). A fixed count of 30 examples an operation (about a minute) passed while a
ten-minute run found schema-valid requests refused; the time budget finds them, within about
three minutes for this test on two cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from bnlenet.local import procs
from bnlenet.local.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration  # starts the API as a process (python -m app.edge)

FUZZ_S = 150  # schemathesis' whole run; the test adds the server's start and the report
FUZZ_DB = 8  # the session Redis's database for this test, flushed before and after
ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")  # where a check flags intended behaviour, and why


def _schemathesis() -> list[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    return [str(exe)] if exe.exists() else [shutil.which("schemathesis") or "schemathesis"]


@pytest.fixture
def served_api(redis_server: RedisServer, trained_models: tuple[Path, list[str]], tmp_path: Path) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1, with one model in its checkpoint directory; yields its URL."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    model_id = trained_models[1][0]
    shutil.copy(trained_models[0] / f"{model_id}.safetensors", checkpoints)
    redis_url = redis_server.database_url(FUZZ_DB)
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "CHECKPOINT_DIR": str(checkpoints), "DATA_DOWNLOAD": "false",
           "PYTHONUNBUFFERED": "1"}
    env.pop("API_TOKEN", None)
    env.pop("PROTECT_READS", None)
    log = tmp_path / "api.log"
    proc = procs.start([sys.executable, "-m", "app.edge", "--host", "127.0.0.1", "--port", str(port),
                        "--log-level", "warning"], env=env, cwd=ROOT, log=log)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the API exited:\n{log.read_text(errors='replace')[-3000:]}")
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200

    try:
        procs.wait_until(healthy, 60, lambda: f"the API did not come up:\n{log.read_text(errors='replace')[-3000:]}",
                         interval=0.1, ignore=(httpx.HTTPError,))
        yield url
    finally:
        procs.stop(proc, 15)
        redis.Redis.from_url(redis_url).flushdb()


def test_schemathesis_finds_no_server_error_or_schema_violation(served_api: str, tmp_path: Path) -> None:
    schema = httpx.get(f"{served_api}/openapi.json").json()
    operations = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    assert len(operations) >= 10  # train, jobs (3), models (3), predict, healthz, readyz

    work = tmp_path / "schemathesis"  # its reports and example database stay out of the repository
    work.mkdir()
    args = [
        *_schemathesis(), "--config-file", str(CONFIG), "run", f"{served_api}/openapi.json",
        "--max-examples", "30",  # per operation and round; rounds of fuzzing repeat until FUZZ_S
        "--max-time", str(FUZZ_S),
        # Every check: schemathesis 4 runs all of them unless told otherwise (`--checks all` on the
        # command line would also override the exceptions in schemathesis.toml, so it is not given).
        "--phases", "examples,coverage,fuzzing,stateful", "--continue-on-failure",
        "--workers", "1",  # one at a time: schemathesis 4.32 can trip on its own caches with more
        "--seed", "4",
        "--request-timeout", "20",
        "--generation-database", "none",
        "--suppress-health-check", "all",
        "--no-color",
    ]
    run = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=FUZZ_S + 90)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    assert f"Tested: {len(operations)}" in output, output[-4000:]  # every operation ran, none skipped
