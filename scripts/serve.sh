#!/usr/bin/env bash
# Set up and start the whole local stack (Redis, a Celery worker, the API on :8000) on a machine
# with only Python 3.11: no Docker, no Redis needed. Ctrl-C stops everything.
#
#   scripts/serve.sh [--host H] [--port P] [--workers N]     # arguments go to `bnlenet up`
#
# Re-runs are quick: pip runs again only when pyproject.toml changes. Set PYTHON to choose the
# interpreter, DATA_DIR to point at Fashion-MNIST, REDIS_URL to use a Redis you already run.
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/setup.sh embedded
exec .venv/bin/bnlenet up "$@"
