#!/usr/bin/env bash
# One demo agent of the `make run` stack: start, stop or ask about it while the stack runs.
#
#   scripts/demo-agent.sh start|stop|status deterministic|ml
#
# Stopping the ML agent is the breaker check: abgate keeps answering from the deterministic
# agent (X-ABGate-Fallback) and sends ML traffic again once the agent is back.
# An agent is its kind on its port (DEMO_DETERMINISTIC_PORT, DEMO_ML_PORT; 9001 and 9002 by
# default), so two stacks on other ports keep apart: PIDs and logs live in .abgate/demo/
# (KIND-PORT.pid, KIND-PORT.log; DEMO_DIR elsewhere), and a recorded pid counts only while it
# is still that agent on that port: nothing else is ever reported as it, or stopped.
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
pidfile="$DIR/$kind-$port.pid"
log="$DIR/$kind-$port.log"
mkdir -p "$DIR"

# Alive: the process exists and is not a zombie (an agent that exited but whose parent, the
# shell that started it, has not reaped it yet: kill -0 still succeeds on it).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo Z)
    [ "$state" != Z ]
}
# This agent: the pid runs demo_agent.py with this kind and this port (a pid can be reused).
is_agent() {
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
    case "$cmdline" in
        *demo_agent.py\ --kind\ "$kind"\ --port\ "$port"\ *) return 0 ;;
        *) return 1 ;;
    esac
}
recorded() { [ -f "$pidfile" ] && cat "$pidfile"; }
running() {
    local pid
    pid=$(recorded) || return 1
    alive "$pid" && is_agent "$pid"
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

case "$action" in
    start)
        if running; then echo "$kind agent already running (pid $(recorded), port $port)"; exit 0; fi
        rm -f "$pidfile"
        if listening; then
            holder=$(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o 'users:.*' | head -1 || true)
            echo "$kind agent not started: port $port is already in use${holder:+ by $holder}" >&2
            exit 1
        fi
        "$BIN/python" scripts/demo_agent.py --kind "$kind" --port "$port" >>"$log" 2>&1 &
        echo $! >"$pidfile"
        for _ in $(seq 100); do
            if listening; then
                echo "$kind agent started (pid $(recorded), port $port)"; exit 0
            fi
            alive "$(recorded)" || break  # (not `running`: bash may not have exec'd python yet)
            sleep 0.05
        done
        echo "$kind agent did not start on port $port; see $log" >&2; exit 1 ;;
    stop)
        if ! running; then echo "$kind agent is not running (port $port)"; rm -f "$pidfile"; exit 0; fi
        pid=$(recorded)
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.05; done
        rm -f "$pidfile"
        echo "$kind agent stopped (was pid $pid, port $port)" ;;
    status)
        if running; then echo "$kind agent running (pid $(recorded), port $port)"
        else echo "$kind agent not running (port $port)"; exit 1; fi ;;
    *) usage ;;
esac
