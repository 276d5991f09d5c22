#!/usr/bin/env bash
# Builds the book (docs/, mdBook) into target/book and checks it: the API
# reference is current with docs/openapi.json, and every relative link of
# the README, ARCHITECTURE.md, bench/RESULTS.md, the pages and the built
# HTML resolves. Installs mdBook from crates.io (into target/tools) if
# missing. `scripts/docs.sh --open` prints the path to open.
set -euo pipefail
cd "$(dirname "$0")/.."

mdbook_version=0.5.4
tools="$PWD/target/tools"
mdbook="$tools/bin/mdbook"
if ! "$mdbook" --version 2>/dev/null | grep -q "v$mdbook_version"; then
    echo "docs.sh: installing mdBook $mdbook_version into $tools" >&2
    cargo install mdbook --version "=$mdbook_version" --locked --no-default-features --features search --root "$tools" --quiet
fi
python3 scripts/openapi-md.py --check
"$mdbook" build --dest-dir target/book >/dev/null
python3 scripts/check-links.py target/book
[ "${1:-}" = "--open" ] && echo "the book: file://$PWD/target/book/index.html"
exit 0
