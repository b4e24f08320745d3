#!/usr/bin/env bash
# Runs every test of chatd on a fresh Debian/Ubuntu machine with the Swift toolchain.
# Installs what the tests need (idempotently), builds with warnings treated as failures, runs the suites.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

command -v swift >/dev/null || { echo "swift is not on PATH: install the Swift toolchain (6.1 or later) first" >&2; exit 1; }

# System packages: the C client libraries the adapters link, and the servers the integration tests start
# themselves on loopback ports of their own (each test starts and stops its own server).
apt_packages=(pkg-config libhiredis-dev redis-server redis-tools libmongoc-dev python3-venv librabbitmq-dev rabbitmq-server libsqlite3-dev)
missing=()
for package in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "Installing ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PyPI test tools, in a virtual environment of the repository's own (.venv, ignored by git): nx-27017, a
# MongoDB wire-protocol server on SQLite (Debian ships no MongoDB server; set MONGODB_URI to test against a real
# mongod instead), and the stock python-socketio client the interoperability tests drive the server with.
[ -x .venv/bin/python ] || python3 -m venv .venv
if [ ! -x .venv/bin/nx-27017 ]; then
    log "Installing nx-27017 into .venv"
    .venv/bin/pip install --quiet nx-27017
fi
if ! .venv/bin/python -c 'import socketio, websocket, requests' 2>/dev/null; then
    log "Installing python-socketio[client] into .venv"
    .venv/bin/pip install --quiet 'python-socketio[client]>=5.11,<6'
fi

# Build first and refuse warnings in our own code (dependencies' warnings are theirs).
log "Building (debug, with tests)"
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
if ! swift build --build-tests 2>&1 | tee "$build_log"; then
    echo "build failed" >&2
    exit 1
fi
# Dependencies' warnings are theirs: those in their sources, and SwiftPM's notes about their unhandled files.
own_warnings=$(grep -E 'warning:' "$build_log" | grep -v '/.build/checkouts/' \
    | grep -vE "warning: '[^']+': found [0-9]+ file\(s\) which are unhandled" | sort -u || true)
if [ -n "$own_warnings" ]; then
    echo "The build has warnings; chatd builds warning-free:" >&2
    echo "$own_warnings" >&2
    exit 1
fi

log "Running the test suites"
# Two phases on two cores: everything light in parallel, then the suites that start RabbitMQ nodes (each takes
# a core for ~15 s to boot) or a whole chatd stack, and the heartbeat timing suite (tens of milliseconds), one test
# at a time, so no broker boots while another test measures timeouts.
heavy='RabbitMQMessageQueueTests|RabbitMQSharedNodeTests|FullStackTests|BothModesTests|SeveralNodesEndToEndTests|HeartbeatTimingTests|DurableDefaultTests|EncryptionEndToEndTests'
swift test --skip-build --skip "$heavy"
log "Running the broker and end-to-end suites, one test at a time"
swift test --skip-build --filter "$heavy" --no-parallel
