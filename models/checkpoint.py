"""Checkpoints: the full state_dict (weights and every BN layer's running statistics) plus metadata.

Stored as safetensors, which holds raw tensors and a JSON header and never unpickles
anything. Metadata (JSON in the header) carries a SHA-256 checksum over the tensors and the
rest of the metadata, so truncation and tampering are both detected. Writes are atomic
(``models.files``).

The format knows tensors and metadata, not training: the engine builds a run's metadata
(``models.training.training_metadata``) and this module stores whatever it is given.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from models.data import CLASS_NAMES
from models.files import write_atomically
from models.lenet import CLASSIFIER, MAX_CLASSES, NUM_CLASSES, VARIANTS, build_lenet, num_classes_of
from models.preprocess import PREPROCESSING

__all__ = [
    "FORMAT",
    "MODEL_ID",
    "Checkpoint",
    "CheckpointError",
    "checkpoint_bytes",
    "checksum",
    "class_names",
    "load_checkpoint",
    "read_metadata",
    "final_test_acc",
    "save_checkpoint",
]

FORMAT = "bnlenet-checkpoint/1"
# What may name a model (its metadata's ``model_id``, a ``parent``): no separators or dots, so no
# id can name a path outside a store (``bnlenet.model_store``).
MODEL_ID = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_META_KEY = "bnlenet"  # the header entry that holds our JSON metadata


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or used: missing, truncated, tampered or incomplete."""


@dataclass
class Checkpoint:
    model: nn.Sequential  # in eval mode, on the CPU
    metadata: dict[str, Any]


def checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensors[name].shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    body = {k: v for k, v in metadata.items() if k != "checksum"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    return "sha256:" + h.hexdigest()


def _versions() -> dict[str, str]:
    import platform

    import safetensors

    return {"torch": torch.__version__, "safetensors": safetensors.__version__, "python": platform.python_version()}


def checkpoint_bytes(model: nn.Module, metadata: dict[str, Any]) -> bytes:
    """The safetensors file of ``model``'s state_dict and ``metadata``, as bytes.

    ``metadata`` must name the ``variant``; format, versions, preprocessing, creation time
    and the checksum are added here.
    """
    if metadata.get("variant") not in VARIANTS:
        raise ValueError(f"metadata must name the variant ({', '.join(VARIANTS)})")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "preprocessing": PREPROCESSING,
        "versions": _versions(),
        **metadata,
    }
    meta["checksum"] = checksum(tensors, meta)
    return safetensors_save(tensors, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, metadata: dict[str, Any], *,
                    before_commit: Callable[[], None] | None = None) -> Path:
    """Write ``checkpoint_bytes(model, metadata)`` to ``path`` atomically; returns the path.

    ``before_commit`` runs just before the file takes its name (see ``write_atomically``).
    """
    return write_atomically(path, checkpoint_bytes(model, metadata), before_commit=before_commit)


def _open(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a bnlenet checkpoint (not a safetensors file, or truncated): {exc}"
        ) from exc


def _metadata_of(path: Path, handle: Any) -> dict[str, Any]:
    raw = (handle.metadata() or {}).get(_META_KEY)
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without bnlenet metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} has corrupt metadata: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has an unknown checkpoint format {meta.get('format') if isinstance(meta, dict) else None!r}")
    if meta.get("variant") not in VARIANTS:
        raise CheckpointError(f"{path} names an unknown variant {meta.get('variant')!r}")
    classes = meta.get("classes")
    outputs = _outputs(handle)
    if classes is not None and not (isinstance(classes, list) and len(classes) == outputs
                                    and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{path} names classes {str(classes)[:200]}; the network has {outputs} outputs, "
                              "so its metadata names that many (strings)")
    return meta


def _outputs(handle: Any) -> int | None:
    """The classifier's outputs, read from the file's header (None: it has no classifier)."""
    name = f"{CLASSIFIER}.bias"
    if name not in handle.keys():
        return None
    shape = handle.get_slice(name).get_shape()
    return int(shape[0]) if len(shape) == 1 else None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata alone, read from the header without loading tensors (not verified)."""
    path = Path(path)
    with _open(path) as handle:
        return _metadata_of(path, handle)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load and verify a checkpoint; the model comes back in eval mode on the CPU."""
    path = Path(path)
    try:
        with _open(path) as handle:
            meta = _metadata_of(path, handle)
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from exc
    # As many outputs as the last layer has (the metadata's classes name each, checked above).
    model = build_lenet(meta["variant"], min(max(num_classes_of(tensors) or NUM_CLASSES, 2), MAX_CLASSES))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the {meta['variant']} LeNet: "
            f"missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}"
        )
    wrong = [
        f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if tensors[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(f"{path} has tensors of the wrong shape: {', '.join(wrong)}")
    if checksum(tensors, meta) != meta.get("checksum"):
        raise CheckpointError(f"{path} fails its checksum: the file was changed after it was written")
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return Checkpoint(model=model, metadata=meta)


def class_names(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    """The names of the model's classes in output order: its metadata's ``classes`` (checked when the
    checkpoint is read), or Fashion-MNIST's for a checkpoint written before they were stored."""
    return tuple(metadata.get("classes") or CLASS_NAMES)


def final_test_acc(metadata: dict[str, Any]) -> float | None:
    """The stored model's test accuracy from a checkpoint's metadata (also from checkpoints
    written before ``final_test_acc`` existed, which kept it in ``metrics``)."""
    if "final_test_acc" in metadata:
        value = metadata["final_test_acc"]
    else:
        value = (metadata.get("metrics") or {}).get("test_acc")
    return None if value is None else float(value)
