#!/usr/bin/env bash
# The tests, as the README and CI run them (arguments go to `cargo test`).
# First what they need beyond cargo: the packages of the js-libp2p peer of
# the interoperability test (tests/interop/js, pinned by its
# package-lock.json), when Node.js is installed. The tests themselves send
# nothing off 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

js=tests/interop/js
if command -v node >/dev/null && command -v npm >/dev/null; then
    if [ ! -d "$js/node_modules" ] || [ "$js/package-lock.json" -nt "$js/node_modules" ]; then
        echo "installing the js-libp2p interop peer (npm ci in $js)" >&2
        (cd "$js" && npm ci --no-audit --no-fund >&2)
    fi
else
    echo "Node.js not found: the js-libp2p interop test will say it is skipped" >&2
fi
exec cargo test --locked "$@"
