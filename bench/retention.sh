#!/usr/bin/env bash
# Retention benchmark: a store seeded with a million finished tasks (each
# with an attempt and a line of output), removed by retention while
# clients create tasks; the same clients before the removal and after it,
# in the same run (closed loop x32, and paced at 1,000/s). Release build.
#   bench/retention.sh --export                   # exported first, as in RESULTS.md
#   bench/retention.sh --finished 200000 --share 0.25
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p shepherd -p shepherd-bench
mkdir -p bench/results
exec target/release/shepherd-bench retention --json "bench/results/retention-$(date -u +%Y%m%d-%H%M%S).json" "$@"
