"""Writing a file so that readers see the old one or the whole new one, never a part."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: str | os.PathLike[str], payload: bytes, *,
                     before_commit: Callable[[], None] | None = None) -> Path:
    """Write ``payload`` to ``path`` so that readers see the old file or the whole new one; returns the path.

    ``before_commit`` runs after the bytes are on disk and just before the rename: raising
    there leaves the old file (or none) in place, so a writer can check its right to publish
    as late as possible.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temporary file in the same directory, then rename: never a partial write under the
    # final name. The leading dot keeps it out of listings.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if before_commit is not None:
            before_commit()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
