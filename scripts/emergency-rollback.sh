#!/usr/bin/env bash
# Emergency rollback: treatment to 0% for the named experiments (all if none), confirmed by
# every registered abgate instance. A name may be a group of experiments the config defines
# (control.groups; the demo's `ml-agents` holds both of its experiments).
#
#   scripts/emergency-rollback.sh [experiment|group...]
#
# ABGATE_CONTROL_URL (default http://127.0.0.1:8092), ABGATE_CONTROL_TOKEN, and
# ROLLBACK_TIMEOUT (seconds, default 30). Prints the elapsed time and the instances; exits 0
# when every instance routes with the rollback, 1 otherwise.
set -euo pipefail

url="${ABGATE_CONTROL_URL:-http://127.0.0.1:8092}"
timeout="${ROLLBACK_TIMEOUT:-30}"
python=$(command -v python3)

body=$("$python" - "$timeout" "$@" <<'PY'
import json, sys
timeout, names = float(sys.argv[1]), sys.argv[2:]
body = {"timeout": timeout, "reason": "emergency rollback (scripts/emergency-rollback.sh)"}
if names:  # no names: the field stays out, which means every experiment
    body["experiments"] = names
print(json.dumps(body))
PY
)
auth=()
[ -n "${ABGATE_CONTROL_TOKEN:-}" ] && auth=(-H "Authorization: Bearer ${ABGATE_CONTROL_TOKEN}")
started=$(date +%s.%N)
response=$(curl -sS --max-time "$((${timeout%.*} + 10))" -w '\n%{http_code}' -X POST \
    -H 'Content-Type: application/json' -H "X-ABGate-Actor: emergency-rollback@${USER:-unknown}" \
    "${auth[@]}" -d "$body" "$url/api/rollback") || { echo "rollback: cannot reach $url" >&2; exit 1; }
status=${response##*$'\n'}
payload=${response%$'\n'*}
elapsed=$("$python" -c "import sys; print(f'{(float(sys.argv[2]) - float(sys.argv[1])) * 1000:.0f}')" \
    "$started" "$(date +%s.%N)")

# The answer goes to Python on standard input, never into its source.
report=$(cat <<'PY'
import json, sys
status, elapsed = sys.argv[1], sys.argv[2]
try:
    data = json.load(sys.stdin)
except ValueError:
    print(f"rollback: unexpected answer ({status})")
    sys.exit(1)
if "error" in data:
    print(f"rollback failed ({status}): {data['error']}")
    sys.exit(1)
flags = ", ".join(f"{f['name']}=v{f['version']}" for f in data["flags"])
if data["converged"] is None:  # written, but the instance registry could not be read
    print(f"rollback of {flags}: written, convergence UNKNOWN: {data['convergence_unknown']}")
    sys.exit(1)
print(f"rollback of {flags}: {'converged' if data['converged'] else 'NOT converged'} "
      f"in {elapsed} ms (server-side {data['elapsed_ms']} ms)")
for instance in data["instances"]:
    mark = "ok " if instance["converged"] else "LAG"
    print(f"  {mark} {instance['id']}  {instance['address']}  applied={instance['applied']}")
sys.exit(0 if data["converged"] else 1)
PY
)
printf '%s' "$payload" | "$python" -c "$report" "$status" "$elapsed"
