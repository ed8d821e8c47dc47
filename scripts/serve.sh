#!/usr/bin/env bash
# Set up and start the whole local stack (Redis, a Celery worker, the API on :8000) on a machine
# with only Python 3.11: no Docker, no Redis needed. Ctrl-C stops everything.
#
#   scripts/serve.sh [--host H] [--port P]      # arguments go to `bnlenet up`
#
# Re-runs are quick: pip runs again only when pyproject.toml changes. Set PYTHON to choose the
# interpreter, DATA_DIR to point at Fashion-MNIST, REDIS_URL to use a Redis you already run.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.bnlenet-installed"

python=${PYTHON:-}
if [ -z "$python" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            python=$candidate
            break
        fi
    done
fi

if [ ! -x "$VENV/bin/python" ]; then
    if [ -z "$python" ]; then
        echo "serve.sh: Python 3.11 is needed (python3.11 not found); set PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    echo "serve.sh: creating $VENV with $python"
    "$python" -m venv "$VENV"
fi

# The stamp records what was installed; a changed pyproject.toml installs again.
want="$(sha256sum pyproject.toml | cut -d' ' -f1) embedded"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    echo "serve.sh: installing bnlenet and its dependencies into $VENV (torch is large; this takes a while once)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[embedded]'
    echo "$want" > "$STAMP"
fi

# The places models/data.py looks, in its order.
has_fashion_mnist() {
    local root dir
    for root in ${DATA_DIR:+"$DATA_DIR"} /usr/share/datasets/fashion-mnist; do
        for dir in "$root" "$root/FashionMNIST/raw" "$root/fashion-mnist"; do
            if [ -e "$dir/train-images-idx3-ubyte.gz" ] || [ -e "$dir/train-images-idx3-ubyte" ]; then
                return 0
            fi
        done
    done
    return 1
}

if ! has_fashion_mnist; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "serve.sh: installing Fashion-MNIST from the distribution (dataset-fashion-mnist)"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; then
            apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null \
                || echo "serve.sh: apt-get could not install dataset-fashion-mnist" >&2
        fi
    fi
    if ! has_fashion_mnist; then
        echo "serve.sh: Fashion-MNIST not found. Either set DATA_DIR to a directory holding the four IDX files," >&2
        echo "  or install Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist);" >&2
        echo "  otherwise the first training job downloads it with torchvision (needs network)." >&2
    fi
fi

exec "$VENV/bin/bnlenet" up "$@"
