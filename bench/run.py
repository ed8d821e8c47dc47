"""Run every benchmark section and print one markdown table per section.

    python -m bench            # everything, full size
    python -m bench --quick    # a short smoke run of every section
    python -m bench --only train_speed quality

A section is a module in ``bench/`` listed in ``SECTIONS`` that exposes ``TITLE: str`` and
``run(quick: bool) -> list[dict] | str``: rows of a table (the dicts' keys are the columns),
or ready-made text. Adding a benchmark is writing such a module and adding its name here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bench.machine import describe

SECTIONS: list[str] = [
    "train_speed",
    "process_speed",
    "service_speed",
    "cpu_threads",
    "step_options",
    "quality",
    "predict",
    "predict_batch",
    "events",
    "queueing",
    "memory",
    "export",
    "jobstore",
    "object_store",
    "dataset_fetch",
    "model_news",
    "train_state",
    "workers",
    "durability",
    "dataset_validation",
    "sweep",
]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of dicts as a markdown table; the columns are the keys in first-seen order."""
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def run_section(name: str, quick: bool) -> str:
    """Run one section; its markdown (heading, machine, table, timing)."""
    module = importlib.import_module(f"bench.{name}")
    started = time.perf_counter()
    result = module.run(quick)
    seconds = time.perf_counter() - started
    body = result if isinstance(result, str) else markdown_table(result)
    notes = getattr(module, "NOTES", "")
    return (
        f"## {module.TITLE}{' (quick)' if quick else ''}\n\n"
        f"Machine: {describe()}. Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"took {seconds:.0f} s.\n\n{body}\n" + (f"\n{notes}\n" if notes else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run of every section")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run only these sections ({', '.join(SECTIONS)})")
    parser.add_argument("--out", help="also write the markdown to this file")
    args = parser.parse_args(argv)
    parts = []
    for name in args.only or SECTIONS:
        text = run_section(name, args.quick)
        print(text, flush=True)
        parts.append(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
