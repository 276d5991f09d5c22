#!/usr/bin/env bash
# Runs Shepherd's whole test suite: lint gates, the layering check, the
# book and its links, unit, property and integration tests (real server
# processes, real SQLite and PostgreSQL, the engine, a registry, a
# browser), and a bounded fuzz run. Installs what it needs first. Extra
# arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo is required (install Rust with rustup)" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "test.sh: installing cargo-nextest" >&2
    cargo install cargo-nextest --locked
fi

# The TLS test makes its certificate with the openssl CLI.
if ! command -v openssl >/dev/null 2>&1; then
    echo "test.sh: installing openssl" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

profile=default
[ "${CI:-}" = "true" ] && profile=ci
# Lint gates: formatting (rustfmt.toml) and clippy with warnings as errors.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    echo "test.sh: rustfmt and clippy are required (rustup component add rustfmt clippy)" >&2
    exit 1
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Layering: no file imports one that imports it back, and in the server no
# domain module (service, nodes, loops) imports an edge (http) or the root.
python3 scripts/check-layers.py --self-test
# The book (docs/, mdBook, installed into target/tools if missing) builds,
# its API reference matches docs/openapi.json, and every relative link of
# the README, ARCHITECTURE.md, the pages and the built HTML resolves.
bash scripts/docs.sh
bash scripts/build-test-image.sh
# The example scheduling plugins (WebAssembly, from Rust and C, with Debian's
# rustc 1.63 + wasm32 std and clang/lld, installed if missing), which the
# plugin tests load.
bash examples/plugins/build.sh
# A real image registry for the registry tests (each test starts its own).
bash scripts/registry.sh install
# A throwaway PostgreSQL for the PostgreSQL store's tests (no fsync: tests only).
pg_dir="$(mktemp -d /tmp/shepherd-test-pg.XXXXXX)"
trap 'bash scripts/postgres.sh stop "$pg_dir"; rm -rf "$pg_dir"' EXIT
SHEPHERD_TEST_POSTGRES="$(bash scripts/postgres.sh start "$pg_dir" --fast)"
export SHEPHERD_TEST_POSTGRES
cargo build --workspace --all-targets
# The warm-container runner, static (it runs in images without a libc), for
# its container test; its own target directory keeps the flags apart.
RUSTFLAGS="-C target-feature=+crt-static" cargo build -p shepherd-runner --release --target x86_64-unknown-linux-gnu --bins --examples
SHEPHERD_RUNNER_STATIC="$PWD/target/x86_64-unknown-linux-gnu/release/shepherd-runner"
export SHEPHERD_RUNNER_STATIC
# Python clients, pinned: IronWorker's own, for the compatibility test, and
# websocket-client, which drives Chromium for the dashboard's browser test.
iron_venv="$PWD/target/iron-venv"
if ! "$iron_venv/bin/python" -c 'import iron_worker, websocket' >/dev/null 2>&1; then
    echo "test.sh: installing the Python test clients" >&2
    python3 -m venv "$iron_venv"
    "$iron_venv/bin/pip" install -q iron-worker==1.3.8 iron-core==1.2.1 websocket-client==1.9.0
fi
# libfaketime for the chaos test's follower with a skewed clock (Debian's package).
if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; then
    echo "test.sh: installing faketime" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
fi
# Headless Chromium for the dashboard's browser test (Debian's package).
if ! command -v chromium >/dev/null 2>&1; then
    echo "test.sh: installing chromium" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
SHEPHERD_TEST_PYTHON="$iron_venv/bin/python"
export SHEPHERD_TEST_PYTHON
cargo nextest run --workspace --profile "$profile" "$@"
# A short bounded fuzz run of request decoding and the constraint parser.
bash scripts/fuzz.sh
