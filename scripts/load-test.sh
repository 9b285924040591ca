#!/usr/bin/env bash
# An open-loop load test at one traffic level (see `abgate load-test --help`):
#   scripts/load-test.sh --target-percentage 50 --duration 300s --requests-per-second 100
# also --proxy URL --control URL --path P --users N --p95-max 100ms --json --keep
# Exit 0 passed (p95 within --p95-max, no failed request), 2 failed, 1 could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${ABGATE:-.venv/bin/abgate}" load-test "$@"
