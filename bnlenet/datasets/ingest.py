"""``ingest``: an uploaded file to a ``PreparedDataset``, or ``DatasetRejected`` listing every problem.

Blocking and CPU-bound (decoding tens of thousands of images): callers run it off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bnlenet.datasets.dataset import PreparedDataset
from bnlenet.datasets.errors import TOO_LARGE, DatasetRejected
from bnlenet.datasets.formats import Split, read_upload
from bnlenet.datasets.limits import IngestLimits
from bnlenet.datasets.report import build_report
from bnlenet.datasets.split import stratified_split

__all__ = ["ingest"]


def ingest(path: Path, filename: str, *, classes: Sequence[str] | None = None, test_fraction: float = 0.2,
           seed: int = 0, limits: IngestLimits | None = None) -> PreparedDataset:
    """Read, convert and check an upload (format from its content, ``filename`` only for messages)."""
    limits = limits or IngestLimits()
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise DatasetRejected([f"the upload is {size} bytes; at most {limits.max_upload_bytes} are accepted"],
                              TOO_LARGE)
    problems = _argument_problems(classes, test_fraction)
    if problems:
        raise DatasetRejected(problems)
    parsed = read_upload(path, filename, None if classes is None else tuple(classes), limits)
    if parsed.test is None:
        train_idx, test_idx = stratified_split(parsed.train.labels, test_fraction, seed)
        train, test = _take(parsed.train, train_idx), _take(parsed.train, test_idx)
        split = {"source": "service", "test_fraction": test_fraction, "seed": seed}
    else:
        train, test = parsed.train, parsed.test
        split = {"source": "upload", "test_fraction": None, "seed": None}
    report, problems = build_report(parsed, train, test, split, limits)
    if problems:
        raise DatasetRejected(problems, report=report)
    return PreparedDataset(train.images, train.labels, test.images, test.labels, parsed.classes, report)


def _argument_problems(classes: Sequence[str] | None, test_fraction: float) -> list[str]:
    out = []
    if not 0.0 < test_fraction < 1.0:
        out.append(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if classes is not None:
        names = list(classes)
        if any(not isinstance(c, str) or not c.strip() for c in names):
            out.append("class names must be non-empty strings")
        dupes = sorted({c for c in names if names.count(c) > 1})
        if dupes:
            out.append(f"class names repeat: {', '.join(map(str, dupes))}")
    return out


def _take(s: Split, idx: np.ndarray) -> Split:
    return Split(s.images[idx], s.labels[idx], None if s.names is None else [s.names[i] for i in idx])
