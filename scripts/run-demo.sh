#!/usr/bin/env bash
# `make run`: the demo agents and abgate on config/abgate.yaml, all stopped together by Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

$BIN/python scripts/demo_agent.py --kind deterministic --port 9001 & pids+=($!)
$BIN/python scripts/demo_agent.py --kind ml --port 9002 & pids+=($!)
$BIN/abgate run --config config/abgate.yaml & pids+=($!)

for _ in $(seq 50); do
    curl -fs http://127.0.0.1:8092/health >/dev/null 2>&1 && break
    sleep 0.1
done
cat <<'MSG'

abgate demo is up:
  proxy        http://127.0.0.1:8080   (deterministic agent :9001, ML agent :9002, 10% to ML)
  control API  http://127.0.0.1:8092   (/api/flags, /metrics, /health)

Try:
  curl -s -H 'X-User-Id: alice' -X POST http://127.0.0.1:8080/api/agent/credit/decide -i
  curl -s -X POST http://127.0.0.1:8092/api/flags/ml-agent-rollout -d '{"percentage": 50}'
  curl -s http://127.0.0.1:8092/metrics | grep abgate_requests_total
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
