#!/usr/bin/env bash
# chatd's performance suite: the native load generator (Benchmarks/Suite, chatd-load) against a release chatd,
# embedded and full stack (RabbitMQ, Redis and nx-27017 on loopback), three repetitions each; prints one table
# (median and min–max) and writes it into Docs/PERFORMANCE.md between the suite markers.
#
#   ./scripts/bench.sh            # the whole suite (about 15 minutes after the builds)
#   ./scripts/bench.sh quick      # one repetition, embedded only, smaller counts (a smoke run; writes nothing)
#   ./scripts/bench.sh embedded   # the embedded half of the suite, three repetitions (prints; writes nothing)
#   CHATD=/tmp/chatd-before ./scripts/bench.sh embedded   # the same against another chatd binary
#   ./scripts/bench.sh micro      # the micro-benchmarks (ordo-one/benchmark): codec, JSON, engine
#   ./scripts/bench.sh instructions [binary]   # instructions per operation under valgrind (callgrind): the
#                                 # decode of message:send, the encode of message:received, an engine send;
#                                 # deterministic where the timed figures drift (installs valgrind if missing)
#   ./scripts/bench.sh compare <before> <after> [rounds]   # two chatd binaries, embedded, run in turns (ABAB...,
#                                 # 6 rounds by default): on a machine whose speed drifts by tens of percent over
#                                 # minutes, only interleaved runs compare two builds fairly
#   ./scripts/bench.sh nodes                 # two chatd nodes on one full stack: latency and throughput with the
#                                 # receivers on the sender's node and on the other node, in turns (prints)
#   ./scripts/bench.sh compare-full <before> <after> [rounds]   # the same on the full stack (latency-200,
#                                 # throughput, drain-1000; RabbitMQ, Redis and nx-27017 started once for both)
#   ./scripts/bench.sh compare-durable <before> <after> [rounds]   # the same on the durable default (SQLite in
#                                 # a fresh DATA_DIR each run): throughput (8 pairs), drain-10000
#   ./scripts/bench.sh durable    # the durable default (SQLite in DATA_DIR) next to in memory, in turns:
#                                 # throughput (8 pairs), drain-10000; then restart time with 100,000 messages
#   ./scripts/bench.sh encryption # encryption at rest off and on, in turns, on the durable default and on the
#                                 # full stack: throughput and drain, with chatd's CPU per message
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
mode=${1:-full}
log() { printf '==> %s\n' "$*" >&2; }

# The suite names this repository as a path package through a link, whatever the clone's directory is called.
mkdir -p Benchmarks/Suite/.deps && ln -sfn ../../.. Benchmarks/Suite/.deps/chatd
# SwiftPM keeps the suite's build plan across runs and does not see a source file added to this repository
# (the build then fails with "cannot find ... in scope"); dropping the plan makes it look again (seconds).
rm -f Benchmarks/Suite/.build/release/description.json Benchmarks/Suite/.build/release.yaml

if [ "$mode" = micro ]; then
    cd Benchmarks/Suite
    exec swift package --disable-sandbox benchmark --target ChatMicro
fi

if [ "$mode" = instructions ]; then
    if ! command -v valgrind >/dev/null; then
        log "Installing valgrind"
        sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends valgrind >/dev/null
    fi
    tool=${2:-}
    if [ -z "$tool" ]; then
        (cd Benchmarks/Suite && swift build -c release --product chatd-instructions >&2)
        tool=Benchmarks/Suite/.build/release/chatd-instructions
    fi
    # valgrind 3.19 cannot read this toolchain's DWARF 5: count a copy without debug information.
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cp "$tool" "$work/tool" && strip -g "$work/tool"
    # One cooperative thread and valgrind's fair scheduling: the engine's tasks then interleave the same way in
    # every run (with the default pool, the settlement loop's batches differ and an engine send varied by 2x).
    count() {
        LIBDISPATCH_COOPERATIVE_POOL_STRICT=1 valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file=/dev/null \
            "$work/tool" "$1" "$2" 2>&1 | awk '/Collected/ {print $4}'
    }
    n=2000
    printf '| operation | instructions per operation (median of 3) | runs |\n| --- | ---: | --- |\n'
    for operation in send-decode received-encode engine-send seal open; do
        # N and 2N operations in one process each: start-up and set-up cancel out in the difference.
        runs=()
        for _ in 1 2 3; do
            small=$(count "$operation" "$n"); large=$(count "$operation" $((2 * n)))
            [ -n "$small" ] && [ -n "$large" ] || { log "valgrind failed on $operation"; exit 1; }
            runs+=($(( (large - small) / n )))
        done
        median=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p)
        printf '| %s | %s | %s |\n' "$operation" "$median" "${runs[*]}"
    done
    exit 0
fi

if [ "$mode" = full ] || [ "$mode" = compare-full ] || [ "$mode" = nodes ] || [ "$mode" = encryption ]; then
    for package in redis-server rabbitmq-server python3-venv; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing="${missing:-} $package"
    done
    if [ -n "${missing:-}" ]; then
        log "Installing$missing"
        sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    [ -x .venv/bin/python ] || python3 -m venv .venv
    [ -x .venv/bin/nx-27017 ] || .venv/bin/pip install --quiet nx-27017
fi
# CHATD=<path> measures that binary instead of building this tree's (for a before/after comparison).
# compare-full: the same in turns, on the full stack (RabbitMQ, Redis and nx-27017 started once for both).
compare_stack=embedded
if [ "$mode" = compare-full ]; then mode=compare; compare_stack=full; fi
if [ "$mode" = compare-durable ]; then mode=compare; compare_stack=durable; fi
if [ "$mode" = compare ]; then
    before=${2:?"usage: ./scripts/bench.sh compare|compare-full|compare-durable <before-binary> <after-binary> [rounds]"}
    after=${3:?"usage: ./scripts/bench.sh compare|compare-full|compare-durable <before-binary> <after-binary> [rounds]"}
    rounds=${4:-6}
    chatd=$before
elif [ -n "${CHATD:-}" ]; then
    chatd=$CHATD
else
    log "Building chatd (release)"
    swift build -c release --product chatd >&2
    chatd="$root/.build/release/chatd"
fi
log "Building chatd-load (release)"
(cd Benchmarks/Suite && swift build -c release --product chatd-load >&2)
load="$root/Benchmarks/Suite/.build/release/chatd-load"

. scripts/lib/processes.sh
work=$(mktemp -d)
pids=()
cleanup() {
    stop_tree "${pids[@]:-}"
    rm -rf "$work"
}
trap cleanup EXIT
results="$work/results.jsonl"
: > "$results"

wait_port() { for _ in $(seq 1 600); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
# wait_chatd <port> <pid> <log>: waits until chatd listens; if it exits first (a port taken meanwhile), says why.
wait_chatd() {
    for _ in $(seq 1 600); do
        (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        if ! kill -0 "$2" 2>/dev/null; then echo "chatd exited before listening on $1:" >&2; tail -5 "$3" >&2; return 1; fi
        sleep 0.1
    done
    echo "chatd never listened on $1" >&2; tail -5 "$3" >&2; return 1
}

start_services() {
    # Every port below the kernel's ephemeral range (32768 and up), where closed connections linger in TIME_WAIT:
    # epmd refuses a port in that state.
    redis_port=$((21000 + RANDOM % 2000)); mongo_port=$((23000 + RANDOM % 2000)); rabbit_port=$((25000 + RANDOM % 2000))
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --logfile "$work/redis.log" --daemonize no >/dev/null 2>&1 &
    pids+=($!)
    .venv/bin/nx-27017 --host 127.0.0.1 -p "$mongo_port" --db memory --log-file "$work/nx.log" --pid-file "$work/nx.pid" >/dev/null 2>&1 &
    pids+=($!)
    # The node's own Erlang port mapper, started here so that it is stopped with the rest.
    epmd_port=$((rabbit_port + 4000))
    epmd -port "$epmd_port" -address 127.0.0.1 >/dev/null 2>&1 &
    pids+=($!)
    (
        export ERL_EPMD_PORT="$epmd_port" HOME="$work/rabbit" RABBITMQ_NODENAME="chatd-bench-$rabbit_port@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
            RABBITMQ_NODE_PORT="$rabbit_port" RABBITMQ_DIST_PORT=$((rabbit_port + 2000)) RABBITMQ_MNESIA_BASE="$work/rabbit/mnesia" \
            RABBITMQ_LOG_BASE="$work/rabbit/log" RABBITMQ_PID_FILE="$work/rabbit/rabbit.pid" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$work/rabbit/plugins" RABBITMQ_CONFIG_FILE="$work/rabbit/rabbitmq"
        mkdir -p "$HOME"
        exec /usr/lib/rabbitmq/bin/rabbitmq-server >/dev/null 2>&1
    ) &
    pids+=($!)
    wait_port "$redis_port"; wait_port "$mongo_port"; wait_port "$rabbit_port"
    ERL_EPMD_PORT="$epmd_port" HOME="$work/rabbit" /usr/lib/rabbitmq/bin/rabbitmqctl -n "chatd-bench-$rabbit_port@localhost" await_startup >/dev/null 2>&1 || sleep 5
}

bench_secret="chatd-benchmark-secret-0123456789-abcdefgh"

# run <mode> <rep>: one chatd, every scenario.
run() {
    # Below the kernel's ephemeral ports (32768 and up), which chatd's own connections to the services and the load
    # generator's take: a port picked there can be in use by the time chatd binds it.
    local stack=$1 rep=$2 port=$((31000 + RANDOM % 1700))
    # One load generator on one address sends for every user as fast as it can: the abuse limits (per-address
    # sessions and handshakes, per-user send rates) are off here, the connection cap above the 10,000 sockets.
    local env=(PORT="$port" HOST=127.0.0.1 LOG_LEVEL=warning NODE_ID="bench-$rep" JWT_SECRET="$bench_secret"
               SEND_RATE_PER_USER=0 FANOUT_RATE_PER_USER=0 HANDSHAKE_RATE_PER_ADDRESS=0 MAX_SESSIONS_PER_ADDRESS=0
               MAX_HTTP_CONNECTIONS=20000)
    local services=$stack
    [ "$mode" = compare ] && services=$compare_stack
    # encryption: <services>-plain or <services>-sealed.
    if [ "$mode" = encryption ]; then
        services=${stack%%-*}
        [ "${stack##*-}" = sealed ] && env+=(ENCRYPTION_KEY="$(head -c 32 /dev/urandom | base64)" ENCRYPTION_KEY_ID=bench)
    fi
    # Embedded means in memory here (the suite's history); "durable" is the default SQLite file.
    if [ "$services" = durable ]; then
        env+=(DATA_DIR="$work/data-$rep-$RANDOM")
    elif [ "$services" != full ]; then
        env+=(IN_MEMORY=true)
    fi
    if [ "$services" = full ]; then
        env+=(MONGODB_URI="mongodb://127.0.0.1:$mongo_port/bench-$stack-$rep" RABBITMQ_HOST=127.0.0.1 RABBITMQ_PORT="$rabbit_port"
              REDIS_HOST=127.0.0.1 REDIS_PORT="$redis_port")
    fi
    env "${env[@]}" "$chatd" serve 2>"$work/chatd-$stack-$rep.log" &
    local pid=$!
    pids+=($pid)
    wait_chatd "$port" "$pid" "$work/chatd-$stack-$rep.log"
    local common=(--url "http://127.0.0.1:$port" --server-pid "$pid" --secret "$bench_secret")
    scenario() {
        local name=$1; shift
        log "$stack #$rep: $name $*"
        if out=$("$load" "${common[@]}" "$@" 2>"$work/load.err"); then
            echo "$out" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d.update(mode='$stack', rep=$rep, name='$name'); print(json.dumps(d))" >> "$results"
        else
            log "scenario $name failed: $(tail -3 "$work/load.err")"
        fi
    }
    if [ "$mode" = encryption ] && [ "$services" = full ]; then
        scenario throughput --scenario throughput --messages 4000 --pairs 4 --window 16
        scenario drain-1000 --scenario drain --messages 1000
    elif [ "$mode" = encryption ]; then
        scenario throughput --scenario throughput --messages 20000 --pairs 8 --window 64
        scenario drain-10000 --scenario drain --messages 10000 --timeout 300
    elif [ "$mode" = durable ]; then
        scenario throughput --scenario throughput --messages 20000 --pairs 8 --window 64
        scenario drain-10000 --scenario drain --messages 10000 --timeout 300
    elif [ "$mode" = compare ] && [ "$services" = durable ]; then
        scenario throughput --scenario throughput --messages 20000 --pairs 8 --window 64
        scenario drain-10000 --scenario drain --messages 10000 --timeout 300
    elif [ "$mode" = compare ] && [ "$services" = full ]; then
        scenario latency-200 --scenario latency --messages 1000 --rate 200
        scenario throughput --scenario throughput --messages 4000 --pairs 4 --window 16
        scenario drain-1000 --scenario drain --messages 1000
    elif [ "$mode" = compare ]; then
        scenario latency --scenario latency --messages 5000 --rate 1000
        scenario throughput --scenario throughput --messages 40000 --pairs 8 --window 64
        scenario drain-1000 --scenario drain --messages 1000
    elif [ "$mode" = quick ]; then
        scenario latency --scenario latency --messages 2000 --rate 1000
        scenario throughput --scenario throughput --messages 10000 --pairs 4 --window 64
        scenario drain-1000 --scenario drain --messages 1000
        scenario connections-1000 --scenario connections --connections 1000
    elif [ "$stack" = embedded ]; then
        scenario latency --scenario latency --messages 5000 --rate 1000
        scenario throughput --scenario throughput --messages 40000 --pairs 8 --window 64
        scenario drain-50 --scenario drain --messages 50
        scenario drain-1000 --scenario drain --messages 1000
        scenario drain-10000 --scenario drain --messages 10000 --timeout 300
        scenario connections-10000 --scenario connections --connections 10000
    else
        # nx-27017 (Python on SQLite) takes a few hundred messages a second: offered loads it can follow.
        scenario latency-200 --scenario latency --messages 1000 --rate 200
        scenario throughput --scenario throughput --messages 4000 --pairs 4 --window 16
        scenario drain-50 --scenario drain --messages 50
        scenario drain-1000 --scenario drain --messages 1000
        scenario drain-10000 --scenario drain --messages 10000 --timeout 300
        scenario connections-1000 --scenario connections --connections 1000
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# nodes: two chatd nodes on one full stack; each rep runs every scenario with the receivers on the sender's node
# ("same-node") and on the other one ("cross-node"), alternately first.
run_nodes() {
    local rep=$1 port1=$((40000 + RANDOM % 2000)) port2=$((42000 + RANDOM % 2000))
    local env=(HOST=127.0.0.1 LOG_LEVEL=warning JWT_SECRET="$bench_secret" SEND_RATE_PER_USER=0 FANOUT_RATE_PER_USER=0
               HANDSHAKE_RATE_PER_ADDRESS=0 MAX_SESSIONS_PER_ADDRESS=0
               MONGODB_URI="mongodb://127.0.0.1:$mongo_port/bench-nodes-$rep" RABBITMQ_HOST=127.0.0.1 RABBITMQ_PORT="$rabbit_port"
               REDIS_HOST=127.0.0.1 REDIS_PORT="$redis_port")
    env "${env[@]}" PORT="$port1" NODE_ID="bench-node-1" "$chatd" serve 2>"$work/chatd-node1-$rep.log" &
    local pid1=$!
    env "${env[@]}" PORT="$port2" NODE_ID="bench-node-2" "$chatd" serve 2>"$work/chatd-node2-$rep.log" &
    local pid2=$!
    pids+=($pid1 $pid2)
    wait_port "$port1"; wait_port "$port2"
    sleep 3  # each node declares its inbox as its engine starts
    local same=(--url "http://127.0.0.1:$port1" --server-pid "$pid1" --receiver-pid "$pid2" --secret "$bench_secret")
    local cross=("${same[@]}" --receiver-url "http://127.0.0.1:$port2")
    nodes_scenario() {
        local name=$1 placement=$2; shift 2
        local args=("${same[@]}")
        [ "$placement" = cross-node ] && args=("${cross[@]}")
        log "nodes #$rep: $placement $name $*"
        if out=$("$load" "${args[@]}" "$@" 2>"$work/load.err"); then
            echo "$out" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d.update(mode='$placement', rep=$rep, name='$name'); print(json.dumps(d))" >> "$results"
        else
            log "scenario $name ($placement) failed: $(tail -3 "$work/load.err")"
        fi
    }
    if [ $((rep % 2)) -eq 1 ]; then order=(same-node cross-node); else order=(cross-node same-node); fi
    for placement in "${order[@]}"; do
        nodes_scenario latency-100 "$placement" --scenario latency --messages 1000 --rate 100
        nodes_scenario throughput "$placement" --scenario throughput --messages 2000 --pairs 4 --window 16
    done
    kill -TERM "$pid1" "$pid2" 2>/dev/null || true
    wait "$pid1" "$pid2" 2>/dev/null || true
}

reps=3
[ "$mode" = quick ] && reps=1
if [ "$mode" = nodes ]; then
    log "Starting RabbitMQ, Redis and nx-27017 on loopback"
    start_services
    for rep in $(seq 1 "$reps"); do run_nodes "$rep"; done
elif [ "$mode" = durable ]; then
    for rep in $(seq 1 "$reps"); do
        if [ $((rep % 2)) -eq 1 ]; then order=(embedded durable); else order=(durable embedded); fi
        for stack in "${order[@]}"; do run "$stack" "$rep"; done
    done
    # Restart time: 100,000 messages stored, kill -9, then start to listening on the same DATA_DIR, three times.
    data="$work/data-restart"; port=$((45000 + RANDOM % 1000))
    restart_env=(PORT="$port" PORT_FILE="$work/port" HOST=127.0.0.1 LOG_LEVEL=warning JWT_SECRET="$bench_secret" DATA_DIR="$data"
                 SEND_RATE_PER_USER=0 FANOUT_RATE_PER_USER=0 HANDSHAKE_RATE_PER_ADDRESS=0 MAX_SESSIONS_PER_ADDRESS=0)
    env "${restart_env[@]}" "$chatd" serve 2>"$work/chatd-fill.log" &
    pid=$!; pids+=($pid); wait_port "$port"
    log "durable: storing 100,000 messages"
    "$load" --url "http://127.0.0.1:$port" --server-pid "$pid" --secret "$bench_secret" --scenario throughput --messages 100000 --pairs 8 --window 64 --timeout 600 >/dev/null 2>"$work/load.err"
    kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
    for attempt in 1 2 3; do
        rm -f "$work/port"
        started=$(date +%s%N)
        env "${restart_env[@]}" "$chatd" serve 2>"$work/chatd-restart.log" &
        pid=$!; pids+=($pid)
        until [ -s "$work/port" ]; do sleep 0.005; done
        echo "{\"mode\": \"durable\", \"rep\": $attempt, \"name\": \"restart-100000\", \"restart_ms\": $(( ($(date +%s%N) - started) / 1000000 ))}" >> "$results"
        kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
    done
elif [ "$mode" = encryption ]; then
    log "Starting RabbitMQ, Redis and nx-27017 on loopback"
    start_services
    for rep in $(seq 1 "$reps"); do
        if [ $((rep % 2)) -eq 1 ]; then order=(plain sealed); else order=(sealed plain); fi
        for services in durable full; do
            for which in "${order[@]}"; do run "$services-$which" "$rep"; done
        done
    done
elif [ "$mode" = compare ]; then
    if [ "$compare_stack" = full ]; then
        log "Starting RabbitMQ, Redis and nx-27017 on loopback"
        start_services
    fi
    # Each round runs both binaries, alternately first, on fresh processes.
    for round in $(seq 1 "$rounds"); do
        if [ $((round % 2)) -eq 1 ]; then order=(before after); else order=(after before); fi
        for which in "${order[@]}"; do
            if [ "$which" = before ]; then chatd=$before; else chatd=$after; fi
            run "$which" "$round"
        done
    done
else
    for rep in $(seq 1 "$reps"); do run embedded "$rep"; done
fi
if [ "$mode" = full ]; then
    log "Starting RabbitMQ, Redis and nx-27017 on loopback"
    start_services
    for rep in $(seq 1 "$reps"); do run full "$rep"; done
fi

machine="$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
table=$(python3 "$root/scripts/bench-table.py" "$results" "$machine" "$(date -u +%Y-%m-%d)" "./scripts/bench.sh")
echo "$table"
if [ "$mode" = full ]; then
    python3 - "$root/Docs/PERFORMANCE.md" "$table" <<'PY'
import re, sys
path, table = sys.argv[1], sys.argv[2]
text = open(path).read()
block = "<!-- suite:begin -->\n" + table + "\n<!-- suite:end -->"
if "<!-- suite:begin -->" in text:
    text = re.sub(r"<!-- suite:begin -->.*?<!-- suite:end -->", lambda m: block, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n" + block + "\n"
open(path, "w").write(text)
PY
    log "Docs/PERFORMANCE.md updated"
fi
