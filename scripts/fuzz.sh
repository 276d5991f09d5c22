#!/usr/bin/env bash
# A short, bounded fuzz run of every target in fuzz/ (cargo-fuzz, libFuzzer):
# request decoding and the constraint parser. Part of the test command.
# FUZZ_SECONDS per target (default 30). A crash fails the run and leaves the
# input in fuzz/artifacts/TARGET/; copy it to fuzz/regressions/TARGET/ once
# fixed, and crates/core/tests/fuzz_regressions.rs replays it forever.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags to rustc; the machine has one stable
# toolchain, which accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build -O
for target in $(cargo fuzz list); do
    scratch=$(mktemp -d)
    echo "fuzz.sh: $target for ${seconds}s"
    # New inputs go to the scratch corpus; the checked-in seeds stay as they are.
    status=0
    cargo fuzz run -O "$target" "$scratch" "corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1 \
        >"$scratch.log" 2>&1 || status=$?
    grep -E '^(Done|stat::number_of_executed_units|==[0-9]+== ERROR|SUMMARY|Test unit written)' "$scratch.log" || tail -20 "$scratch.log"
    rm -rf "$scratch" "$scratch.log"
    if [ "$status" -ne 0 ]; then
        echo "fuzz.sh: $target crashed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
echo "fuzz.sh: no crashes"
