#!/usr/bin/env bash
# Docker driver benchmark: 1,000 tasks of `true` through Shepherd against
# 1,000 raw create+start+wait+remove cycles on the engine (same container
# settings, same concurrency, measured before and after in the same run),
# plus submit→start latency. Release build.
#   bench/docker.sh                    # defaults
#   bench/docker.sh --concurrency 8    # extra flags go to shepherd-bench docker
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-test-image.sh
cargo build --release -p shepherd -p shepherd-bench
mkdir -p bench/results
exec target/release/shepherd-bench docker --json "bench/results/docker-$(date -u +%Y%m%d-%H%M%S).json" "$@"
