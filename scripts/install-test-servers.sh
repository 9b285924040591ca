#!/usr/bin/env bash
# Installs the servers the tests and benchmarks start on their own (ephemeral ports, 127.0.0.1):
# redis-server, prometheus, wrk, nginx and PostgreSQL (initdb, pg_ctl, psql), from Debian's
# packages, when they are missing. Sentinels are `redis-server --sentinel` (the binary Debian's
# redis-sentinel package runs), with TLS built in; test certificates come from the
# `cryptography` package, so neither redis-sentinel nor openssl is needed here.
set -euo pipefail

declare -A package=([redis-server]=redis-server [prometheus]=prometheus [wrk]=wrk [nginx]=nginx-light)
missing=()
for tool in "${!package[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${package[$tool]}")
done
# Debian keeps initdb and pg_ctl out of PATH, under /usr/lib/postgresql/VERSION/bin.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1 \
    || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
# The control page's browser tests drive Debian's Chromium (playwright's own download is not used).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# `make monitoring`'s exporters.
for exporter in prometheus-node-exporter prometheus-redis-exporter prometheus-postgres-exporter; do
    command -v "$exporter" >/dev/null 2>&1 || [ -x "/usr/bin/$exporter" ] || missing+=("$exporter")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-servers: missing ${missing[*]} and cannot apt-get here; install them" >&2
    [ "${CI:-}" = "true" ] && exit 1
    exit 0
fi
echo "install-test-servers: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start system services on their standard ports; the tests start their own.
for service in redis-server prometheus nginx postgresql prometheus-node-exporter \
        prometheus-redis-exporter prometheus-postgres-exporter; do
    command -v service >/dev/null 2>&1 && service "$service" stop >/dev/null 2>&1 || true
done
