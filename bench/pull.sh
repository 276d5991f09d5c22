#!/usr/bin/env bash
# Image pulls (issue 19): time to start 200 tasks of a 50 MiB image on three
# nodes that lack it, with one pull per image (as shipped), without (every
# attempt pulls), and after `shepherd image prefetch`; baseline: one
# `docker pull` of the same image in the same run. Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-test-image.sh
bash scripts/registry.sh install
cargo build --release -p shepherd
mkdir -p bench/results
exec python3 bench/pull.py "bench/results/pull-$(date -u +%Y%m%d-%H%M%S).json"
