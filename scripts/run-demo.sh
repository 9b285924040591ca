#!/usr/bin/env bash
# `make run`: the demo agents and abgate on config/abgate.yaml. Ctrl-C stops all three.
# An agent that dies does not take the stack down: abgate keeps serving (the ML agent's
# traffic falls back to the deterministic one) and `scripts/demo-agent.sh start ml` brings
# it back.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
# Defaults match config/abgate.yaml. Other ports: DEMO_PROXY_PORT, DEMO_CONTROL_PORT,
# DEMO_DETERMINISTIC_PORT, DEMO_ML_PORT (an override file on config/abgate.yaml is written
# for them), or a config of one's own in DEMO_CONFIG that listens where they say.
PROXY_PORT=${DEMO_PROXY_PORT:-8080}
CONTROL_PORT=${DEMO_CONTROL_PORT:-8092}
export DEMO_DETERMINISTIC_PORT=${DEMO_DETERMINISTIC_PORT:-9001}
export DEMO_ML_PORT=${DEMO_ML_PORT:-9002}
PROXY=http://127.0.0.1:$PROXY_PORT
CONTROL=http://127.0.0.1:$CONTROL_PORT
READY_SECONDS=${DEMO_READY_SECONDS:-60}
# On other ports the hints printed below carry them: the scripts read the same variables.
ports=""
if [ "$PROXY_PORT:$CONTROL_PORT:$DEMO_DETERMINISTIC_PORT:$DEMO_ML_PORT" != "8080:8092:9001:9002" ]; then
    ports="DEMO_PROXY_PORT=$PROXY_PORT DEMO_CONTROL_PORT=$CONTROL_PORT DEMO_DETERMINISTIC_PORT=$DEMO_DETERMINISTIC_PORT DEMO_ML_PORT=$DEMO_ML_PORT "
fi
if [ -n "${DEMO_CONFIG:-}" ]; then
    CONFIG=$DEMO_CONFIG
elif [ -z "$ports" ]; then
    CONFIG=config/abgate.yaml
else
    mkdir -p .abgate
    CONFIG=.abgate/demo-ports.yaml
    cat > "$CONFIG" <<YAML
# Written by make run for the DEMO_*_PORT variables: config/abgate.yaml on other ports.
extends: ../config/abgate.yaml
proxy: {listen: "127.0.0.1:$PROXY_PORT", admin_listen: "127.0.0.1:0"}
control: {listen: "127.0.0.1:$CONTROL_PORT"}
upstreams:
  deterministic: {url: "http://127.0.0.1:$DEMO_DETERMINISTIC_PORT"}
  ml: {url: "http://127.0.0.1:$DEMO_ML_PORT"}
YAML
fi

# Every port first, naming who holds a busy one, before anything starts.
busy=0
for port in "$PROXY_PORT" "$CONTROL_PORT" "$DEMO_DETERMINISTIC_PORT" "$DEMO_ML_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        holder=$(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'users:.*' | head -1 || true)
        echo "make run: port $port is already in use${holder:+ by $holder}" >&2
        busy=1
    fi
done
if [ "$busy" -ne 0 ]; then
    echo "make run: stop what holds it (another make run?) and try again" >&2
    exit 1
fi

abgate_pid=""
cleanup() {
    trap - EXIT INT TERM
    [ -n "$abgate_pid" ] && kill "$abgate_pid" 2>/dev/null && wait "$abgate_pid" 2>/dev/null
    # The agents on this stack's ports only (another stack's, on other ports, are left alone).
    scripts/demo-agent.sh stop ml >/dev/null || true
    scripts/demo-agent.sh stop deterministic >/dev/null || true
}
trap cleanup EXIT INT TERM

scripts/demo-agent.sh start deterministic
scripts/demo-agent.sh start ml
$BIN/abgate run --config "$CONFIG" & abgate_pid=$!

ready=0
for _ in $(seq $((READY_SECONDS * 10))); do  # the control process up, its data plane connected
    if curl -fs "$CONTROL/health/ready" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$abgate_pid" 2>/dev/null || { echo "make run: abgate did not start" >&2; exit 1; }
    sleep 0.1
done
if [ "$ready" -ne 1 ]; then
    echo "make run: abgate not ready within ${READY_SECONDS}s ($CONTROL/health/ready); stopping" >&2
    exit 1
fi
percentage=$(curl -fs "$CONTROL/api/flags/ml-agent-rollout" | "$BIN/python" -c \
    'import json, sys; print("%g" % json.load(sys.stdin)["percentage"])' 2>/dev/null || echo "?")
cat <<MSG

abgate demo is up:
  proxy        $PROXY   (deterministic agent :$DEMO_DETERMINISTIC_PORT, ML agent :$DEMO_ML_PORT, ${percentage}% to ML)
  control API  $CONTROL   (/api/flags, /api/experiments, /metrics, /health/aggregate)
  agents       $(scripts/demo-agent.sh status deterministic), $(scripts/demo-agent.sh status ml)

Commands in the docs call \`abgate\`; put it on your PATH in this shell first:
  export PATH="$PWD/.venv/bin:\$PATH"

Try:
  ${ports}make demo-rollout                 # simulated users run a whole rollout (about 2-3 minutes)
  curl -si -H 'X-User-Id: alice' -X POST $PROXY/api/agent/credit/decide
  curl -s -X POST -H 'Content-Type: application/json' -d '{"percentage": 50}' \\
       $CONTROL/api/flags/ml-agent-rollout
  ${ports}scripts/demo-agent.sh stop ml     # the breaker check: answers keep coming, from control
  ${ports}scripts/demo-agent.sh start ml    # and ML traffic returns on its own
Ctrl-C stops everything.
MSG

# Watch the agents; only abgate ending (or Ctrl-C) ends the demo.
declare -A reported=()
while kill -0 "$abgate_pid" 2>/dev/null; do
    for kind in deterministic ml; do
        if scripts/demo-agent.sh status "$kind" >/dev/null; then
            [ -n "${reported[$kind]:-}" ] && echo "make run: $kind agent is back"
            reported[$kind]=""
        elif [ -z "${reported[$kind]:-}" ]; then
            echo "make run: $kind agent is not running; abgate keeps serving" \
                 "(restart it with ${ports}scripts/demo-agent.sh start $kind)"
            reported[$kind]=1
        fi
    done
    sleep 1
done
wait "$abgate_pid" 2>/dev/null || true
echo "make run: abgate exited; stopping the agents"
