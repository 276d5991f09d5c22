#!/usr/bin/env bash
# Workflow benchmark (issue 30): creating a 100,000-child array in one
# request against the same tasks as 100 batches of 1,000 (alternating
# rounds, a fresh `shepherd server` each); the transaction that releases
# 10,000 dependents when their dependency ends, against the same end with
# none; another project's queue wait beside a 100,000-child array on 50
# simulated nodes, against the same load alone. Release build.
#   bench/workflow.sh                  # defaults
#   bench/workflow.sh --nodes 0        # skip the fairness measure
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p shepherd -p shepherd-bench
mkdir -p bench/results
exec target/release/shepherd-bench workflow --json "bench/results/workflow-$(date -u +%Y%m%d-%H%M%S).json" "$@"
