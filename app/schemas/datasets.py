"""Data sets as the API shows them: one data set with its validation report, the listing, an alias, a refusal."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DatasetAliasOut", "DatasetList", "DatasetOut", "DatasetRejectedOut"]

_EXAMPLE_REPORT: dict[str, Any] = {
    "format": "zip-folders", "classes": ["cat", "dog"],
    "counts": {"train": {"cat": 80, "dog": 80}, "test": {"cat": 20, "dog": 20}},
    "split": {"source": "service", "test_fraction": 0.2, "seed": 0},
    "image_sizes": {"32x32": 200}, "image_modes": {"RGB": 200}, "skipped": [],
    "duplicates": {"count": 0, "examples": []}, "train_test_overlap": {"count": 0, "examples": []},
    "imbalance": {"max_over_min": 1.0}, "warnings": [],
}


class DatasetOut(BaseModel):
    """A data set a job can train on: its classes, its sizes and the report made when it was uploaded."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "ds-3f2a9c0d1e4b5a67", "aliases": ["pets"], "classes": ["cat", "dog"], "num_classes": 2,
        "train_size": 160, "test_size": 40, "format": "zip-folders", "size_bytes": 157_400,
        "created_at": "2025-01-01T12:00:00Z", "builtin": False, "report": _EXAMPLE_REPORT,
    }]})

    id: str = Field(description="`ds-` and a hash of the images, labels and class names: the same content "
                    "uploaded twice, in any format, is one data set")
    aliases: list[str] = Field(default_factory=list, description="the aliases that point at it")
    classes: list[str] = Field(description="class names in label order: a model trained on it answers with these")
    num_classes: int
    train_size: int = Field(description="training images")
    test_size: int = Field(description="test images")
    format: str | None = Field(description="what was uploaded: zip-folders, zip-split, idx or npz")
    size_bytes: int = Field(description="the stored arrays' size")
    created_at: datetime | None = None
    builtin: bool = Field(False, description="Fashion-MNIST, built in: never stored, never deleted")
    report: dict[str, Any] = Field(default_factory=dict, description="the validation report: images per class "
                                   "and split, sizes and modes seen, files skipped, duplicates, train/test "
                                   "overlap, class imbalance, warnings")


class DatasetList(BaseModel):
    """Every data set: the built-in one first, then the uploaded ones, newest first."""

    data: list[DatasetOut]
    count: int


class DatasetAliasOut(BaseModel):
    alias: str
    id: str = Field(description="the data set it points at")


class DatasetRejectedOut(BaseModel):
    """An upload refused: what makes training on it meaningless, every problem found."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "detail": "the upload cannot be trained on: 2 problems",
        "problems": ["only one class ('cat'): a classifier needs two or more",
                     "the test split is empty"],
    }]})

    detail: str
    problems: list[str] = Field(description="every problem found, one sentence each")
