"""Child processes, one way: start one in its own session, stop it with a signal then SIGKILL,
and poll until something is true.

Used by the local stack (``bnlenet up``), the Redis wrapper, the integration tests and the
service benchmarks. A child leads its own session and process group, so a Ctrl-C in the
terminal reaches only its owner, and stopping it can take its pool children (uvicorn
workers, Celery's forked pool) along.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

__all__ = ["die_with_parent", "kill", "signal_group", "start", "stop", "wait_until"]

T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> None:
    """In a fresh child (``preexec_fn``): have Linux SIGTERM it when its parent dies, even by SIGKILL.

    An orphaned redis-server would keep its data directory while the next owner starts another.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def start(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log: Path | None = None,
    orphan_dies: bool = False,
) -> subprocess.Popen[bytes]:
    """``argv`` as the leader of a new session; output appended to ``log`` (default: discarded).

    ``orphan_dies``: the child is SIGTERMed when this process dies (Linux), even by SIGKILL.
    """
    preexec = die_with_parent if orphan_dies else None
    if log is None:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=preexec)
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=preexec)


def signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the child's whole process group, if there is anything left of it."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(process: subprocess.Popen[bytes], timeout: float, *, sig: int = signal.SIGTERM,
         group: bool = False) -> bool:
    """Send ``sig`` (to the leader, or the whole group), wait up to ``timeout``, then SIGKILL the group.

    The group is SIGKILLed in any case: pool children must not outlive their parent. Returns
    whether the leader ended within ``timeout``.
    """
    in_time = True
    if process.poll() is None:
        if group:
            signal_group(process, sig)
        else:
            try:
                process.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            in_time = False
    signal_group(process, signal.SIGKILL)
    process.wait()
    return in_time


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole process group now, as a crash or the OOM killer would, and reap the leader."""
    signal_group(process, signal.SIGKILL)
    process.wait()


def wait_until(
    check: Callable[[], T],
    timeout: float,
    what: str | Callable[[], str],
    *,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (OSError,),
) -> T:
    """Call ``check`` until it returns something truthy, and return that.

    Exceptions in ``ignore`` (default: ``OSError``, which covers refused connections) count
    as "not yet". Past ``timeout`` raises ``TimeoutError`` with ``what`` (or what it returns).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            message = what() if callable(what) else f"timed out after {timeout:g}s waiting for {what}"
            raise TimeoutError(message)
        time.sleep(interval)


def start_server(argv: list[str], *, log: Path, ready: Callable[[], object], what: str, timeout: float,
                 env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server child (``orphan_dies``, output in ``log``) and wait until ``ready()`` is truthy.

    If it exits first, or is not ready within ``timeout``, it is stopped and a RuntimeError
    says why, with the end of its log.
    """
    process = start(argv, env=env, log=log, orphan_dies=True)

    def up() -> object:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{Path(argv[0]).name} exited with {process.returncode}: {tail}")
        return ready()

    try:
        wait_until(up, timeout, what)
    except TimeoutError as exc:
        stop(process, 10)
        raise RuntimeError(str(exc)) from None
    return process
