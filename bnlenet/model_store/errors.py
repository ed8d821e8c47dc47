"""The model store's exceptions, and the one place where storage errors become them.

    LookupError
      UnknownModel            no model or alias with this name (including names that could never be one)
      NoModelYet              no trained model exists at all
    RuntimeError
      ModelUnusable           the checkpoint exists but cannot be trusted or loaded (``reason`` says why)
      AliasConflict           an alias change that would make a name ambiguous or leave an alias dangling
      ObjectStoreUnavailable  the storage cannot be reached (``bnlenet.checkpoint_storage``)

``fetch`` and ``read`` are the only code that reads a checkpoint out of a storage: a file that
is gone is ``UnknownModel``, one that does not verify is ``ModelUnusable``, with the server's
path replaced by the checkpoint's name so that no answer shows where files live.
"""

from __future__ import annotations

import re
from pathlib import Path

from bnlenet.checkpoint_storage import SUFFIX, CheckpointStorage, ObjectStoreUnavailable
from models.checkpoint import MODEL_ID, Checkpoint, CheckpointError, load_checkpoint

__all__ = [
    "MODEL_ID_PATTERN",
    "AliasConflict",
    "ModelUnusable",
    "NoModelYet",
    "ObjectStoreUnavailable",
    "UnknownModel",
    "check_name",
    "fetch",
    "read",
    "valid_model_id",
]

MODEL_ID_PATTERN = f"^{MODEL_ID}$"
_MODEL_ID = re.compile(MODEL_ID_PATTERN)


class UnknownModel(LookupError):
    """No model or alias with this name (including names that could never be one)."""


class NoModelYet(LookupError):
    """No trained model exists at all."""


class ModelUnusable(RuntimeError):
    """The model's checkpoint exists but cannot be trusted or loaded."""

    def __init__(self, model_id: str, reason: str) -> None:
        super().__init__(f"model {model_id!r} cannot be used: {reason}")
        self.model_id, self.reason = model_id, reason


class AliasConflict(RuntimeError):
    """An alias change that would make a name ambiguous or leave an alias dangling."""


def valid_model_id(model_id: str) -> bool:
    return bool(_MODEL_ID.fullmatch(model_id))


def check_name(name: str, what: str = "model") -> str:
    """``name`` if it could name a model (or an alias); UnknownModel saying the rule otherwise."""
    if not valid_model_id(name):
        raise UnknownModel(f"no {what} named {name!r} ({what} names are 1-64 letters, digits, '-' or '_', "
                           "starting with a letter or digit)")
    return name


def fetch(storage: CheckpointStorage, model_id: str, version: str | None = None) -> tuple[Path, str]:
    """A local file with the checkpoint's bytes and their version (``version``'s cached copy when given)."""
    try:
        return storage.fetch(model_id, version)
    except FileNotFoundError:
        raise UnknownModel(f"no model with id {model_id!r}") from None


def read(path: Path, model_id: str) -> Checkpoint:
    """The checkpoint in ``path``, verified (structure and checksum); ModelUnusable saying why not."""
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        raise ModelUnusable(model_id, str(exc).replace(str(path), f"{model_id}{SUFFIX}")) from exc
