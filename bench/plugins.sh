#!/usr/bin/env bash
# Issue 29's measures, release build, same run:
#  1. decisions/s at 10,000 nodes (shepherd simulate) for one profile three
#     ways: the built-in spread scorer, the same logic as a WebAssembly
#     scorer (examples/plugins/spread.rs), and as an HTTP extender on
#     loopback (bench/extender.py); built-in and WebAssembly alternate three
#     times (compare the medians), the extender runs once;
#  2. end to end at 5,000 simulated nodes (shepherd-bench scale) with the
#     example WebAssembly label filter in the default profile, against the
#     same profile without it, alternating.
# Usage: bench/plugins.sh [--tasks N] [--scale-tasks N] [--rounds R] [--skip-scale]
set -euo pipefail
cd "$(dirname "$0")/.."
tasks=20000 scale_tasks=100000 rounds=2 skip_scale=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tasks) tasks="$2"; shift 2 ;;
        --scale-tasks) scale_tasks="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --skip-scale) skip_scale=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
bin=target/release/shepherd
[[ -x $bin && -x target/release/shepherd-bench ]] || cargo build --release -p shepherd -p shepherd-bench
examples/plugins/build.sh >/dev/null
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
python3 bench/extender.py > "$work/port" &
for _ in $(seq 50); do [[ -s $work/port ]] && break; sleep 0.1; done
port=$(cat "$work/port")
cat > "$work/decisions.toml" <<TOML
[plugins.spread_wasm]
wasm = "$PWD/examples/plugins/spread.wasm"
[plugins.spread_http]
http = "http://127.0.0.1:$port/"
score = true
timeout_ms = 2000
[profiles.builtin]
order = "random"
scores = { spread = 1.0 }
[profiles.wasm]
order = "random"
scores = { spread_wasm = 1.0 }
[profiles.http]
order = "random"
scores = { spread_http = 1.0 }
TOML
echo "== decisions at 10,000 nodes, $tasks tasks, 16 candidates per decision (bench/plugins.sh)"
"$bin" simulate --nodes 10000 --generate "$tasks" --profiles builtin,wasm,builtin,wasm,builtin,wasm,http \
    --scheduler-config "$work/decisions.toml" --plot "$work/decisions.svg"
[[ -n $skip_scale ]] && exit 0
for variant in base wasm; do
    filters='"node_ready", "dedicated", "pool", "volume_locality", "task_limit", "resources", "devices", "constraints", "anti_affinity"'
    plugin=
    if [[ $variant == wasm ]]; then
        filters="$filters, \"bench_gate\""
        plugin="[plugins.bench_gate]
wasm = \"$PWD/examples/plugins/label_filter.wasm\""
    fi
    cat > "$work/$variant.toml" <<TOML
default_profile = "gated"
$plugin
[profiles.gated]
order = "least_allocated"
candidates = 4
filters = [$filters]
scores = { spread = 1.0, warm_locality = 1.0 }
TOML
    if [[ $variant == wasm ]]; then printf '[profiles.gated.args.bench_gate]\nlabel = "bench"\n' >> "$work/$variant.toml"; fi
done
for round in $(seq "$rounds"); do
    for variant in base wasm; do
        echo "== round $round: $variant, 5,000 simulated nodes, $scale_tasks tasks"
        target/release/shepherd-bench scale --shepherd "$bin" --nodes 5000 --running 0 --tasks "$scale_tasks" \
            --node-label bench=yes --server-arg=--scheduler-config --server-arg="$work/$variant.toml" 2>&1 | grep -E "tasks/s|placed|nodes" | tail -4
    done
done
