#!/usr/bin/env bash
# Runs chatd on a fresh Debian/Ubuntu machine with the Swift toolchain.
#
# With nothing configured chatd keeps chats, messages and queued deliveries in ./chatd-data/chatd.sqlite (one
# process, nothing else to start; a crash loses nothing): DATA_DIR moves it, IN_MEMORY=true (or --in-memory) keeps
# everything in memory instead. Configure RabbitMQ, Redis and MongoDB with RABBITMQ_HOST, REDIS_HOST and
# MONGODB_URI (see Docs/OPERATIONS.md); any argument is passed to chatd (try `./scripts/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || { echo "swift is not on PATH: install the Swift toolchain (6.1 or later) first" >&2; exit 1; }

# The C client libraries chatd links (installed once; later runs find them and skip this).
apt_packages=(libhiredis-dev libmongoc-dev librabbitmq-dev libsqlite3-dev pkg-config)
missing=()
for package in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> Installing ${missing[*]}" >&2
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "==> Building chatd (release; the first build takes several minutes)" >&2
swift build -c release --product chatd >&2
exec "$(swift build -c release --show-bin-path)/chatd" "$@"
