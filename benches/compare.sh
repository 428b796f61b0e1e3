#!/usr/bin/env bash
# Spool against Redis Streams and NATS JetStream, same machine, same run.
#
#   benches/compare.sh            # MESSAGES=500000 SIZE=100 REPEAT=3 by default
#   MESSAGES=1000000 SIZE=1024 benches/compare.sh
#
# Installs redis-server and nats-server from the machine's Debian packages if
# missing, starts them on loopback with the durability settings named in the
# table (Redis: appendonly with appendfsync everysec, and always; NATS:
# JetStream file storage, whose fsync policy 2.9 does not let us set), runs
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

if ! command -v redis-server >/dev/null || ! command -v nats-server >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server nats-server >/dev/null
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/redis-everysec" "$WORK/redis-always" "$WORK/nats"
redis-server --port 6391 --bind 127.0.0.1 --dir "$WORK/redis-everysec" --appendonly yes --appendfsync everysec --save "" >"$WORK/r1.log" 2>&1 &
PIDS+=($!)
redis-server --port 6392 --bind 127.0.0.1 --dir "$WORK/redis-always" --appendonly yes --appendfsync always --save "" >"$WORK/r2.log" 2>&1 &
PIDS+=($!)
nats-server -js -sd "$WORK/nats" -p 4333 -a 127.0.0.1 >"$WORK/nats.log" 2>&1 &
PIDS+=($!)

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
for mode in queue stream; do
    run "spool $mode interval:100" env RUST_LOG=error target/release/spool bench --json --warmup-secs 0 \
        --messages "$MESSAGES" --size "$SIZE" --partitions 1 --mode "$mode" --sync interval:100
    run "spool $mode always" env RUST_LOG=error target/release/spool bench --json --warmup-secs 0 \
        --messages "$MESSAGES" --size "$SIZE" --partitions 1 --mode "$mode" --sync always
    run "redis $mode everysec" "$PEERS" --peer redis --url redis://127.0.0.1:6391 --messages "$MESSAGES" --size "$SIZE" --mode "$mode" --durability everysec
    run "redis $mode always" "$PEERS" --peer redis --url redis://127.0.0.1:6392 --messages "$MESSAGES" --size "$SIZE" --mode "$mode" --durability always
    run "nats $mode file" "$PEERS" --peer nats --url nats://127.0.0.1:4333 --messages "$MESSAGES" --size "$SIZE" --mode "$mode" --durability file
done
done

python3 - "$RESULTS" "$MESSAGES" "$SIZE" "$REPEAT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
# Median of the passes, field by field (these machines are noisy).
runs = {}
for r in rows:
    runs.setdefault(r["label"], []).append(r)
fields = ["produce_msgs_per_sec", "consume_msgs_per_sec", "e2e_p50_us", "e2e_p99_us"]
by = {label: {f: statistics.median(r[f] for r in rs) for f in fields} for label, rs in runs.items()}
print(f"\n{sys.argv[2]} messages of {sys.argv[3]} B, 1 producer + 1 consumer, loopback, median of {sys.argv[4]} passes\n")
print(f"| system | mode | durability | produce msg/s | consume msg/s | e2e p50 us | e2e p99 us | Spool consume / this |")
print(f"|---|---|---|---:|---:|---:|---:|---:|")
for mode in ["queue", "stream"]:
    for label in [f"spool {mode} interval:100", f"spool {mode} always", f"redis {mode} everysec", f"redis {mode} always", f"nats {mode} file"]:
        r = by.get(label)
        if r is None:
            continue
        system, _, durability = label.split(" ", 2)
        # Compare like with like: Spool interval vs everysec/file, always vs always.
        spool = by.get(f"spool {mode} always" if durability == "always" else f"spool {mode} interval:100")
        ratio = "" if system == "spool" or spool is None else f"{spool['consume_msgs_per_sec'] / r['consume_msgs_per_sec']:.1f}x"
        print(f"| {system} | {mode} | {durability} | {r['produce_msgs_per_sec']:,.0f} | {r['consume_msgs_per_sec']:,.0f} | {r['e2e_p50_us']:,.0f} | {r['e2e_p99_us']:,.0f} | {ratio} |")
PY
