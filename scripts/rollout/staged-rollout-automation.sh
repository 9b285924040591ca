#!/usr/bin/env bash
# Start a staged rollout (or pick up the one under way, or show the one completed) and follow it
# to the end.
#   scripts/rollout/staged-rollout-automation.sh EXPERIMENT [--reason TEXT]
# Exit code: 0 completed, 3 rolled back, 4 aborted, 5 escalated (a person must act),
# 1 the control API refused or could not be reached.
# ABGATE_CONTROL_URL (default http://127.0.0.1:8092) and ABGATE_CONTROL_TOKEN apply.
set -euo pipefail
cd "$(dirname "$0")/../.."
experiment="${1:?usage: $0 EXPERIMENT [--reason TEXT]}"
shift
reason="started by staged-rollout-automation"
if [[ "${1:-}" == "--reason" ]]; then reason="${2:?--reason needs a value}"; fi
abgate="${ABGATE:-.venv/bin/abgate}"
"$abgate" rollout start "$experiment" --if-needed --reason "$reason"
set +e
"$abgate" rollout status "$experiment" --watch
code=$?
set -e
case "$code" in
  0) echo "rollout of $experiment completed" ;;
  3) echo "rollout of $experiment rolled back" ;;
  4) echo "rollout of $experiment aborted" ;;
  5) echo "rollout of $experiment escalated: approve, resume or abort it" ;;
esac
exit "$code"
