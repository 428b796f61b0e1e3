#!/usr/bin/env bash
# 1 KiB produce against the disk's and the page cache's write rates, same
# disk, same run (issue 17's "at least 90% of the disk's sustained write
# rate under interval, within 2x of the page cache's under never").
#
#   benches/disk_rate.sh
#   REPEAT=5 SECS=20 DIR=/mnt/data/spool-rate benches/disk_rate.sh
#
# Each pass measures, one after the other on the same file system:
#   dd_direct  `dd bs=1M oflag=direct` of DD_MIB: what the disk takes
#              (the better of two)
#   dd_cache   `dd bs=1M` of DD_CACHE_MIB without oflag: into the page
#              cache, no fsync (the best of three: the first write after a
#              `sync` sometimes ran at the disk's rate, 0.9-1.2 GB/s, where
#              the next ran at 5.5; and 1 GiB: a larger file reaches the
#              kernel's dirty limit and then runs at the disk's rate, 4 GiB
#              measured 0.84-0.88 GB/s here)
#   then `spool bench --size 1024 --consumers 0` for SECS seconds into a
#   topic at a 1 GiB retention limit (per partition) (the steady state of a broker that
#   has run a while, and what keeps a long run from filling the disk),
#   `interval` and `never`, three ways: the producer appending through the
#   embedded API (`--in-process`: what the storage path takes), over
#   loopback TCP to the broker in the bench's process (`_tcp`), and over
#   loopback TCP to a separate `spool serve` (`_serve`, on PORT); and
#   against `spool serve` with two producers on two partitions (`_serve_2p`:
#   one connection's task, reading and appending each batch in turn, is
#   one core's work). Over TCP the client and the broker share this
#   machine's cores.
# Between runs `sync` lets the previous run's dirty pages reach the disk.
# For each bench run it also reads how many bytes the device wrote while
# the run lasted (/proc/diskstats), against the bytes produced.
# Prints the median and range of each over REPEAT passes and the ratios the
# targets name.
#
# Settings (environment): REPEAT (3), SECS (10), DD_MIB (4096),
# DD_CACHE_MIB (1024), PORT (7499), DIR (the
# directory to write in: default target/disk-rate, removed at the end),
# SPOOL (the binary: default target/release/spool, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${REPEAT:-3}
SECS=${SECS:-10}
DD_MIB=${DD_MIB:-4096}
DD_CACHE_MIB=${DD_CACHE_MIB:-1024}
DIR=${DIR:-target/disk-rate}
SPOOL=${SPOOL:-target/release/spool}
PORT=${PORT:-7499}
RETENTION=$((1024 * 1024 * 1024))

if [ ! -x "$SPOOL" ]; then
    cargo build --release --locked --bin spool
fi
mkdir -p "$DIR"
SERVER=
trap '[ -z "$SERVER" ] || kill "$SERVER" 2>/dev/null; rm -rf "$DIR"' EXIT
if ss -ltnH "sport = :$PORT" | grep -q .; then
    echo "port $PORT is taken: set PORT" >&2
    exit 1
fi
RESULTS=$(mktemp)

# dd's own figure (bytes over seconds, from its last line), the best of
# `tries`: the targets are measured against the faster reading.
dd_rate() { # tries, MiB, dd's flags
    local tries=$1 mib=$2 best=0 rate
    shift 2
    for _ in $(seq 1 "$tries"); do
        rate=$(dd if=/dev/zero of="$DIR/dd" bs=1M count="$mib" "$@" 2>&1 |
            awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") secs = $(i-1); print $1 / secs / 1e6 }')
        rm -f "$DIR/dd"
        sync
        best=$(python3 -c "print(max(float('$best'), float('${rate:-0}')))")
    done
    echo "$best"
}

# Sectors the device under DIR has written (field 10 of /proc/diskstats;
# 0 if it cannot be found, e.g. on a device-mapper or network file system).
DEVICE=$(basename "$(df --output=source "$DIR" | tail -1)")
sectors_written() {
    awk -v d="$DEVICE" '$3 == d { print $10; found = 1 } END { if (!found) print 0 }' /proc/diskstats
}

# The bench's produce rate, and the share of what it produced that the
# device wrote while it ran: under `interval` about 1, which shows the
# appends reached the disk within the run. The callers own the data
# directory (a server may be running on it).
spool_rate() {
    local before after json
    before=$(sectors_written)
    json=$("$SPOOL" bench --size 1024 --consumers 0 \
        --duration-secs "$SECS" --retention-bytes "$RETENTION" --json "$@" 2>/dev/null)
    after=$(sectors_written)
    python3 -c "
import json, sys
r = json.loads(sys.argv[1])
assert not r['errors'], r['errors']
written = (int(sys.argv[3]) - int(sys.argv[2])) * 512
print(r['produce_mb_per_sec'], written / (r['messages_produced'] * r['size']))
" "$json" "$before" "$after"
}

# spool_rate with the broker in the bench's process, on a fresh directory;
# afterwards `sync` lets its dirty pages reach the disk before the next run.
local_rate() {
    rm -rf "$DIR/spool"
    spool_rate --data "$DIR/spool" "$@"
    rm -rf "$DIR/spool"
    sync
}

# spool_rate against a `spool serve` of its own on a fresh directory,
# stopped after the run.
serve_rate() {
    rm -rf "$DIR/spool"
    "$SPOOL" serve --listen "127.0.0.1:$PORT" --data "$DIR/spool" --metrics 127.0.0.1:0 \
        >/dev/null 2>&1 &
    SERVER=$!
    for _ in $(seq 1 100); do
        ss -ltnH "sport = :$PORT" | grep -q . && break
        sleep 0.1
    done
    spool_rate --addr "127.0.0.1:$PORT" "$@"
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
    rm -rf "$DIR/spool"
    sync
}

# One figure into the results; a failed run ends the script (a plain
# `echo "$(cmd)"` would record an empty figure instead).
record() {
    local name=$1 value
    shift
    value=$("$@")
    [ -n "$value" ] || { echo "$name: no figure" >&2; exit 1; }
    echo "$name $value" >>"$RESULTS"
    echo "  $name $value" >&2
}

for pass in $(seq 1 "$REPEAT"); do
    echo "pass $pass of $REPEAT" >&2
    record dd_direct dd_rate 2 "$DD_MIB" oflag=direct
    record interval_in_process local_rate --in-process --sync interval
    record interval_tcp local_rate --sync interval
    record interval_serve serve_rate --sync interval
    record interval_serve_2p serve_rate --sync interval --producers 2 --partitions 2
    record dd_cache dd_rate 3 "$DD_CACHE_MIB"
    record never_in_process local_rate --in-process --sync never
    record never_tcp local_rate --sync never
    record never_serve serve_rate --sync never
    record never_serve_2p serve_rate --sync never --producers 2 --partitions 2
done

python3 - "$RESULTS" "$REPEAT" "$SECS" <<'PY'
import statistics, sys
rows, disk = {}, {}
for line in open(sys.argv[1]):
    name, value, *written = line.split()
    rows.setdefault(name, []).append(float(value))
    if written:
        disk.setdefault(name, []).append(float(written[0]))
med = {k: statistics.median(v) for k, v in rows.items()}
print(f"1 KiB produce, {sys.argv[3]} s runs at a 1 GiB retention limit, medians of {sys.argv[2]} passes (range)")
print("| what | MB/s | range | written by the disk during the run / produced |")
print("|---|---:|---:|---:|")
for name in ["dd_direct", "interval_in_process", "interval_tcp", "interval_serve", "interval_serve_2p",
             "dd_cache", "never_in_process", "never_tcp", "never_serve", "never_serve_2p"]:
    v = rows[name]
    w = f"{statistics.median(disk[name]):.2f}" if name in disk else ""
    print(f"| {name} | {med[name]:.0f} | {min(v):.0f}-{max(v):.0f} | {w} |")
print()
for run, ref, target in [
    ("interval_in_process", "dd_direct", "at least 0.90"),
    ("interval_tcp", "dd_direct", "at least 0.90"),
    ("interval_serve", "dd_direct", "at least 0.90"),
    ("interval_serve_2p", "dd_direct", "at least 0.90"),
    ("never_in_process", "dd_cache", "at least 0.50"),
    ("never_tcp", "dd_cache", "at least 0.50"),
    ("never_serve", "dd_cache", "at least 0.50"),
    ("never_serve_2p", "dd_cache", "at least 0.50"),
]:
    print(f"{run} / {ref}: {med[run] / med[ref]:.2f} (target {target})")
PY
rm -f "$RESULTS"
