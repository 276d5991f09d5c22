#!/usr/bin/env bash
# Autoscaled pools (issue 17), release build:
#  1. scale-up latency: a task for an empty pool until it starts on a new
#     machine made by the docker provisioner (an agent container on the
#     local engine), 10 trials, split into decision, provisioning, join and
#     start, against a raw create+start of the same agent image;
#  2. a simulated bursty day through the server's own planner: machine-hours
#     and queue wait, autoscaled vs a fixed pool sized for its peak, and a plot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-test-image.sh
cargo build --release -p shepherd -p shepherd-bench
mkdir -p bench/results
stamp=$(date -u +%Y%m%d-%H%M%S)
target/release/shepherd-bench autoscale-latency --json "bench/results/autoscale-latency-$stamp.json" "$@"
target/release/shepherd-bench autoscale-day --json "bench/results/autoscale-day-$stamp.json" --svg bench/autoscale-day.svg
