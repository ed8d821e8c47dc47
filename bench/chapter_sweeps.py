"""The chapter's questions as sweeps (``sweeps/*.json``), run through the engine directly, with plots.

    python -m bench.chapter_sweeps run [variants learning-rates batch-sizes] [--epochs N]
    python -m bench.chapter_sweeps plot

``run`` expands each sweep's grid (the S1 request shape the sweeps API accepts), trains every
trial on Fashion-MNIST with ``train`` (or ``train_packed`` where packing pays on the device:
``models.packed.packing_pays``), and writes ``docs/chapter-sweeps/<sweep>-<epochs>ep.json`` after each
trial, so a stopped run keeps what it finished. ``plot`` turns those files into SVG charts
next to them (a small SVG writer: no plotting library is a dependency). The write-up is
``docs/chapter-sweeps.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.threads import short_openmp_waits

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"
OUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "chapter-sweeps"
SWEEPS = ("variants", "learning-rates", "batch-sizes")


def load_sweep(name: str) -> dict[str, Any]:
    """One sweep definition from ``sweeps/<name>.json``."""
    sweep: dict[str, Any] = json.loads((SWEEPS_DIR / f"{name}.json").read_text())
    return sweep


def expand_grid(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """A grid sweep's trials: each combination of the parameters' values, in order, as TrainConfig fields."""
    if sweep.get("method", "grid") != "grid":
        raise ValueError("only grid sweeps are expanded here")
    names = list(sweep["parameters"])
    values = [sweep["parameters"][n]["values"] for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def setting_of(params: dict[str, Any]) -> str:
    """A trial's setting: its parameters without the seed (what the sweeps API calls ``setting``)."""
    return ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed") or "default"


def run_sweep(name: str, epochs: int | None, data: Any, threads: int) -> Path:
    """Train every trial of one sweep; the results file, rewritten after each trial."""
    from models.packed import pack_key, packing_pays, train_packed
    from models.training import TrainConfig, TrainingDiverged, TrainResult, train

    sweep = load_sweep(name)
    base = dict(sweep["base"])
    if epochs is not None:
        base["epochs"] = epochs
    trials = expand_grid(sweep)
    configs = [TrainConfig(**{**base, **params, "device": "cpu", "threads": threads}) for params in trials]
    out = OUT_DIR / f"{name}-{base['epochs']}ep.json"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"sweep": sweep, "epochs": base["epochs"], "threads": threads, "trials": []}

    def save() -> None:
        out.write_text(json.dumps(record, indent=1) + "\n")

    groups: dict[tuple[object, ...], list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(pack_key(config), []).append(i)
    for indices in groups.values():
        group = [configs[i] for i in indices]
        started = time.perf_counter()
        if len(group) > 1 and packing_pays("cpu", group[0].batch_size):
            results: list[TrainResult | TrainingDiverged] = list(train_packed(group, data))
            how = f"packed ({len(group)})"
            seconds = (time.perf_counter() - started) / len(group)
            for i, result in zip(indices, results, strict=True):
                record["trials"].append(_entry(name, trials[i], result, how, seconds))
            save()
            continue
        for i, config in zip(indices, group, strict=True):  # separate runs, each saved as it ends
            started = time.perf_counter()
            try:
                solo: TrainResult | TrainingDiverged = train(config, data)
            except TrainingDiverged as exc:
                solo = exc
            record["trials"].append(_entry(name, trials[i], solo, "separate", time.perf_counter() - started))
            save()
    return out


def _entry(sweep: str, params: dict[str, Any], result: Any, how: str, seconds: float) -> dict[str, Any]:
    """One trial's record: its parameters, setting, per-epoch history and the stored model's accuracy."""
    entry: dict[str, Any] = {"params": params, "setting": setting_of(params), "how": how, "seconds": seconds}
    if hasattr(result, "history"):
        entry.update(history=[asdict(m) for m in result.history], final_test_acc=result.final_test_acc)
    else:
        entry.update(diverged=str(result), history=[], final_test_acc=None)
    print(f"{sweep}: {entry['setting']} seed={params.get('seed', '-')} final {entry['final_test_acc']} "
          f"({how}, {seconds:.0f} s)", flush=True)
    return entry


def settings_summary(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: trials, mean, standard deviation, min and max of the final test accuracy (diverged: none)."""
    by_setting: dict[str, list[float]] = {}
    diverged: dict[str, int] = {}
    for t in trials:
        by_setting.setdefault(t["setting"], [])
        if t["final_test_acc"] is None:
            diverged[t["setting"]] = diverged.get(t["setting"], 0) + 1
        else:
            by_setting[t["setting"]].append(t["final_test_acc"])
    rows = []
    for setting, accs in by_setting.items():
        rows.append({"setting": setting, "trials": len(accs) + diverged.get(setting, 0),
                     "diverged": diverged.get(setting, 0),
                     "mean": statistics.fmean(accs) if accs else math.nan,
                     "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "min": min(accs, default=math.nan), "max": max(accs, default=math.nan)})
    return rows


# --- a small SVG writer: lines per trial and error bars per setting ---------------------------------

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>\n'
            + "\n".join(body) + "\n</svg>\n")


def _axes(x0: int, y0: int, w: int, h: int, ylo: float, yhi: float, ylabel: str, xlabel: str) -> list[str]:
    body = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#888"/>']
    for i in range(6):
        v = ylo + (yhi - ylo) * i / 5
        y = y0 + h - h * i / 5
        body.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#eee"/>')
        body.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.3f}</text>')
    body.append(f'<text x="14" y="{y0 + h / 2}" transform="rotate(-90 14 {y0 + h / 2})" '
                f'text-anchor="middle">{ylabel}</text>')
    body.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 36}" text-anchor="middle">{xlabel}</text>')
    return body


def curves_svg(record: dict[str, Any]) -> str:
    """Per-epoch test accuracy (moving-average BN) of every trial, coloured by setting."""
    trials = [t for t in record["trials"] if t["history"]]
    settings = list(dict.fromkeys(t["setting"] for t in record["trials"]))
    accs = [m["test_acc"] for t in trials for m in t["history"]] + [t["final_test_acc"] for t in trials]
    ylo, yhi = (min(accs), max(accs)) if accs else (0.0, 1.0)
    ylo, yhi = math.floor(ylo * 50) / 50, math.ceil(yhi * 50) / 50 + 1e-9
    epochs = record["epochs"]
    x0, y0, w, h = 70, 30, 520, 300
    body = _axes(x0, y0, w, h, ylo, yhi, "test accuracy", "epoch (last point: the stored model, precise BN)")
    slots = epochs + 1  # the epochs, then the final model

    def xy(i: float, acc: float) -> tuple[float, float]:
        return x0 + w * (i + 0.5) / slots, y0 + h - h * (acc - ylo) / (yhi - ylo)

    for e in range(epochs):
        x, _ = xy(e, ylo)
        body.append(f'<text x="{x:.1f}" y="{y0 + h + 16}" text-anchor="middle">{e + 1}</text>')
    x, _ = xy(epochs, ylo)
    body.append(f'<text x="{x:.1f}" y="{y0 + h + 16}" text-anchor="middle">final</text>')
    for t in trials:
        colour = COLOURS[settings.index(t["setting"]) % len(COLOURS)]
        points = [xy(i, m["test_acc"]) for i, m in enumerate(t["history"])]
        points.append(xy(epochs, t["final_test_acc"]))
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5" opacity="0.8"/>')
    for j, setting in enumerate(settings):
        colour = COLOURS[j % len(COLOURS)]
        n_div = sum(1 for t in record["trials"] if t["setting"] == setting and not t["history"])
        label = setting + (f" ({n_div} diverged)" if n_div else "")
        body.append(f'<rect x="{x0 + w + 14}" y="{y0 + 6 + 18 * j}" width="12" height="12" fill="{colour}"/>')
        body.append(f'<text x="{x0 + w + 32}" y="{y0 + 16 + 18 * j}">{label}</text>')
    return _svg(x0 + w + 230, y0 + h + 50, body, record["sweep"]["name"] + ": per-epoch test accuracy")


def spread_svg(record: dict[str, Any]) -> str:
    """Per setting: the mean final test accuracy with min-max bars and each trial as a dot."""
    rows = [r for r in settings_summary(record["trials"]) if not math.isnan(r["mean"])]
    finals = [t["final_test_acc"] for t in record["trials"] if t["final_test_acc"] is not None]
    ylo, yhi = (min(finals), max(finals)) if finals else (0.0, 1.0)
    ylo, yhi = math.floor(ylo * 100) / 100, math.ceil(yhi * 100) / 100 + 1e-9
    x0, y0, w, h = 70, 30, max(160, 90 * len(rows)), 260
    body = _axes(x0, y0, w, h, ylo, yhi, "final test accuracy", "setting (mean, min-max bar, each seed a dot)")

    def y(acc: float) -> float:
        return y0 + h - h * (acc - ylo) / (yhi - ylo)

    for j, r in enumerate(rows):
        x = x0 + w * (j + 0.5) / len(rows)
        colour = COLOURS[j % len(COLOURS)]
        body.append(f'<line x1="{x:.1f}" y1="{y(r["min"]):.1f}" x2="{x:.1f}" y2="{y(r["max"]):.1f}" '
                    f'stroke="{colour}" stroke-width="2"/>')
        body.append(f'<rect x="{x - 14:.1f}" y="{y(r["mean"]) - 1.5:.1f}" width="28" height="3" fill="{colour}"/>')
        for t in record["trials"]:
            if t["setting"] == r["setting"] and t["final_test_acc"] is not None:
                body.append(f'<circle cx="{x + 20:.1f}" cy="{y(t["final_test_acc"]):.1f}" r="2.5" fill="{colour}"/>')
        body.append(f'<text x="{x:.1f}" y="{y0 + h + 16}" text-anchor="middle">{r["setting"]}</text>')
    return _svg(x0 + w + 30, y0 + h + 50, body, record["sweep"]["name"] + ": the stored model across seeds")


def plot() -> list[Path]:
    """SVG charts and a summary table for every results file in ``docs/chapter-sweeps/``."""
    written = []
    for path in sorted(OUT_DIR.glob("*.json")):
        record = json.loads(path.read_text())
        for suffix, svg in (("curves", curves_svg(record)), ("spread", spread_svg(record))):
            target = path.with_name(f"{path.stem}-{suffix}.svg")
            target.write_text(svg)
            written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chapter_sweeps", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "plot"])
    parser.add_argument("sweeps", nargs="*", help=f"which sweeps to run ({', '.join(SWEEPS)}; default all)")
    parser.add_argument("--epochs", type=int, help="override the sweeps' epochs (a shorter run)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per run (default 1)")
    parser.add_argument("--data-dir", default=None, help="where Fashion-MNIST's IDX files are")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sweeps if s not in SWEEPS]
    if unknown:
        parser.error(f"unknown sweeps {unknown}; choose from {', '.join(SWEEPS)}")
    if args.command == "plot":
        for p in plot():
            print(p)
        return 0
    short_openmp_waits()
    from models.data import load_fashion_mnist

    data = load_fashion_mnist(args.data_dir, download=False)
    for name in args.sweeps or SWEEPS:
        print(run_sweep(name, args.epochs, data, args.threads), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
