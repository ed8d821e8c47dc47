"""The validation report kept on a dataset, and the refusals: what makes training on it meaningless.

Refused (every one listed): fewer than two classes, an empty split, a class with fewer than
``min_per_class`` training images, labels outside the class list. Warned: broken files skipped,
exact duplicates, images in both train and test, class imbalance, a class with no test images.
Duplicates are judged on the converted 28x28 pixels, what training sees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnlenet.datasets.formats import Parsed, Split
from bnlenet.datasets.limits import IngestLimits

__all__ = ["IMBALANCE_WARNING", "build_report"]

IMBALANCE_WARNING = 10.0  # largest class over smallest (training split) beyond which the report warns


def _digests(images: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in images]


def build_report(parsed: Parsed, train: Split, test: Split, split: dict[str, Any],
                 limits: IngestLimits) -> tuple[dict[str, Any], list[str]]:
    """The report (shape D3 of CONTRACTS, documented in docs/datasets.md) and every refusal found."""
    classes = parsed.classes
    problems = list(parsed.problems)
    warnings = list(parsed.warnings)
    counts = {name: _counts(s.labels, classes) for name, s in (("train", train), ("test", test))}
    if len(classes) < 2:
        problems.append(f"only {len(classes)} class ({', '.join(classes) or 'none'}): training needs at least two")
    for name, s in (("train", train), ("test", test)):
        if len(s.labels) == 0:
            problems.append(f"the {name} split is empty")
    by_service = split.get("source") == "service"  # then the counts are after its split: say what it took
    few = [f"{c!r} ({n}, after the service's split sent {counts['test'][c]} of its {n + counts['test'][c]} to the "
           f"test split, test_fraction {split['test_fraction']})" if by_service else f"{c!r} ({n})"
           for c, n in counts["train"].items() if n < limits.min_per_class]
    if few:
        problems.append(f"classes with fewer than {limits.min_per_class} training images: "
                        f"{', '.join(few[: limits.max_listed])}" + (f" and {len(few) - limits.max_listed} more"
                                                                     if len(few) > limits.max_listed else "")
                        + (": send more images, or a smaller test_fraction" if by_service else ""))
    untested = [c for c, n in counts["test"].items() if n == 0]
    if untested and len(test.labels):
        warnings.append(f"classes with no test images (their accuracy is not measured): {', '.join(untested)}")
    if parsed.skipped:
        warnings.append(f"{len(parsed.skipped)} file(s) skipped (see skipped)")

    train_keys, test_keys = _digests(train.images), _digests(test.images)
    dup_count, dup_examples = 0, list[list[str]]()
    for split_name, s, keys in (("train", train, train_keys), ("test", test, test_keys)):
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k in first:
                dup_count += 1
                if len(dup_examples) < limits.max_listed:
                    dup_examples.append([s.name(split_name, first[k]), s.name(split_name, i)])
            else:
                first[k] = i
    if dup_count:
        warnings.append(f"{dup_count} exact duplicate image(s) within a split")
    in_train = {k: i for i, k in enumerate(train_keys)}
    overlap_count, overlap_examples = 0, list[list[str]]()
    for j, k in enumerate(test_keys):
        if k in in_train:
            overlap_count += 1
            if len(overlap_examples) < limits.max_listed:
                overlap_examples.append([train.name("train", in_train[k]), test.name("test", j)])
    if overlap_count:
        warnings.append(f"{overlap_count} test image(s) also in train: the test accuracy overstates")

    present = [n for n in counts["train"].values() if n > 0]
    ratio = (max(present) / min(present)) if present else 1.0
    if ratio > IMBALANCE_WARNING:
        warnings.append(f"classes are imbalanced: the largest has {ratio:.1f} times the training images of the smallest")
    report = {
        "format": parsed.format,
        "classes": list(classes),
        "counts": counts,
        "split": split,
        "image_sizes": _sorted_counter(parsed.image_sizes),
        "image_modes": _sorted_counter(parsed.image_modes),
        "skipped": parsed.skipped[:1000],
        "duplicates": {"count": dup_count, "examples": dup_examples},
        "train_test_overlap": {"count": overlap_count, "examples": overlap_examples},
        "imbalance": {"max_over_min": round(ratio, 4)},
        "warnings": warnings,
    }
    return report, problems


def _counts(labels: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    valid = labels[(labels >= 0) & (labels < len(classes))]
    per = np.bincount(valid, minlength=len(classes)) if len(classes) else np.zeros(0, np.int64)
    return {c: int(n) for c, n in zip(classes, per, strict=True)}


def _sorted_counter(counter: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))
