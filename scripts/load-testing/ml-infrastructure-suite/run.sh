#!/usr/bin/env bash
# The load test at every traffic level: 0% (control takes everything, as after a rollback),
# 25, 50, 75 and 100%; writes a markdown table (default reports/load-test-suite.md).
#   scripts/load-testing/ml-infrastructure-suite/run.sh [--duration 300s]
#       [--requests-per-second 100] [--p95-max 100ms] [--output FILE] [-- more load-test args]
# Exit 0 when every level passed, 2 otherwise.
set -euo pipefail
cd "$(dirname "$0")/../../.."
duration=300s rate=100 p95=100ms output=reports/load-test-suite.md
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --requests-per-second) rate="$2"; shift 2 ;;
    --p95-max) p95="$2"; shift 2 ;;
    --output) output="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown option $1" >&2; exit 1 ;;
  esac
done
mkdir -p "$(dirname "$output")"
{
  echo "# Load test suite ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "${rate} requests/s for ${duration} per level, p95 limit ${p95}."
  echo
  echo "| ML share | result | answers | p50 ms | p95 ms | p99 ms | failed | arms |"
  echo "|---:|---|---:|---:|---:|---:|---:|---|"
} > "$output"
status=0
for level in 0 25 50 75 100; do
  set +e
  line=$(scripts/load-test.sh --target-percentage "$level" --duration "$duration" \
         --requests-per-second "$rate" --p95-max "$p95" --json "${extra[@]}")
  code=$?
  set -e
  if [[ $code -eq 1 ]]; then echo "load test at ${level}% could not run" >&2; exit 1; fi
  [[ $code -ne 0 ]] && status=2
  python3 - "$level" "$line" >> "$output" <<'PY'
import json, sys
level, data = sys.argv[1], json.loads(sys.argv[2])
lat = data["latency_ms"]
print(f"| {level}% | {'passed' if data['passed'] else '**failed**'} | {data['answered']:,} | "
      f"{lat['p50']} | {lat['p95']} | {lat['p99']} | {data['failed_requests']} | "
      f"{', '.join(f'{k}: {v}' for k, v in data['arms'].items())} |")
PY
  echo "level ${level}%: $( [[ $code -eq 0 ]] && echo passed || echo failed )"
done
echo "wrote $output"
exit $status
