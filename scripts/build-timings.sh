#!/usr/bin/env bash
# Measures a first build as a newcomer's quickstart makes it: a fresh clone
# of a commit, a fresh target directory and (with --fresh-registry) a fresh
# cargo home, so crates are downloaded too. Prints the wall time, the time
# each phase took and the slowest units, and keeps cargo's --timings report
# in bench/results/.
#
#   scripts/build-timings.sh                          # HEAD, the quickstart's build
#   scripts/build-timings.sh --rev 39a3a88 --release  # another commit, `cargo build --release -p shepherd`
#   scripts/build-timings.sh --fresh-registry         # download every crate again
#
# Run the "before" and the "after" one after the other on the same
# machine, with nothing else building: the figures are only comparable
# within one session.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=HEAD
mode=quickstart
fresh_registry=false
while [ $# -gt 0 ]; do
    case "$1" in
        --rev) rev=$2; shift 2 ;;
        --release) mode=release; shift ;;
        --quickstart) mode=quickstart; shift ;;
        --fresh-registry) fresh_registry=true; shift ;;
        *) echo "build-timings: unknown argument $1" >&2; exit 2 ;;
    esac
done
repo=$PWD
work=$(mktemp -d /tmp/shepherd-build-timings.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/src"
git -C "$work/src" checkout -q "$rev"
commit=$(git -C "$work/src" rev-parse --short HEAD)
if $fresh_registry; then
    export CARGO_HOME=$work/cargo-home
    mkdir -p "$CARGO_HOME"
fi
cd "$work/src"
echo "build-timings: $commit, $mode build, fresh target directory$($fresh_registry && echo ', fresh cargo home')" >&2
start=$(date +%s.%N)
if [ "$mode" = quickstart ] && grep -q '^\[profile.quickstart\]' Cargo.toml; then
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p shepherd-runner \
        --target x86_64-unknown-linux-gnu --target-dir target/runner &
    runner=$!
    cargo build --profile quickstart -p shepherd --timings 2>"$work/build.log"
    wait "$runner"
else
    cargo build --release -p shepherd --timings 2>"$work/build.log"
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p shepherd-runner --target x86_64-unknown-linux-gnu
fi
end=$(date +%s.%N)
report=$(ls -t target/cargo-timings/cargo-timing-*.html | head -1)
mkdir -p "$repo/bench/results"
kept="$repo/bench/results/build-timings-$commit-$mode.html"
cp "$report" "$kept"
python3 - "$report" "$start" "$end" <<'PY'
import json, re, sys
report, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
html = open(report).read()
units = json.loads(re.search(r"const UNIT_DATA = (\[.*?\]);\n", html, re.S).group(1))
ours = [u for u in units if u["name"].startswith("shepherd")]
print(f"wall: {end - start:.1f} s (the main build and the static runner)")
print(f"units: {len(units)}, {sum(u['duration'] for u in units):.1f} unit-seconds; Shepherd's own crates {sum(u['duration'] for u in ours):.1f}")
for u in sorted(units, key=lambda u: -u["duration"])[:12]:
    print(f"  {u['duration']:6.1f} s  {u['name']} {u['target'].strip()}")
PY
echo "report: $kept" >&2
