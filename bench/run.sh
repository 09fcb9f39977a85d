#!/usr/bin/env bash
# Tandem benchmark: fio's nbd engine against nbdkit file, qemu-nbd and Tandem volumes (1 and 3
# replicas), plus rebuild throughput against nbdcopy and application IOPS during a rebuild.
#
# Usage: bench/run.sh            (from anywhere; builds target/release/tandem first)
#
# Environment (all optional):
#   RUNTIME=10        seconds of each fio measurement (--time_based), after RAMP seconds of ramp
#   RAMP=1            fio --ramp_time
#   SEQ_DEPTH=8       iodepth of the 1 MiB sequential runs (8 MiB in flight)
#   BENCH_BASE=/tmp   where the work directory goes (Tandem's data dir and the nbdkit/qemu-nbd
#                     files are all inside it, so on the same filesystem)
#   TANDEM_BIN=...    use this binary instead of building target/release/tandem
#   KEEP=1            keep the work directory (fio JSON, logs) instead of removing it
#   MAX_SECONDS=900   the whole run is killed (and cleaned up) after this long
#
# Prints one markdown table and writes it, with the details, to bench/results.md.
# Not a test: CI does not run it. Needs fio (with the nbd engine), nbdkit, qemu-nbd, nbdcopy,
# nbdinfo, jq, python3, awk.
set -euo pipefail

RUNTIME=${RUNTIME:-10}
RAMP=${RAMP:-1}
SEQ_DEPTH=${SEQ_DEPTH:-8}
MAX_SECONDS=${MAX_SECONDS:-900}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
SIZE_MIB=1024                      # every export in the fio runs: 1 GiB
REBUILD_LOAD_SIZE_MIB=2048         # the volume rebuilt under load in (f)
RESULTS=$BENCH_DIR/results.md
T_START=$(date +%s)

log() { printf '[%4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

for tool in fio nbdkit qemu-nbd nbdcopy nbdinfo jq python3 awk timeout; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

# --- work directory, cleanup -------------------------------------------------------------------

WORK=$(mktemp -d "${BENCH_BASE:-/tmp}/tandem-bench.XXXXXX")
export TANDEM_DATA_DIR=$WORK/tandem
mkdir -p "$TANDEM_DATA_DIR" "$WORK/fio" "$WORK/files"
PIDS=()          # every background process this script started
TANDEM_UP=0

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ "$TANDEM_UP" = 1 ]; then
        timeout -k 5 60 "$TANDEM" down >/dev/null 2>&1 || log "tandem down failed"
    fi
    if [ "${KEEP:-0}" = 1 ] || [ "$status" != 0 ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A watchdog: the whole run is bounded.
(
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$MAX_SECONDS" &
    sleeper=$!
    wait "$sleeper"
    echo "bench: over ${MAX_SECONDS}s, stopping" >&2
    kill -TERM $$
) &
PIDS+=($!)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_nbd() { # URI: until the export answers (10 s)
    for _ in $(seq 1 100); do
        timeout 5 nbdinfo --size "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "no NBD server at $1"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# --- tandem ------------------------------------------------------------------------------------

if [ -n "${TANDEM_BIN:-}" ]; then
    TANDEM=$TANDEM_BIN
else
    log "building target/release/tandem"
    (cd "$REPO" && timeout 1800 cargo build --release -p tandem -q) || die "cargo build"
    TANDEM=$REPO/target/release/tandem
fi
t() { timeout -k 5 60 "$TANDEM" "$@"; }

# --- fio ---------------------------------------------------------------------------------------

# fio_run NAME URI RW BS DEPTH [extra fio options...]: JSON in $WORK/fio/NAME.json
fio_run() {
    local name=$1 uri=$2 rw=$3 bs=$4 depth=$5
    shift 5
    log "fio $name: $rw bs=$bs iodepth=$depth ${RUNTIME}s"
    timeout -k 5 $((RUNTIME + RAMP + 60)) fio --name="$name" --ioengine=nbd --uri="$uri" \
        --rw="$rw" --bs="$bs" --iodepth="$depth" --size="${SIZE_MIB}m" \
        --runtime="$RUNTIME" --ramp_time="$RAMP" --time_based \
        --randrepeat=0 --norandommap --lat_percentiles=1 \
        --output-format=json --output="$WORK/fio/$name.json" "$@" \
        >"$WORK/fio/$name.out" 2>&1 || die "fio $name (see $WORK/fio/$name.out)"
    local errors
    errors=$(jq '.jobs[0].error' "$WORK/fio/$name.json")
    [ "$errors" = 0 ] || die "fio $name reported error $errors"
}
# jq on a run's JSON: fio_get NAME FILTER
fio_get() { jq -r ".jobs[0] | $2" "$WORK/fio/$1.json"; }

declare -A R   # results: R[label.metric]

# The five measurements on one export (already filled with data).
suite() { # LABEL URI
    local label=$1 uri=$2
    fio_run "$label-randwrite" "$uri" randwrite 4k 32
    R[$label.rw4k]=$(fio_get "$label-randwrite" '.write.iops')
    fio_run "$label-randread" "$uri" randread 4k 32
    R[$label.rr4k]=$(fio_get "$label-randread" '.read.iops')
    fio_run "$label-seqwrite" "$uri" write 1M "$SEQ_DEPTH"
    R[$label.sw1m]=$(fio_get "$label-seqwrite" '.write.bw_bytes / 1048576')
    fio_run "$label-seqread" "$uri" read 1M "$SEQ_DEPTH"
    R[$label.sr1m]=$(fio_get "$label-seqread" '.read.bw_bytes / 1048576')
    fio_run "$label-qd1" "$uri" randwrite 4k 1
    R[$label.qd1iops]=$(fio_get "$label-qd1" '.write.iops')
    R[$label.qd1mean]=$(fio_get "$label-qd1" '.write.lat_ns.mean / 1000')
    R[$label.qd1p99]=$(fio_get "$label-qd1" '.write.lat_ns.percentile["99.000000"] / 1000')
}

# nbdcopy SRC DST with --flush; sets COPY_MIBS
copy_timed() {
    local a b
    a=$(now)
    timeout -k 5 300 nbdcopy --flush "$1" "$2" || die "nbdcopy $1 -> $2"
    b=$(now)
    COPY_MIBS=$(awk -v a="$a" -v b="$b" -v m="$SIZE_MIB" 'BEGIN { printf "%.1f", m / (b - a) }')
}

# --- machine -----------------------------------------------------------------------------------

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
OTHERS_BEFORE=$(pgrep -c -x 'rustc|cargo|cc1|cc1plus|ld|fio|nbdkit|qemu-nbd' || true)
log "load average $LOAD_BEFORE; other compiler/benchmark processes running: $OTHERS_BEFORE"
log "work directory $WORK"

log "random data: 1 GiB"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$WORK/files/random.img"

# --- (a) nbdkit file ---------------------------------------------------------------------------

cp "$WORK/files/random.img" "$WORK/files/nbdkit.img"
PORT=$(free_port)
nbdkit -f -i 127.0.0.1 -p "$PORT" file "$WORK/files/nbdkit.img" >"$WORK/nbdkit.log" 2>&1 &
NBDKIT_PID=$!
PIDS+=("$NBDKIT_PID")
wait_nbd "nbd://127.0.0.1:$PORT"
log "(a) nbdkit file on nbd://127.0.0.1:$PORT (filled from the random file)"
suite nbdkit "nbd://127.0.0.1:$PORT"
kill -TERM "$NBDKIT_PID"
wait "$NBDKIT_PID" 2>/dev/null || true
rm -f "$WORK/files/nbdkit.img"

# --- (b) qemu-nbd --cache=writeback ------------------------------------------------------------

cp "$WORK/files/random.img" "$WORK/files/qemu.img"
PORT=$(free_port)
qemu-nbd -f raw -t --cache=writeback -b 127.0.0.1 -p "$PORT" "$WORK/files/qemu.img" \
    >"$WORK/qemu-nbd.log" 2>&1 &
QEMU_PID=$!
PIDS+=("$QEMU_PID")
wait_nbd "nbd://127.0.0.1:$PORT"
log "(b) qemu-nbd --cache=writeback on nbd://127.0.0.1:$PORT"
suite qemu "nbd://127.0.0.1:$PORT"
kill -TERM "$QEMU_PID"
wait "$QEMU_PID" 2>/dev/null || true
rm -f "$WORK/files/qemu.img"

# --- Tandem cluster ----------------------------------------------------------------------------

log "tandem up (3 nodes)"
TANDEM_UP=1
timeout -k 5 120 "$TANDEM" up --port 0 --pool-size 8G >"$WORK/tandem-up.log" 2>&1 ||
    die "tandem up (see $WORK/tandem-up.log)"

volume_create() { # NAME SIZE REPLICAS
    t volume create "$1" --size "$2" --replicas "$3" >>"$WORK/tandem-volumes.log" 2>&1 ||
        die "tandem volume create $1 (see $WORK/tandem-volumes.log)"
    local uri
    uri=$(t volume uri "$1") || die "tandem volume uri $1"
    wait_nbd "$uri"
    echo "$uri"
}
volume_delete() { t volume delete "$1" >>"$WORK/tandem-volumes.log" 2>&1 || log "delete $1 failed"; }

# Fills a 1 GiB volume from the random file; sets R[LABEL.fill]
fill_from_random() { # LABEL URI
    copy_timed "$WORK/files/random.img" "$2"
    R[$1.fill]=$COPY_MIBS
    log "filled $1 at $COPY_MIBS MiB/s (nbdcopy --flush)"
}

# --- (c) (d) Tandem volumes --------------------------------------------------------------------

URI=$(volume_create bench1 1Gi 1)
log "(c) Tandem, 1 replica: $URI"
fill_from_random tandem1 "$URI"
suite tandem1 "$URI"
volume_delete bench1

URI=$(volume_create bench3 1Gi 3)
log "(d) Tandem, 3 replicas: $URI"
fill_from_random tandem3 "$URI"
suite tandem3 "$URI"
volume_delete bench3

# --- rebuild machinery -------------------------------------------------------------------------

cvr_json() { t get cvr -n openebs -l "cstorvolume.openebs.io/name=$1" -o json; }

# add_replica VOLUME: adds a replica in a pool the volume is not in; sets NEW_POOL, T_PATCH
add_replica() {
    local vol=$1 pools all
    pools=$(t get cvc "$vol" -n openebs -o json | jq -c '[.status.poolInfo[]]') ||
        die "get cvc $vol"
    all=$(t get cspi -n openebs -o json | jq -c '[.items[].metadata.name]') || die "get cspi"
    NEW_POOL=$(jq -rn --argjson have "$pools" --argjson all "$all" '($all - $have)[0]')
    [ "$NEW_POOL" != null ] || die "no free pool for $vol"
    local patch
    patch=$(jq -cn --argjson have "$pools" --arg new "$NEW_POOL" \
        '{spec: {policy: {replicaPoolInfo: ([$have[] | {poolName: .}] + [{poolName: $new}])}}}')
    T_PATCH=$(now)
    t patch cvc "$vol" -n openebs --type merge -p "$patch" >>"$WORK/tandem-volumes.log" 2>&1 ||
        die "patch cvc $vol"
    log "$vol: replica added in pool $NEW_POOL"
}

# wait_healthy VOLUME POOL: polls the new replica's CVR until Healthy (180 s). Sets
# T_RECON (first seen reconstructing), T_HEALTHY, RESYNC_BYTES, RESYNC_FULL, PHASES.
wait_healthy() {
    local vol=$1 pool=$2 deadline status phase
    deadline=$(($(date +%s) + 180))
    T_RECON="" PHASES=""
    while :; do
        status=$(cvr_json "$vol" | jq -c --arg pool "$pool" \
            '.items[] | select(.metadata.labels["cstorpoolinstance.openebs.io/name"] == $pool)
             | .status') || status='{}'
        [ -n "$status" ] || status='{}'
        phase=$(jq -r '.phase // "none"' <<<"$status")
        case " $PHASES " in *" $phase "*) ;; *) PHASES="$PHASES $phase" ;; esac
        if [ -z "$T_RECON" ] && { [ "$phase" = ReconstructingNewReplica ] ||
            [ "$(jq '.rebuild != null' <<<"$status")" = true ]; }; then
            T_RECON=$(now)
        fi
        if [ "$phase" = Healthy ] && [ "$(jq '.lastResync != null' <<<"$status")" = true ]; then
            T_HEALTHY=$(now)
            RESYNC_BYTES=$(jq '.lastResync.bytes' <<<"$status")
            RESYNC_FULL=$(jq '.lastResync.full' <<<"$status")
            [ -n "$T_RECON" ] || T_RECON=$T_HEALTHY
            echo "$status" >>"$WORK/tandem-volumes.log"
            return 0
        fi
        [ "$(date +%s)" -lt "$deadline" ] || die "$vol: the new replica in $pool not Healthy after 180 s (phases:$PHASES)"
        sleep 0.2
    done
}

# --- (e) rebuild throughput vs nbdcopy ---------------------------------------------------------

URI=$(volume_create rebuild1 1Gi 1)
log "(e) rebuild: filling rebuild1 ($URI)"
fill_from_random rebuild1 "$URI"
add_replica rebuild1
wait_healthy rebuild1 "$NEW_POOL"
R[rebuild.secs]=$(elapsed "$T_PATCH" "$T_HEALTHY")
R[rebuild.copysecs]=$(elapsed "$T_RECON" "$T_HEALTHY")
R[rebuild.bytes]=$RESYNC_BYTES
R[rebuild.full]=$RESYNC_FULL
R[rebuild.phases]=$PHASES
R[rebuild.mibs]=$(awk -v b="$RESYNC_BYTES" -v s="${R[rebuild.secs]}" 'BEGIN { printf "%.1f", b / 1048576 / s }')
R[rebuild.copymibs]=$(awk -v b="$RESYNC_BYTES" -v s="${R[rebuild.copysecs]}" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s; else print "n/a" }')
log "rebuild: ${RESYNC_BYTES} bytes, ${R[rebuild.secs]} s patch->Healthy, ${R[rebuild.mibs]} MiB/s"
volume_delete rebuild1

# The peer: nbdcopy of the same 1 GiB between two nbdkit file exports.
truncate -s $((SIZE_MIB << 20)) "$WORK/files/copy-dst.img"
SRC_PORT=$(free_port)
nbdkit -f -r -i 127.0.0.1 -p "$SRC_PORT" file "$WORK/files/random.img" >"$WORK/nbdkit-src.log" 2>&1 &
SRC_PID=$!
PIDS+=("$SRC_PID")
DST_PORT=$(free_port)
nbdkit -f -i 127.0.0.1 -p "$DST_PORT" file "$WORK/files/copy-dst.img" >"$WORK/nbdkit-dst.log" 2>&1 &
DST_PID=$!
PIDS+=("$DST_PID")
wait_nbd "nbd://127.0.0.1:$SRC_PORT"
wait_nbd "nbd://127.0.0.1:$DST_PORT"
copy_timed "nbd://127.0.0.1:$SRC_PORT" "nbd://127.0.0.1:$DST_PORT"
R[nbdcopy.mibs]=$COPY_MIBS
log "nbdcopy nbdkit file -> nbdkit file: $COPY_MIBS MiB/s"
cmp -s "$WORK/files/random.img" "$WORK/files/copy-dst.img" || die "nbdcopy result differs"
kill -TERM "$SRC_PID" "$DST_PID"
wait "$SRC_PID" "$DST_PID" 2>/dev/null || true
rm -f "$WORK/files/copy-dst.img"

# --- (f) application IOPS during a rebuild -----------------------------------------------------

SIZE_MIB=$REBUILD_LOAD_SIZE_MIB
URI=$(volume_create rebuild2 2Gi 2)
log "(f) IOPS during a rebuild: filling rebuild2 ($URI, 2 GiB, 2 replicas)"
timeout -k 5 300 fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 \
    --size="${SIZE_MIB}m" --output-format=json --output="$WORK/fio/fill.json" \
    >"$WORK/fio/fill.out" 2>&1 || die "fio fill of rebuild2"
fio_run steady "$URI" randwrite 4k 32
R[steady.iops]=$(fio_get steady '.write.iops')

# fio runs in the background (up to 150 s) logging IOPS every 250 ms (unix epoch ms); the
# replica is added 3 s in; fio is stopped 1 s after the new replica is Healthy.
log "fio during: 4k randwrite iodepth 32 while a third replica is rebuilt"
timeout -k 5 170 fio --name=during --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k \
    --iodepth=32 --size="${SIZE_MIB}m" --runtime=150 --time_based --randrepeat=0 --norandommap \
    --write_iops_log="$WORK/fio/during" --log_avg_msec=250 --log_unix_epoch=1 \
    --output-format=json --output="$WORK/fio/during.json" >"$WORK/fio/during.out" 2>&1 &
FIO_PID=$!
PIDS+=("$FIO_PID")
sleep 3
add_replica rebuild2
wait_healthy rebuild2 "$NEW_POOL"
sleep 1
kill -0 "$FIO_PID" 2>/dev/null || die "fio stopped before the rebuild finished (see $WORK/fio/during.out)"
kill -TERM "$FIO_PID"
FIO_STATUS=0
wait "$FIO_PID" || FIO_STATUS=$?
[ -s "$WORK/fio/during.json" ] || die "fio during: no output (status $FIO_STATUS, see $WORK/fio/during.out)"
R[during.fioerror]=$(fio_get during '.error')
R[during.fiototal]=$(fio_get during '.write.total_ios')
R[during.secs]=$(elapsed "$T_PATCH" "$T_HEALTHY")
R[during.copysecs]=$(elapsed "$T_RECON" "$T_HEALTHY")
R[during.bytes]=$RESYNC_BYTES
R[during.phases]=$PHASES
R[during.rebuildmibs]=$(awk -v b="$RESYNC_BYTES" -v s="${R[during.secs]}" 'BEGIN { printf "%.1f", b / 1048576 / s }')
# IOPS from the log: mean over the 250 ms windows ending inside [from, to] (unix seconds).
window_iops() { # FROM TO -> "mean min samples"
    awk -F', *' -v from="$1" -v to="$2" '
        { t = $1 / 1000; if (t > from + 0.25 && t <= to) { s += $2; n++; if (min == "" || $2 < min) min = $2 } }
        END { if (n) printf "%.0f %.0f %d", s / n, min, n; else print "0 0 0" }' \
        "$WORK/fio/during_iops.1.log"
}
read -r "R[during.iops]" "R[during.min]" "R[during.samples]" < <(window_iops "$T_RECON" "$T_HEALTHY")
read -r "R[during.iopspatch]" _ _ < <(window_iops "$T_PATCH" "$T_HEALTHY")
PATCH_AT=$(awk -v p="$T_PATCH" 'BEGIN { printf "%.3f", p - 3 }')
read -r "R[during.before]" _ _ < <(window_iops "$PATCH_AT" "$T_PATCH")
log "steady ${R[steady.iops]} IOPS; during rebuild ${R[during.iops]} IOPS over ${R[during.copysecs]} s (${R[during.samples]} samples)"
volume_delete rebuild2

# --- table -------------------------------------------------------------------------------------

k() { awk -v v="$1" 'BEGIN { if (v >= 1000) printf "%.1fk", v / 1000; else printf "%.0f", v }'; }
n0() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
met() { awk -v r="$1" -v g="$2" 'BEGIN { if (r + 0 >= g) print "yes"; else print "**no**" }'; }

r1=$(ratio "${R[tandem1.rw4k]}" "${R[qemu.rw4k]}")
r3=$(ratio "${R[tandem3.rw4k]}" "${R[nbdkit.rw4k]}")
r3s=$(ratio "${R[tandem3.sw1m]}" "${R[nbdkit.sw1m]}")
rr=$(ratio "${R[rebuild.mibs]}" "${R[nbdcopy.mibs]}")
rd=$(ratio "${R[during.iops]}" "${R[steady.iops]}")
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_SECS=$(($(date +%s) - T_START))
COMMIT=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(cd "$REPO" && git status --porcelain -- crates 2>/dev/null | head -1)
CPU=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)

SHORT_NOTE=""
if [ "${R[during.samples]}" -lt 8 ]; then
    SHORT_NOTE=" The rebuild lasted under 2 s, so the during-rebuild figure rests on only ${R[during.samples]} samples."
fi

TABLE=$(
    cat <<EOF
| measurement | nbdkit file | qemu-nbd writeback | Tandem 1 replica | Tandem 3 replicas | Tandem / peer | goal | met |
|---|---|---|---|---|---|---|---|
| 4k random write, iodepth 32 (IOPS) | $(k "${R[nbdkit.rw4k]}") | $(k "${R[qemu.rw4k]}") | $(k "${R[tandem1.rw4k]}") | $(k "${R[tandem3.rw4k]}") | 1 replica / qemu-nbd: ${r1}x | >= 1.0x | $(met "$r1" 1.0) |
| | | | | | 3 replicas / nbdkit: ${r3}x | >= 0.5x | $(met "$r3" 0.5) |
| 4k random read, iodepth 32 (IOPS) | $(k "${R[nbdkit.rr4k]}") | $(k "${R[qemu.rr4k]}") | $(k "${R[tandem1.rr4k]}") | $(k "${R[tandem3.rr4k]}") | | | |
| 1 MiB sequential write, iodepth $SEQ_DEPTH (MiB/s) | $(n0 "${R[nbdkit.sw1m]}") | $(n0 "${R[qemu.sw1m]}") | $(n0 "${R[tandem1.sw1m]}") | $(n0 "${R[tandem3.sw1m]}") | 3 replicas / nbdkit: ${r3s}x | >= 0.33x | $(met "$r3s" 0.33) |
| 1 MiB sequential read, iodepth $SEQ_DEPTH (MiB/s) | $(n0 "${R[nbdkit.sr1m]}") | $(n0 "${R[qemu.sr1m]}") | $(n0 "${R[tandem1.sr1m]}") | $(n0 "${R[tandem3.sr1m]}") | | | |
| 4k write, iodepth 1: mean latency (µs) | $(n0 "${R[nbdkit.qd1mean]}") | $(n0 "${R[qemu.qd1mean]}") | $(n0 "${R[tandem1.qd1mean]}") | $(n0 "${R[tandem3.qd1mean]}") | | | |
| 4k write, iodepth 1: p99 latency (µs) | $(n0 "${R[nbdkit.qd1p99]}") | $(n0 "${R[qemu.qd1p99]}") | $(n0 "${R[tandem1.qd1p99]}") | $(n0 "${R[tandem3.qd1p99]}") | | | |
| Rebuild of 1 GiB (MiB/s): nbdcopy nbdkit file -> nbdkit file; Tandem 1 -> 2 replicas, patch to Healthy | $(n0 "${R[nbdcopy.mibs]}") | | $(n0 "${R[rebuild.mibs]}") | | rebuild / nbdcopy: ${rr}x | >= 0.5x | $(met "$rr" 0.5) |
| 4k random write, iodepth 32, 2 GiB volume, 2 -> 3 replicas (IOPS): steady; during the rebuild | | | steady $(k "${R[steady.iops]}"); during $(k "${R[during.iops]}") | | during / steady: ${rd}x | >= 0.5x | $(met "$rd" 0.5) |
EOF
)

NOTES=$(
    cat <<EOF
- Each fio run: \`--ioengine=nbd\`, one job, ${RUNTIME} s \`--time_based\` after ${RAMP} s \`--ramp_time\`, \`--size\` = the export (1 GiB), \`--randrepeat=0 --norandommap\`; one run per cell, no repeats. Sequential runs use iodepth ${SEQ_DEPTH} (8 MiB in flight). Every export was filled with random data first (nbdkit and qemu-nbd: a copy of a 1 GiB random file; Tandem: \`nbdcopy --flush\` of that file, at $(n0 "${R[tandem1.fill]}") MiB/s to 1 replica and $(n0 "${R[tandem3.fill]}") MiB/s to 3), so reads hit data. Runs in order: random write, random read, sequential write, sequential read, iodepth 1.
- Latency is fio's \`lat\` (submission to completion). iodepth 1 IOPS: nbdkit $(k "${R[nbdkit.qd1iops]}"), qemu-nbd $(k "${R[qemu.qd1iops]}"), Tandem 1 replica $(k "${R[tandem1.qd1iops]}"), 3 replicas $(k "${R[tandem3.qd1iops]}").
- Servers: \`nbdkit -f file FILE\`; \`qemu-nbd -f raw -t --cache=writeback FILE\`; Tandem \`tandem up --pool-size 8G\` (3 node agents on this machine). All files, the Tandem data directory and the pools are on the same filesystem (${WORK%/*}); everything fits in the page cache, no run asks for a flush except the \`nbdcopy --flush\` copies and Tandem's end of rebuild.
- Rebuild (e): ${R[rebuild.bytes]} bytes copied (full: ${R[rebuild.full]}), $(awk -v s="${R[rebuild.secs]}" 'BEGIN{printf "%.2f", s}') s from the patch to Healthy (CVR phases seen:${R[rebuild.phases]}); the copy phase alone (first seen reconstructing to Healthy, polled every 0.2 s) took ${R[rebuild.copysecs]} s, ${R[rebuild.copymibs]} MiB/s. The nbdcopy peer: \`nbdcopy --flush\` of the same random 1 GiB from a read-only nbdkit file export to a sparse one.
- During rebuild (f): ${R[during.bytes]} bytes rebuilt in ${R[during.secs]} s patch to Healthy (${R[during.rebuildmibs]} MiB/s under load; copy phase ${R[during.copysecs]} s). "During" is the mean of fio's 250 ms IOPS windows inside the copy phase (${R[during.samples]} windows, lowest $(k "${R[during.min]}")); from the patch to Healthy: $(k "${R[during.iopspatch]}"); the 3 s before the patch, same fio run: $(k "${R[during.before]}"). "Steady" is a separate ${RUNTIME} s run on the same filled 2-replica volume. fio error code during the rebuild: ${R[during.fioerror]}.${SHORT_NOTE}
- Machine: $(nproc) vCPU ${CPU}, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r); fio $(fio --version | sed 's/fio-//'), $(nbdkit --version), $(qemu-nbd --version | head -1 | cut -d' ' -f1-2), nbdcopy $(nbdcopy --version | head -1 | awk '{print $2}'). The fio client, the servers and Tandem's agents share the vCPUs. Load average before: ${LOAD_BEFORE} (compiler/benchmark processes of others at start: ${OTHERS_BEFORE}); after: ${LOAD_AFTER}.
- Tandem commit ${COMMIT}${DIRTY:+ (with local changes)}; $(date -u '+%Y-%m-%d %H:%M UTC'); the script ran ${RUN_SECS} s.
EOF
)

{
    echo "# Tandem benchmark results"
    echo
    echo "Written by \`bench/run.sh\`."
    echo
    echo "$TABLE"
    echo
    echo "$NOTES"
} >"$RESULTS"
echo
echo "$TABLE"
echo
echo "$NOTES"
echo
log "written to $RESULTS (${RUN_SECS} s)"
