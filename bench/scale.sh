#!/usr/bin/env bash
# Scheduling at scale, end to end: `shepherd server` with 100 to 10,000
# simulated nodes (`shepherd nodesim`, the real agent protocol), tasks
# started per second, heartbeat cost, submit→start latency at half the
# ceiling, server memory with 100,000 tasks running. Release. Writes a JSON
# record and an SVG plot under bench/results.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p shepherd -p shepherd-bench
mkdir -p bench/results
stamp=$(date -u +%Y%m%d-%H%M%S)
exec target/release/shepherd-bench scale --json "bench/results/scale-$stamp.json" --svg "bench/results/scale-$stamp.svg" "$@"
