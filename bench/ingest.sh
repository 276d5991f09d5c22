#!/usr/bin/env bash
# Ingest benchmark: durable tasks accepted per second through the API,
# single creates and batches of 1,000, against the raw SQLite insert rate
# of the same rows measured in the same run, then the same tasks made from
# a code (ratio to the plain API in the same run). Release build.
#   bench/ingest.sh                 # defaults (sync=full)
#   bench/ingest.sh --sync normal   # extra flags go to shepherd-bench
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p shepherd -p shepherd-bench
mkdir -p bench/results
exec target/release/shepherd-bench ingest --json "bench/results/ingest-$(date -u +%Y%m%d-%H%M%S).json" "$@"
