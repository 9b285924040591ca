#!/usr/bin/env bash
# `make monitoring`: Prometheus on monitoring/prometheus.yml (scraping abgate's control API,
# and the exporters below), plus Debian's node, Redis and PostgreSQL exporters when they are
# installed (scripts/install-test-servers.sh installs them). Prints the URLs; Ctrl-C stops all.
# MONITORING_DIR (default .monitoring) keeps Prometheus's data between runs. Addresses:
# PROMETHEUS_LISTEN (127.0.0.1:9090), NODE_EXPORTER_LISTEN (:9100), REDIS_EXPORTER_LISTEN
# (:9121), POSTGRES_EXPORTER_LISTEN (:9187); REDIS_ADDR and DATA_SOURCE_NAME say which Redis
# and PostgreSQL the exporters watch (default: this machine's, on their standard ports);
# ABGATE_METRICS (127.0.0.1:8092) is the abgate control API that Prometheus scrapes. The
# scrape config is monitoring/prometheus.yml with these addresses put in (MONITORING_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${MONITORING_DIR:-.monitoring}"
mkdir -p "$dir"
pids=()
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

start() {  # name, command...
  local name="$1"; shift
  "$@" >"$dir/$name.log" 2>&1 &
  pids+=("$!")
}
find_tool() { command -v "$1" 2>/dev/null || { [ -x "/usr/bin/$1" ] && echo "/usr/bin/$1"; } || true; }

prometheus=$(find_tool prometheus)
if [ -z "$prometheus" ]; then echo "prometheus is not installed: make test-servers" >&2; exit 1; fi
sed -e "s/127.0.0.1:8092/${ABGATE_METRICS:-127.0.0.1:8092}/" \
    -e "s/127.0.0.1:9100/${NODE_EXPORTER_LISTEN:-127.0.0.1:9100}/" \
    -e "s/127.0.0.1:9121/${REDIS_EXPORTER_LISTEN:-127.0.0.1:9121}/" \
    -e "s/127.0.0.1:9187/${POSTGRES_EXPORTER_LISTEN:-127.0.0.1:9187}/" \
    monitoring/prometheus.yml >"$dir/prometheus.yml"
cp monitoring/alerts.yml "$dir/alerts.yml"
start prometheus "$prometheus" --config.file="$dir/prometheus.yml" \
  --storage.tsdb.path="$dir/prometheus" --web.listen-address="${PROMETHEUS_LISTEN:-127.0.0.1:9090}"
echo "Prometheus        http://${PROMETHEUS_LISTEN:-127.0.0.1:9090}   (scrapes abgate at ${ABGATE_METRICS:-127.0.0.1:8092})"
if node=$(find_tool prometheus-node-exporter) && [ -n "$node" ]; then
  start node-exporter "$node" --web.listen-address="${NODE_EXPORTER_LISTEN:-127.0.0.1:9100}"
  echo "node exporter     http://${NODE_EXPORTER_LISTEN:-127.0.0.1:9100}/metrics"
fi
if redis=$(find_tool prometheus-redis-exporter) && [ -n "$redis" ]; then
  start redis-exporter "$redis" -web.listen-address "${REDIS_EXPORTER_LISTEN:-127.0.0.1:9121}" \
    -redis.addr "${REDIS_ADDR:-redis://127.0.0.1:6379}"
  echo "redis exporter    http://${REDIS_EXPORTER_LISTEN:-127.0.0.1:9121}/metrics"
fi
if postgres=$(find_tool prometheus-postgres-exporter) && [ -n "$postgres" ]; then
  DATA_SOURCE_NAME="${DATA_SOURCE_NAME:-postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable}" \
    start postgres-exporter "$postgres" --web.listen-address="${POSTGRES_EXPORTER_LISTEN:-127.0.0.1:9187}"
  echo "postgres exporter http://${POSTGRES_EXPORTER_LISTEN:-127.0.0.1:9187}/metrics"
fi
echo "Dashboards: monitoring/grafana/dashboards/*.json (provisioning in monitoring/grafana/provisioning/)"
echo "Ctrl-C stops them."
wait -n "${pids[@]}"
