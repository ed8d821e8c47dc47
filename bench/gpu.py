"""The GPU check's measurement: training throughput on CUDA beside the chapter's pipeline.

    python -m bench.gpu --out DIR [--epochs 10] [--rounds 2] [--chapter-epochs 3] [--quick]

Writes ``DIR/gpu_check.json`` (the device, versions, every row, the targets and whether they
were met) and ``DIR/gpu_check.md`` (the same as markdown), and prints the markdown.
``scripts/gpu_check.sh`` runs it after the CUDA tests; ``--allow-cpu`` measures nothing on
CUDA and is how the script's logic is tested on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.data import fashion_mnist
from bench.machine import describe
from bench.run import markdown_table
from bench.train_speed import CHAPTER, GPU_TARGETS, run_cuda

__all__ = ["device_info", "main", "targets"]


def device_info() -> dict[str, Any]:
    """The GPU, its driver, and the torch, CUDA and cuDNN versions (None where there is no GPU)."""
    info: dict[str, Any] = {
        "machine": describe(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": None,
        "driver": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["multiprocessors"] = props.multi_processor_count
        info["memory_gib"] = round(props.total_memory / 2**30, 1)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=True)
            info["driver"] = out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            info["driver"] = "unknown (nvidia-smi did not answer)"
    return info


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: the best engine row's steady rate against the target, and its ratio to the chapter."""
    verdicts = []
    for variant, target in GPU_TARGETS.items():
        engine = [r for r in rows if r["variant"] == variant and r["pipeline"] != CHAPTER
                  and isinstance(r.get("steady ex/s"), float)]
        if not engine:
            verdicts.append({"variant": variant, "target ex/s": target, "best row": "-",
                             "steady ex/s": "not measured", "met": False})
            continue
        best = max(engine, key=lambda r: r["steady ex/s"])
        verdicts.append({"variant": variant, "target ex/s": target, "best row": best["pipeline"],
                         "steady ex/s": best["steady ex/s"], "steady x chapter": best.get("steady x chapter", "-"),
                         "met": best["steady ex/s"] >= target})
    return verdicts


def write_report(args: argparse.Namespace, info: dict[str, Any], training_images: int,
                 rows: list[dict[str, Any]]) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` in ``args.out`` for the rows so far."""
    verdicts = targets(rows)
    report = {"run_at": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "device": info,
              "epochs": args.epochs, "chapter_epochs": args.chapter_epochs, "rounds": args.rounds,
              "training_images": training_images, "rows": rows, "targets": verdicts}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    markdown = (
        f"## Training throughput on CUDA\n\nDevice: {info['gpu'] or 'none'}, driver {info['driver']}, "
        f"torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}. {info['machine']}. "
        f"Run {report['run_at']}; {args.epochs} epochs per engine row, {args.chapter_epochs} for the "
        f"chapter's pipeline, median of {args.rounds} round(s).\n\n"
        f"{markdown_table(rows)}\n\n### Targets (steady examples/sec, batch 256)\n\n{markdown_table(verdicts)}\n"
    )
    (args.out / "gpu_check.md").write_text(markdown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for gpu_check.json and gpu_check.md")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per engine row (default: 10)")
    parser.add_argument("--chapter-epochs", type=int, default=2, help="epochs of the chapter's pipeline (default: 2)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the table shows medians (default: 1)")
    parser.add_argument("--rows", type=int, nargs="+", metavar="N",
                        help="only these engine rows (indices into bench.train_speed.GPU_ENGINE_ROWS)")
    parser.add_argument("--quick", action="store_true", help="8192 training images, 1 epoch, 1 round")
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA, write the report with no rows")
    args = parser.parse_args(argv)

    info = device_info()
    if info["gpu"] is None and not args.allow_cpu:
        print("bench.gpu: no CUDA device here; nothing to measure (--allow-cpu writes an empty report)",
              file=sys.stderr)
        return 2
    data = fashion_mnist(download=False)  # DATA_DIR: scripts/gpu_check.sh sets it to the carried copy
    if args.quick:
        data = replace(data, train_images=data.train_images[:8192], train_labels=data.train_labels[:8192])
        args.epochs, args.chapter_epochs, args.rounds = 1, 1, 1
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    write_report(args, info, len(data.train_images), rows)  # each variant's rows are added as they come,
    if info["gpu"]:                                          # so a run cut short keeps what it measured
        for variant in ("builtin", "scratch"):
            rows.extend(run_cuda(args.epochs, args.rounds, args.chapter_epochs, data, variants=(variant,),
                                 gpu_rows=args.rows))
            write_report(args, info, len(data.train_images), rows)
    print((args.out / "gpu_check.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
