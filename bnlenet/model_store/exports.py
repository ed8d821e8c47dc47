"""The export cache: a model as ONNX or a torch.export program, made once per checkpoint and format.

An export is written atomically under a name that carries the checkpoint's checksum, so a
model id whose checkpoint is replaced never serves the old export. ``safetensors`` is the
checkpoint itself. Exports are made in a child process: ``torch.export`` patches process-wide
state, which breaks the forward passes a serving process runs in other threads meanwhile
(``models.export``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from bnlenet.model_store.errors import read
from models.export import check_export_format, export_bytes_in_subprocess
from models.files import write_atomically

if TYPE_CHECKING:
    from bnlenet.model_store.store import ModelStore

__all__ = ["export", "export_path"]


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
