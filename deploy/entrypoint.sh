#!/bin/sh
# The container's entry point: with PROMETHEUS_MULTIPROC_DIR set (the API service), make that
# directory and empty it before the API processes start, so that /metrics adds up this run's
# processes only; then run the command.
set -eu
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi
exec "$@"
