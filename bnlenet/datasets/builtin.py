"""Fashion-MNIST as the built-in data set: its id, its alias and what ``GET /datasets`` shows of it.

It is never uploaded or stored: workers read the IDX files from ``DATA_DIR`` (``models.data``)
as they always did, with the decoded cache that keeps a job's start fast, and a job that names
no data set trains on it. What the listing shows (the id, sizes, the validation report) was
computed once from the real files by ``scripts/builtin_dataset.py`` and kept beside this module;
a test recomputes it (``tests/bnlenet/test_builtin_dataset.py``), so the id is the one an upload
of the same images, labels and class names gets.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["BUILTIN_ALIAS", "BUILTIN_ID", "BUILTIN_INFO_FILE", "builtin_info"]

BUILTIN_ALIAS = "fashion-mnist"  # TrainConfig.dataset's default
BUILTIN_INFO_FILE = Path(__file__).with_name("fashion_mnist.json")


@lru_cache(maxsize=1)
def _stored() -> dict[str, Any]:
    info = json.loads(BUILTIN_INFO_FILE.read_text())
    assert isinstance(info, dict)
    return info


def builtin_info() -> dict[str, Any]:
    """The built-in data set as ``GET /datasets`` shows it (without ``aliases``, which the store adds)."""
    return dict(_stored())


BUILTIN_ID: str = _stored()["id"]
