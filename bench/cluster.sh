#!/usr/bin/env bash
# Multi-node latency: submit→container-start on `shepherd server` with three
# `shepherd agent --driver docker` processes, one task at a time, against a
# direct create+start on the engine (before and after, same run). Release.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-test-image.sh
cargo build --release -p shepherd -p shepherd-bench
mkdir -p bench/results
exec target/release/shepherd-bench cluster --json "bench/results/cluster-$(date -u +%Y%m%d-%H%M%S).json" "$@"
