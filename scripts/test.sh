#!/usr/bin/env bash
# The tests, as the README and CI run them (arguments go to `cargo test`).
# First what they need beyond cargo: the packages of the js-libp2p peer of
# the interoperability test (tests/interop/js, pinned by its
# package-lock.json), when Node.js is installed. The tests themselves send
# nothing off 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

js=tests/interop/js
if command -v node >/dev/null; then
    if ! command -v npm >/dev/null; then
        echo "Node.js is installed without npm: install npm, which the js-libp2p interop test needs for its packages" >&2
        exit 1
    fi
    # npm writes node_modules/.package-lock.json only once an install is
    # complete: without it, or older than the lock file, install again.
    done_marker="$js/node_modules/.package-lock.json"
    if [ ! -f "$done_marker" ] || [ "$js/package-lock.json" -nt "$done_marker" ]; then
        echo "installing the js-libp2p interop peer (npm ci in $js)" >&2
        (cd "$js" && npm ci --no-audit --no-fund >&2)
    fi
else
    echo "Node.js not found: the js-libp2p interop test will say it is skipped" >&2
fi
exec cargo test --locked "$@"
