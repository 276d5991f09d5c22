#!/usr/bin/env bash
# Several servers on one PostgreSQL (release build): ingest through one
# server against two sharing the load, and failover time (SIGKILL the
# leader → first placement by the next) over 20 trials. Starts a throwaway
# PostgreSQL (scripts/postgres.sh) unless --postgres URL is given.
#   bench/ha.sh                     # defaults: lease 5 s, 20 trials
#   bench/ha.sh --lease 2           # extra flags go to shepherd-bench ha
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p shepherd -p shepherd-bench
mkdir -p bench/results
args=("$@")
if [[ " $* " != *" --postgres "* ]]; then
    pgdir="$(mktemp -d)"
    trap 'scripts/postgres.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
    url="$(scripts/postgres.sh start "$pgdir")"
    args+=(--postgres "$url")
fi
target/release/shepherd-bench ha --json "bench/results/ha-$(date -u +%Y%m%d-%H%M%S).json" "${args[@]}"
