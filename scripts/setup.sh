#!/usr/bin/env bash
# Set up a fresh machine with only Python 3.11: the virtual environment in .venv, the project
# and its dependencies, and Fashion-MNIST where it can be had. Idempotent and quick on re-runs.
#
#   scripts/setup.sh [EXTRAS]      # EXTRAS: pip extras, e.g. "embedded" or "embedded,dev"
#
# Set PYTHON to choose the interpreter, DATA_DIR to point at Fashion-MNIST.
set -euo pipefail

cd "$(dirname "$0")/.."
extras=${1:-embedded}
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
        echo "setup: Python 3.11 is needed (python3.11 not found); set PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    echo "setup: creating $VENV with $python"
    "$python" -m venv "$VENV"
fi

# The stamp records what was installed: pyproject.toml's hash and the extras. A re-run skips
# the install when the hash is the same and the extras installed cover the ones asked for, so
# serve.sh (embedded) and test.sh (embedded,dev) never undo each other. Otherwise it installs
# the union of the extras asked for and those already there.
hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
stamp_hash="" stamp_extras=""  # a fresh checkout has no stamp
{ read -r stamp_hash stamp_extras < "$STAMP"; } 2>/dev/null || true
union=$(printf '%s\n' ${extras//,/ } ${stamp_extras//,/ } | sort -u | paste -sd, -)
if [ "${stamp_hash:-}" = "$hash" ] && [ "$union" = "$(printf '%s\n' ${stamp_extras//,/ } | sort -u | paste -sd, -)" ]; then
    : # everything asked for is installed
else
    echo "setup: installing bnlenet[$union] into $VENV (torch is large; this takes a while once)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$union]"
    echo "$hash $union" > "$STAMP"
fi

# Fashion-MNIST: models/data.py finds it in DATA_DIR or the usual places; Debian and Ubuntu
# package it. Without it, training downloads it with torchvision (needs network).
has_data='import sys; from bnlenet.settings import Settings; from models.data import find_data_dir; sys.exit(find_data_dir(Settings().DATA_DIR) is None)'
if ! "$VENV/bin/python" -c "$has_data"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Fashion-MNIST from the distribution (dataset-fashion-mnist)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
            || echo "setup: apt-get could not install dataset-fashion-mnist" >&2
    fi
    if ! "$VENV/bin/python" -c "$has_data"; then
        echo "setup: Fashion-MNIST not found. Set DATA_DIR to a directory holding the four IDX files," >&2
        echo "  or install Debian's dataset-fashion-mnist; otherwise training downloads it (needs network)." >&2
    fi
fi
