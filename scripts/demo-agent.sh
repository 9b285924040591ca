#!/usr/bin/env bash
# One demo agent of the `make run` stack: start, stop or ask about it while the stack runs.
#
#   scripts/demo-agent.sh start|stop|status deterministic|ml
#
# Stopping the ML agent is the breaker check: abgate keeps answering from the deterministic
# agent (X-ABGate-Fallback) and sends ML traffic again once the agent is back.
# PIDs and logs live in .abgate/demo/ (AGENT.pid, AGENT.log; DEMO_DIR elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DIR=${DEMO_DIR:-.abgate/demo}

usage() { echo "usage: scripts/demo-agent.sh start|stop|status deterministic|ml" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1 kind=$2
case "$kind" in
    deterministic) port=${DEMO_DETERMINISTIC_PORT:-9001} ;;
    ml) port=${DEMO_ML_PORT:-9002} ;;
    *) usage ;;
esac
pidfile="$DIR/$kind.pid"
mkdir -p "$DIR"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "$action" in
    start)
        if running; then echo "$kind agent already running (pid $(cat "$pidfile"), port $port)"; exit 0; fi
        "$BIN/python" scripts/demo_agent.py --kind "$kind" --port "$port" >>"$DIR/$kind.log" 2>&1 &
        echo $! >"$pidfile"
        for _ in $(seq 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                echo "$kind agent started (pid $(cat "$pidfile"), port $port)"; exit 0
            fi
            running || break
            sleep 0.05
        done
        echo "$kind agent did not start; see $DIR/$kind.log" >&2; exit 1 ;;
    stop)
        if ! running; then echo "$kind agent is not running"; rm -f "$pidfile"; exit 0; fi
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        rm -f "$pidfile"
        echo "$kind agent stopped (was pid $pid)" ;;
    status)
        if running; then echo "$kind agent running (pid $(cat "$pidfile"), port $port)"
        else echo "$kind agent not running"; exit 1; fi ;;
    *) usage ;;
esac
