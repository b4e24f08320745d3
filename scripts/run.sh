#!/usr/bin/env bash
# Runs chatd's demo on a fresh Debian/Ubuntu machine with the Swift toolchain.
#
# The chatd server (Socket.IO on HTTP) is not built yet; until it is, this plays the product guide's manual
# test scenarios against the delivery engine on its in-memory adapters and prints the engine's log lines.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || { echo "swift is not on PATH: install the Swift toolchain (6.1 or later) first" >&2; exit 1; }
echo "==> chatd demo: the product guide's test scenarios on the in-memory adapters (the server arrives with the chatd issue)"
CHATD_TEST_LOG=1 swift test --filter 'ProductScenarioTests' 2>&1 | grep -E '^---|^\[(trace|debug|info|notice|warning|error|critical)\]|✔|✘'
