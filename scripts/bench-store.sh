#!/usr/bin/env bash
# Benchmarks the MongoDB message store. Without MONGODB_URI it starts nx-27017 (from .venv, as the test command
# installs it) on a loopback port and stops it afterwards; with MONGODB_URI it uses that server.
# Usage: ./scripts/bench-store.sh [messages, default 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
dpkg-query -W -f='${Status}' libmongoc-dev 2>/dev/null | grep -q "ok installed" \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libmongoc-dev >/dev/null; }
swift build -c release --product mongo-store-benchmark >/dev/null
uri=${MONGODB_URI:-}
if [ -z "$uri" ]; then
    [ -x .venv/bin/nx-27017 ] || { python3 -m venv .venv && .venv/bin/pip install --quiet nx-27017; }
    port=$((20000 + RANDOM % 20000))
    dir=$(mktemp -d)
    .venv/bin/nx-27017 --host 127.0.0.1 -p "$port" --db memory --log-file "$dir/nx.log" --pid-file "$dir/nx.pid" >/dev/null 2>&1 &
    nx_pid=$!
    trap 'kill "$nx_pid" 2>/dev/null || true; wait "$nx_pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
    uri="mongodb://127.0.0.1:$port"
    echo "server: nx-27017 $(.venv/bin/pip show nx-27017 2>/dev/null | awk '/^Version/ {print $2}') (SQLite in memory) on loopback"
else
    echo "server: MONGODB_URI"
fi
echo "machine: $(nproc) cores, $(uname -m)"
.build/release/mongo-store-benchmark "$uri" "${1:-2000}"
