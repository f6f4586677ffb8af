#!/usr/bin/env bash
# Runs the mesh benchmark (node, raw libp2p, relay) with Redis beside the
# relay. Installs redis-server from the system packages if it is missing;
# the benchmark starts its own instance on 127.0.0.1 and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
    echo "installing redis-server (system package)" >&2
    as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    # A fresh machine may have no package lists yet.
    "${as_root[@]}" apt-get install -y redis-server >/dev/null 2>&1 || {
        "${as_root[@]}" apt-get update >/dev/null
        "${as_root[@]}" apt-get install -y redis-server >/dev/null
    }
fi
exec cargo bench --bench mesh "$@"
