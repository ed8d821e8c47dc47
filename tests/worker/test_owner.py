"""The owner check: a job's worker is known dead only when it ran on this host and its pid is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

from bnlenet.jobs import new_record
from worker.lease import owner_gone


def _record(worker: str | None, pid: int | None) -> Any:
    record = new_record("job", {}, 0.0)
    record.update(status="running", worker=worker, worker_pid=pid)
    return record


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_owner_gone_when_its_process_on_this_host_ended() -> None:
    assert owner_gone(_record(f"{socket.gethostname()}:1", _dead_pid()))


def test_owner_not_gone_while_its_process_lives() -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        try:
            assert not owner_gone(_record(f"{socket.gethostname()}:{child.pid}", child.pid))
        finally:
            child.kill()


def test_owner_on_another_host_or_this_process_is_never_declared_gone() -> None:
    assert not owner_gone(_record("elsewhere:1", _dead_pid()))
    assert not owner_gone(_record(f"{socket.gethostname()}:{os.getpid()}", os.getpid()))
    assert not owner_gone(_record(None, None))
