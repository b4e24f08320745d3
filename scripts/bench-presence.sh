#!/usr/bin/env bash
# Benchmarks the Redis presence store against a redis-server it starts on a loopback port, then stops.
# Usage: ./scripts/bench-presence.sh [seconds per figure, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
for package in libhiredis-dev redis-server redis-tools; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libhiredis-dev redis-server redis-tools >/dev/null
        break
    }
done
swift build -c release --product redis-presence-benchmark >/dev/null
port=$((20000 + RANDOM % 20000))
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --logfile "$dir/redis.log" --daemonize yes --pidfile "$dir/redis.pid"
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
echo "redis-server $(redis-server --version | grep -o 'v=[0-9.]*'), $(nproc) cores, $(uname -m)"
.build/release/redis-presence-benchmark "$port" "${1:-3}"
