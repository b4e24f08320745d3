#!/usr/bin/env bash
# Benchmarks the RabbitMQ offline queue against a broker it starts on a loopback port, then stops.
# Usage: ./scripts/bench-queue.sh [messages, default 10000]
set -euo pipefail
cd "$(dirname "$0")/.."
for package in librabbitmq-dev rabbitmq-server; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends librabbitmq-dev rabbitmq-server >/dev/null
        break
    }
done
swift build -c release --product amqp-queue-benchmark >/dev/null
. scripts/lib/processes.sh
port=$((20000 + RANDOM % 10000))
dir=$(mktemp -d)
# The node's own Erlang port mapper, started here so that it is stopped with the node.
epmd -port $((port + 20000)) -address 127.0.0.1 >/dev/null 2>&1 &
epmd_pid=$!
export ERL_EPMD_PORT=$((port + 20000)) HOME="$dir" RABBITMQ_NODENAME="chatd-bench-$port@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT=$((port + 10000)) RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/rabbit.pid" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/plugins" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
/usr/lib/rabbitmq/bin/rabbitmq-server >/dev/null 2>&1 &
broker_pid=$!
trap 'stop_tree "$broker_pid" "$epmd_pid"; rm -rf "$dir"' EXIT
for _ in $(seq 1 300); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
/usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBITMQ_NODENAME" await_startup >/dev/null 2>&1 || true
echo "broker: rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server) on loopback; machine: $(nproc) cores, $(uname -m)"
.build/release/amqp-queue-benchmark "$port" "${1:-10000}"
