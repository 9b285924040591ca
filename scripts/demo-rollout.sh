#!/usr/bin/env bash
# `make demo-rollout [SCENARIO=better|worse|same]`: a whole staged rollout by itself.
#
# Uses the `make run` stack (starts it when it is not up, and stops it after), then:
#   1. backs up the routing state (abgate flags backup -> backups/YYYYMMDD/traffic/),
#   2. shadows: simulated users at 0%, each ML answer compared with the one served,
#   3. starts the documentation-keeper rollout 5 -> 25 -> 50 (approval) -> 75 -> 80 (a 20%
#      control holdout compared through the bake) -> released to 100 while
#      `abgate simulate` sends users (sticky ids) and reports their outcomes (accuracy,
#      satisfaction) with each decision's phase and user; shows `abgate rollout status
#      --watch`; approves the 50% stage when the plan asks a person (saying so),
#   4. writes reports/documentation-keeper-business-impact.md.
# SCENARIO=better: the ML agent is more accurate, more satisfying and faster: completed.
# SCENARIO=worse: less accurate and slower: the rollout rolls back on its own.
# SCENARIO=same: no difference (an A/A rehearsal).
# DEMO_RATE (requests/s, default 300), DEMO_SHADOW_SECONDS (10); the DEMO_*_PORT variables of
# scripts/run-demo.sh, or ABGATE_CONTROL_URL / ABGATE_PROXY_URL, for a stack elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
SCENARIO=${SCENARIO:-better}
EXPERIMENT=${DEMO_EXPERIMENT:-documentation-keeper}
RATE=${DEMO_RATE:-300}
SHADOW_SECONDS=${DEMO_SHADOW_SECONDS:-10}
export ABGATE_CONTROL_URL=${ABGATE_CONTROL_URL:-http://127.0.0.1:${DEMO_CONTROL_PORT:-8092}}
export ABGATE_PROXY_URL=${ABGATE_PROXY_URL:-http://127.0.0.1:${DEMO_PROXY_PORT:-8080}}
DETERMINISTIC=http://127.0.0.1:${DEMO_DETERMINISTIC_PORT:-9001}
ML=http://127.0.0.1:${DEMO_ML_PORT:-9002}
LOGS=${DEMO_DIR:-.abgate/demo}
case "$SCENARIO" in
    better) deterministic_ms=20 ml_ms=5 expected=completed ;;
    worse) deterministic_ms=5 ml_ms=25 expected=rolled_back ;;
    same) deterministic_ms=8 ml_ms=8 expected=completed ;;
    *) echo "demo-rollout: SCENARIO is better, worse or same, not '$SCENARIO'" >&2; exit 2 ;;
esac
started=$(date +%s)
mkdir -p "$LOGS"

# A failed step says what did not answer, rather than ending with curl's exit code.
fail() { echo "demo-rollout: $*" >&2; exit 1; }
get() {  # URL: its body, or the reason it has none
    local out
    out=$(curl -fsS "$1" 2>&1) || fail "$1 did not answer (${out##*$'\n'})"
    printf '%s\n' "$out"
}
behaviour() {  # agent URL, added latency in ms
    curl -fs -X POST "$1/admin/behaviour" -d "{\"latency_ms\": $2}" >/dev/null
}
set_behaviour() {  # agent name, agent URL, added latency in ms
    behaviour "$2" "$3" 2>/dev/null || fail "the $1 agent did not answer at $2/admin/behaviour" \
        "(is it running? scripts/demo-agent.sh status $1, with the same DEMO_*_PORT variables;" \
        "the stack's log: $LOGS/stack.log)"
}
stack_pid="" simulate_pid=""
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$simulate_pid" ]; then kill "$simulate_pid" 2>/dev/null || true; wait "$simulate_pid" 2>/dev/null || true; fi
    behaviour "$DETERMINISTIC" 0 2>/dev/null || true
    behaviour "$ML" 0 2>/dev/null || true
    if [ -n "$stack_pid" ]; then kill "$stack_pid" 2>/dev/null || true; wait "$stack_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT INT TERM

if ! curl -fs "$ABGATE_CONTROL_URL/health" >/dev/null 2>&1; then
    echo "demo-rollout: starting the demo stack (scripts/run-demo.sh; log in $LOGS/stack.log)"
    bash scripts/run-demo.sh >"$LOGS/stack.log" 2>&1 &
    stack_pid=$!
    up=0
    for _ in $(seq 600); do
        if curl -fs "$ABGATE_CONTROL_URL/health" >/dev/null 2>&1; then up=1; break; fi
        if ! kill -0 "$stack_pid" 2>/dev/null; then
            cat "$LOGS/stack.log" >&2
            fail "the demo stack did not start (its log is above, in $LOGS/stack.log)"
        fi
        sleep 0.1
    done
    [ "$up" -eq 1 ] || fail "$ABGATE_CONTROL_URL/health did not answer within 60s (log: $LOGS/stack.log)"
fi
set_behaviour deterministic "$DETERMINISTIC" "$deterministic_ms"
set_behaviour ml "$ML" "$ml_ms"
echo "demo-rollout: SCENARIO=$SCENARIO: the deterministic agent answers in ${deterministic_ms} ms, the ML agent in ${ml_ms} ms"

# A rollout left unfinished by an earlier run (interrupted, or started by hand) would refuse
# this one's start: it is aborted first, saying so.
state=$(curl -fsS "$ABGATE_CONTROL_URL/api/rollouts/$EXPERIMENT" 2>/dev/null \
    | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin).get("state", ""))' \
    2>/dev/null || true)
case "$state" in
    pending|running|paused|awaiting_approval|escalated)
        echo "demo-rollout: a $state rollout of $EXPERIMENT from before is aborted first" \
             "(this demo runs one of its own)"
        "$BIN/abgate" rollout abort "$EXPERIMENT" --reason "make demo-rollout starts afresh" >/dev/null
        ;;
esac

echo
echo "== 1. Back up the routing state"
"$BIN/abgate" flags backup

echo
echo "== 2. Shadow: ${SHADOW_SECONDS}s of users at 0%; ML answers are compared, none is served"
"$BIN/abgate" flags set "$EXPERIMENT" 0 --reason "demo-rollout: shadow before the rollout" >/dev/null
compared_before=$(get "$ABGATE_CONTROL_URL/api/shadow/stats" \
    | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["total_decisions"])')
"$BIN/abgate" simulate --experiment "$EXPERIMENT" --scenario "$SCENARIO" --rate "$RATE" \
    --duration "${SHADOW_SECONDS}s" --seed 11 | tail -1
get "$ABGATE_CONTROL_URL/api/shadow/stats" | BEFORE="$compared_before" "$BIN/python" -c '
import json, os, sys
shadow = json.load(sys.stdin)
rate = shadow["agreement_rate"]
now = shadow["total_decisions"] - int(os.environ["BEFORE"])  # totals run on across runs: this one alone
print(f"shadow: {now:,} ML answers compared in this run, agreement {rate:.1%} since the start"
      if rate is not None else "shadow: nothing compared yet")'

echo
echo "== 3. The rollout: 5% -> 25% -> 50% (approval) -> 75% -> 80% with a 20% control holdout -> 100%, users simulated at ${RATE}/s"
"$BIN/abgate" rollout start "$EXPERIMENT" --reason "make demo-rollout (SCENARIO=$SCENARIO)" >/dev/null
"$BIN/abgate" simulate --experiment "$EXPERIMENT" --scenario "$SCENARIO" --rate "$RATE" \
    --until-rollout-ends --seed 12 >"$LOGS/simulate.log" 2>&1 &
simulate_pid=$!
echo "(abgate rollout status $EXPERIMENT --watch; the simulated users log to $LOGS/simulate.log)"
while true; do
    set +e
    "$BIN/abgate" rollout status "$EXPERIMENT" --watch --exit-on-approval
    code=$?
    set -e
    if [ "$code" -eq 6 ]; then
        echo "demo-rollout: the plan asks a person to approve the next stage; the demo approves" \
             "it now (a person would read the gates first: abgate rollout status $EXPERIMENT)"
        "$BIN/abgate" rollout approve "$EXPERIMENT" --reason "approved by make demo-rollout" >/dev/null
        continue
    fi
    break
done
wait "$simulate_pid" || true
simulate_pid=""
tail -1 "$LOGS/simulate.log"

echo
echo "== 4. The report"
"$BIN/abgate" rollout report "$EXPERIMENT"
state=$(get "$ABGATE_CONTROL_URL/api/rollouts/$EXPERIMENT" | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["state"])')
elapsed=$(( $(date +%s) - started ))
printf 'demo-rollout: %s in %dm%02ds (SCENARIO=%s, expected %s)\n' \
    "$state" $((elapsed / 60)) $((elapsed % 60)) "$SCENARIO" "$expected"
[ "$state" = "$expected" ]
