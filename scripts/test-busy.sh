#!/usr/bin/env bash
# The suite with both cores kept busy: `stress-ng --cpu N` (N = the cores) runs beside pytest
# for the whole run, so a test that passes only on a quiet machine fails here. RUNS=3 repeats
# the suite until it has passed that many times in a row (stopping at the first failure).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-1}"
cores="$(nproc)"

if ! command -v stress-ng >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test-busy: installing stress-ng"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stress-ng \
            >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends stress-ng >/dev/null; }
    else
        echo "test-busy: stress-ng is missing and cannot be installed here" >&2
        exit 1
    fi
fi

stress-ng --cpu "$cores" --cpu-method matrixprod --timeout 2h --quiet &
hog=$!
trap 'kill "$hog" 2>/dev/null; wait "$hog" 2>/dev/null || true' EXIT

for run in $(seq 1 "$runs"); do
    echo "test-busy: run $run of $runs, $cores CPU hogs beside the suite (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    start=$(date +%s)
    .venv/bin/pytest --durations=20 -p no:cacheprovider "$@"
    echo "test-busy: run $run passed in $(( $(date +%s) - start )) s"
done
