#!/usr/bin/env bash
# Placement benchmark: decisions/s and p50/p99 decision time per built-in
# profile at 100, 1,000, 10,000 and 50,000 nodes (30% of tasks constrained),
# plus binpack vs first-fit-decreasing and spread balance. Release, one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p shepherd-bench
mkdir -p bench/results
exec target/release/shepherd-bench placement --json "bench/results/placement-$(date -u +%Y%m%d-%H%M%S).json" "$@"
