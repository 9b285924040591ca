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

# Alive: the process exists and is not a zombie (an agent that exited but whose parent, the
# shell that started it, has not reaped it yet: kill -0 still succeeds on it).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo Z)
    [ "$state" != Z ]
}
running() { [ -f "$pidfile" ] && alive "$(cat "$pidfile")"; }

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
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.05; done
        rm -f "$pidfile"
        echo "$kind agent stopped (was pid $pid)" ;;
    status)
        if running; then echo "$kind agent running (pid $(cat "$pidfile"), port $port)"
        else echo "$kind agent not running"; exit 1; fi ;;
    *) usage ;;
esac
