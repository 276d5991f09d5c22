#!/usr/bin/env bash
# Scheduling at scale on PostgreSQL: `shepherd-bench scale` at 1,000 and
# 5,000 simulated nodes against a durable PostgreSQL started here
# (scripts/postgres.sh), a fresh database for every server. With
# `--baseline BIN`, that binary's server is measured the same way just
# before this one at each node count. Release. Writes one JSON record
# under bench/results.
#
#   bench/scale-postgres.sh [--baseline /tmp/shepherd-prev] [--nodes "1000 5000"]
set -euo pipefail
cd "$(dirname "$0")/.."
baseline="" nodes="1000 5000"
while [ $# -gt 0 ]; do
    case "$1" in
        --baseline) baseline="$2"; shift 2 ;;
        --nodes) nodes="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
cargo build --release -p shepherd -p shepherd-bench
mkdir -p bench/results
work=$(mktemp -d)
chmod 755 "$work"
url=$(scripts/postgres.sh start "$work/pg" | tail -1)
trap 'scripts/postgres.sh stop "$work/pg" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
base="${url%/*}"
stamp=$(date -u +%Y%m%d-%H%M%S)
runs=()
for n in $nodes; do
    for bin in $baseline "$PWD/target/release/shepherd"; do
        db="scale_${n}_${#runs[@]}"
        psql "$url" -qc "CREATE DATABASE $db"
        echo "scale on PostgreSQL: $n nodes, server $bin" >&2
        target/release/shepherd-bench scale --shepherd "$bin" --nodes "$n" --running 0 --tasks 40000 \
            --latency-nodes 0 --idle-seconds 5 --server-arg="--store=$base/$db" --json "$work/$db.json" | grep '^| [0-9]' || true
        runs+=("{\"server\": \"$bin\", \"nodes\": $n, \"result\": $(cat "$work/$db.json")}")
    done
done
(IFS=,; echo "{\"date\": \"$stamp\", \"store\": \"postgresql\", \"runs\": [${runs[*]}]}") > "bench/results/scale-postgres-$stamp.json"
echo "bench/results/scale-postgres-$stamp.json" >&2
