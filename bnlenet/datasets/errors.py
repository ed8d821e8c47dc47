"""Why an upload is refused: ``DatasetRejected``, carrying every problem found and the HTTP status it maps to.

    DatasetRejected(ValueError)    .problems: list[str], .status: 413 | 415 | 422, .report: dict | None
        413  too large: the upload, its uncompressed size, its compression ratio, its file count
        415  not a format this service reads
        422  readable, but hostile or meaningless to train on (paths, symlinks, nested archives,
             non-image files, huge images, counts that disagree, NaN, one class, an empty split...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["TOO_LARGE", "UNPROCESSABLE", "UNSUPPORTED", "DatasetRejected"]

TOO_LARGE = 413
UNSUPPORTED = 415
UNPROCESSABLE = 422


class DatasetRejected(ValueError):
    """An upload refused, with every problem found (each a sentence naming the file and the rule)."""

    def __init__(self, problems: Sequence[str], status: int = UNPROCESSABLE, report: dict[str, Any] | None = None):
        self.problems = list(problems) or ["the upload was refused"]
        self.status = status
        self.report = report  # the validation report, when the upload got far enough to have one
        super().__init__("; ".join(self.problems))
