#!/usr/bin/env bash
# Docker driver benchmark: tasks of `true` through Shepherd, cold (a
# container per task) and warm (`reuse`), against raw create+start+wait+
# remove cycles on the engine (same container settings, same concurrency,
# measured before and after) and Docker Swarm mode's replicated jobs, all in
# one run; plus submit→start latency and a warm task's time at the driver.
# Release build.
#   bench/docker.sh                          # 1,000 tasks each
#   bench/docker.sh --tasks 2000             # extra flags go to shepherd-bench docker
#   bench/docker.sh --no-swarm               # leave Swarm mode out
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-test-image.sh
cargo build --release -p shepherd -p shepherd-bench
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p shepherd-runner --target x86_64-unknown-linux-gnu
export SHEPHERD_RUNNER_STATIC="$PWD/target/x86_64-unknown-linux-gnu/release/shepherd-runner"
mkdir -p bench/results
exec target/release/shepherd-bench docker --json "bench/results/docker-$(date -u +%Y%m%d-%H%M%S).json" "$@"
