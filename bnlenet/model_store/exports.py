"""The export cache: a model as ONNX or a torch.export program, made once per checkpoint and format.

An export is written atomically under a name that carries the checkpoint's checksum, so a
model id whose checkpoint is replaced never serves the old export. ``safetensors`` is the
checkpoint itself. Exports are made in a child process: ``torch.export`` patches process-wide
state, which breaks the forward passes a serving process runs in other threads meanwhile
(``models.export``).

A serving process builds them in the background (``ExportBuilds``): an ONNX export takes
seconds, more than a request should wait, so a request waits at most ``wait_s`` for the build
and is otherwise told to ask again.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING

from bnlenet.model_store.errors import read
from models.export import check_export_format, export_bytes_in_subprocess
from models.files import write_atomically

if TYPE_CHECKING:
    from bnlenet.model_store.store import ModelStore

__all__ = ["ExportBuilds", "export", "export_path"]


def export_path(store: ModelStore, name: str, fmt: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """Where the export of the model ``name`` means in ``fmt`` lives (default directory: the storage's)."""
    fmt = check_export_format(fmt)
    model_id = store.resolve(name)
    checksum = str(store.metadata(model_id).get("checksum", ""))[:16] or "nochecksum"
    root = Path(directory) if directory is not None else store.storage.exports_dir
    return root / f"{model_id}.{checksum}.{fmt}"


def export(store: ModelStore, name: str, fmt: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """The export of the model ``name`` means in ``fmt``, made on first use and cached after.

    Unknown or unusable models raise as ``ModelStore.metadata`` does; the checkpoint is verified
    again while exporting.
    """
    fmt = check_export_format(fmt)
    model_id = store.resolve(name)
    source = store.local_checkpoint(model_id)
    if fmt == "safetensors":
        return source
    target = export_path(store, model_id, fmt, directory)
    if target.is_file():
        return target
    checkpoint = read(source, model_id)
    payload = export_bytes_in_subprocess(checkpoint.model, checkpoint.metadata, fmt, model_id=model_id)
    return write_atomically(target, payload)


class ExportBuilds:
    """Exports built in a background thread, one at a time per process; a request waits at most ``wait_s``."""

    def __init__(self, wait_s: float = 3.0) -> None:
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._builds: dict[Path, Future[Path]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def get(self, store: ModelStore, model_id: str, fmt: str,
            directory: str | os.PathLike[str] | None = None) -> Path | None:
        """The export's file, if it is ready within ``wait_s``; None while it is being built (started here if
        need be). A build that failed raises its error to the request that finds it done."""
        fmt = check_export_format(fmt)
        if fmt == "safetensors":
            return store.local_checkpoint(model_id)
        target = export_path(store, model_id, fmt, directory)
        if target.is_file():
            return target
        with self._lock:
            build = self._builds.get(target)
            if build is None:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="export-build")
                build = self._builds[target] = self._pool.submit(export, store, model_id, fmt, directory)
                build.add_done_callback(lambda _: self._forget(target))
        try:
            return build.result(timeout=self.wait_s)
        except FutureTimeout:
            return None

    def _forget(self, target: Path) -> None:
        with self._lock:
            self._builds.pop(target, None)

    def close(self) -> None:
        """Drop the builds not started; one under way ends with its child process."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
