"""What bounds training speed on a GPU: kernel times per step, and candidate changes timed side by side.

    python -m bench.gpu_profile --out DIR [--steps 300]

For each variant: the compiled step without a CUDA graph under ``torch.profiler`` (every kernel
of one step, its count and device time, against the step's wall time), then the steady rate
of the captured step for candidate configurations, each timed with CUDA events over the same
number of replays. Writes ``DIR/gpu_profile.json`` and ``DIR/gpu_profile_<variant>.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from bench.data import fashion_mnist
from models.devices import cuda_settings
from models.lenet import build_lenet
from models.stepper import TrainSteps, compiled_forward_loss, sgd
from models.training import TrainConfig

# (label, TrainConfig overrides, channels_last, cuDNN benchmark limit: 0 tries every algorithm)
CANDIDATES: list[tuple[str, dict[str, Any], bool, int]] = [
    ("compile, graph, fp32 matmuls", {"compile": True, "tf32": False}, False, 10),
    ("compile, graph, TF32 matmuls (the worker's default)", {"compile": True}, False, 10),
    ("+ cuDNN tries every algorithm", {"compile": True}, False, 0),
    ("+ channels_last", {"compile": True}, True, 10),
    ("+ bf16 autocast", {"compile": True, "bf16": True}, False, 10),
    ("eager, graph", {}, False, 10),
]


def _steps(variant: str, overrides: dict[str, Any], channels_last: bool, images: torch.Tensor,
           labels: torch.Tensor, device: torch.device) -> TrainSteps:
    config = TrainConfig(variant=variant, device=str(device), **overrides)
    torch.manual_seed(0)
    model = build_lenet(variant).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return TrainSteps(model, sgd(model, config.lr, device), images, labels, device, batch_size=config.batch_size,
                      bf16=config.bf16, compile=config.compile, cuda_graph=config.cuda_graph)


def _rate(steps: TrainSteps, batches: list[torch.Tensor], count: int, device: torch.device) -> float:
    """Steps per second over ``count`` back-to-back steps, timed on the device."""
    for idx in batches[:20]:
        steps(idx)
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    started = time.perf_counter()
    start.record()
    for i in range(count):
        steps(batches[i % len(batches)])
    end.record()
    host_seconds = time.perf_counter() - started  # time to issue the steps (the host's share)
    torch.cuda.synchronize(device)
    device_seconds = start.elapsed_time(end) / 1000
    steps.host_us_per_step = host_seconds / count * 1e6  # type: ignore[attr-defined]
    return count / device_seconds


def profile_variant(variant: str, images: torch.Tensor, labels: torch.Tensor, batches: list[torch.Tensor],
                    device: torch.device, out: Path) -> dict[str, Any]:
    """Every kernel of the compiled step (launched one by one, no graph), per step."""
    steps = _steps(variant, {"compile": True, "cuda_graph": False}, False, images, labels, device)
    steps.forward_full = compiled_forward_loss(None)  # inductor's kernels, launched one by one
    for idx in batches[:20]:
        steps(idx)
    torch.cuda.synchronize(device)
    profiled = 20
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        for idx in batches[:profiled]:
            steps(idx)
        torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - started) / profiled * 1e6
    trace = Path(tempfile.mkdtemp()) / f"trace_{variant}.json"
    prof.export_chrome_trace(str(trace))
    kernels: dict[str, list[float]] = {}
    for event in json.loads(trace.read_text()).get("traceEvents", []):
        if event.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in event:
            kernels.setdefault(event["name"], []).append(float(event["dur"]))  # microseconds
    rows = sorted(((name, len(times) / profiled, sum(times) / profiled) for name, times in kernels.items()),
                  key=lambda r: -r[2])
    busy = sum(r[2] for r in rows)
    launches = sum(r[1] for r in rows)
    lines = [f"{variant}: {launches:.0f} kernels per step, {busy:.1f} us of kernel time per step, "
             f"{wall_us:.1f} us of wall time per step launched one by one (profiler on)", "",
             f"{'us/step':>9} {'per step':>8}  kernel"]
    lines += [f"{t:9.1f} {c:8.1f}  {name[:150]}" for name, c, t in rows]
    try:
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=40)
    except Exception as exc:  # the table is a convenience; the kernel list above is the measurement
        table = f"(no operator table: {exc})"
    (out / f"gpu_profile_{variant}.txt").write_text("\n".join(lines) + "\n\n" + table)
    return {"kernels_per_step": launches, "kernel_us_per_step": busy, "wall_us_per_step_profiled": wall_us,
            "top_kernels": [{"name": n[:200], "per_step": c, "us_per_step": t} for n, c, t in rows[:15]]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per candidate (default: 300)")
    parser.add_argument("--variants", nargs="+", default=["builtin", "scratch"], choices=["builtin", "scratch"])
    parser.add_argument("--no-kernels", action="store_true", help="time the candidates only, skip the kernel list")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.gpu_profile: needs CUDA", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch._dynamo.config.recompile_limit = 64  # every candidate is another graph of the same function
    args.out.mkdir(parents=True, exist_ok=True)
    data = fashion_mnist(download=False)
    images, labels = data.train_images.to(device), data.train_labels.to(device)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).to(device)
    batches = [order[i:i + 256] for i in range(0, len(order) - 255, 256)]
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "variants": {}}
    with cuda_settings(device, tf32=False):
        for variant in args.variants:
            entry: dict[str, Any] = {} if args.no_kernels else {
                "profile": profile_variant(variant, images, labels, batches, device, args.out)}
            rates = []
            for label, overrides, channels_last, limit in CANDIDATES:
                torch.backends.cuda.matmul.allow_tf32 = overrides.get("tf32", True)
                torch.backends.cudnn.benchmark_limit = limit
                try:
                    steps = _steps(variant, overrides, channels_last, images, labels, device)
                    per_sec = _rate(steps, batches, args.steps, device)
                    rates.append({"candidate": label, "examples/s": per_sec * 256, "us/step": 1e6 / per_sec,
                                  "host us/step": steps.host_us_per_step,  # type: ignore[attr-defined]
                                  "graph": steps.graph is not None})
                except Exception as exc:  # report and go on: one candidate must not cost the others
                    rates.append({"candidate": label, "error": f"{type(exc).__name__}: {exc}"[:300]})
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = False
                    torch.backends.cudnn.benchmark_limit = 10
                print(variant, rates[-1], flush=True)
            entry["candidates"] = rates
            report["variants"][variant] = entry
            (args.out / "gpu_profile.json").write_text(json.dumps(report, indent=2) + "\n")
            if args.no_kernels:
                continue
            p = entry["profile"]
            print(f"{variant}: {p['kernels_per_step']:.0f} kernels/step, {p['kernel_us_per_step']:.0f} us kernel "
                  f"time/step; top: " + "; ".join(f"{k['name'][:60]} {k['us_per_step']:.1f}us"
                                                 for k in p["top_kernels"][:8]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
