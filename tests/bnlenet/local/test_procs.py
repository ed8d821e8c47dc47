"""The process toolkit: children in their own session, stopped with a signal then SIGKILL, and polling."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from bnlenet.local import procs


def test_procs_start_puts_the_child_in_its_own_session_and_logs(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = procs.start([sys.executable, "-c", "import os; print('leader', os.getsid(0) == os.getpid())"], log=log)
    assert child.wait(30) == 0
    assert log.read_text().strip() == "leader True"  # a session (and process group) of its own


def test_procs_stop_kills_a_child_that_ignores_the_signal() -> None:
    ignores = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    child = procs.start([sys.executable, "-c", ignores])
    time.sleep(0.5)
    started = time.monotonic()
    assert procs.stop(child, timeout=0.5) is False  # did not stop in time: killed
    assert child.returncode is not None and time.monotonic() - started < 10


def test_procs_stop_takes_the_whole_group_along(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    parent = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    child = procs.start([sys.executable, "-c", parent])
    grandchild = int(procs.wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, "the grandchild"))
    assert procs.stop(child, timeout=5)
    procs.wait_until(lambda: not _alive(grandchild), 10, "the grandchild to go")


def test_procs_wait_until_returns_the_value_or_says_what_it_waited_for() -> None:
    calls = iter([None, OSError("refused"), 0, "done"])

    def check() -> object:
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert procs.wait_until(check, 5, "it", interval=0.01) == "done"
    with pytest.raises(TimeoutError, match="waiting for the thing"):
        procs.wait_until(lambda: False, 0.1, "the thing", interval=0.01)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
