#!/usr/bin/env bash
# Builds every example plugin into examples/plugins/*.wasm with the tools
# Debian ships (no download): rustc 1.63 with the wasm32 standard library
# (libstd-rust-dev-wasm32) for the Rust ones, clang and lld for the C one.
# Installs them when missing. The SDK (crates/plugin-sdk) is compiled as
# an rlib first, into target/plugin-sdk.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
RUSTC="${WASM_RUSTC:-/usr/bin/rustc}"
if [[ ! -x "$RUSTC" || ! -d /usr/lib/rustlib/wasm32-unknown-unknown ]] || ! command -v clang >/dev/null || ! command -v wasm-ld >/dev/null; then
    echo "build.sh: installing rustc, libstd-rust-dev-wasm32, clang and lld from Debian" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rustc libstd-rust-dev-wasm32 clang lld >/dev/null
fi
sdk="$root/target/plugin-sdk"
mkdir -p "$sdk"
rust=(--edition 2021 --target wasm32-unknown-unknown -C opt-level=2 -C panic=abort)
"$RUSTC" "${rust[@]}" --crate-type rlib --crate-name shepherd_plugin_sdk \
    -o "$sdk/libshepherd_plugin_sdk.rlib" "$root/crates/plugin-sdk/src/lib.rs"
for example in label_filter prefer_values spread; do
    "$RUSTC" "${rust[@]}" --crate-type cdylib -C strip=symbols \
        --extern shepherd_plugin_sdk="$sdk/libshepherd_plugin_sdk.rlib" -L "$sdk" \
        -o "$here/$example.wasm" "$here/$example.rs"
done
clang --target=wasm32 -O2 -nostdlib -fno-builtin -Wl,--no-entry -Wl,--strip-all \
    -o "$here/label_filter_c.wasm" "$here/label_filter.c"
ls -l "$here"/*.wasm | awk '{print "built " $NF " (" $5 " bytes)"}'
