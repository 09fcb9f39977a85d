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
#   KEEP=1            keep the work directory's logs and fio JSON (the data files are removed)
#   LOAD_LIMIT=60     in (f), the longest fio keeps writing while the new replica is rebuilt
#   MAX_SECONDS=900   the whole run is killed (and cleaned up) after this long
#
# Prints one markdown table and writes it, with the details, to bench/results.md.
# Not a test: CI does not run it. Needs fio (with the nbd engine), nbdkit, qemu-nbd, nbdcopy,
# nbdinfo, jq, python3, awk.
set -eEuo pipefail

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

# At most about 9 GiB are on disk at once (the random file, a 2 GiB volume's 3 replicas, the
# rest being deleted); ask for 12 so the run never fills the file system others use.
FREE_GIB=$(df -P -k "${BENCH_BASE:-/tmp}" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')
[ "$FREE_GIB" -ge 12 ] || die "only ${FREE_GIB} GiB free under ${BENCH_BASE:-/tmp}; the run needs 12"
WORK=$(mktemp -d "${BENCH_BASE:-/tmp}/tandem-bench.XXXXXX")
export TANDEM_DATA_DIR=$WORK/tandem
mkdir -p "$TANDEM_DATA_DIR" "$WORK/fio" "$WORK/files"
PIDS=()          # every background process this script started
TANDEM_UP=0

cleanup() {
    local status=$?
    trap - EXIT INT TERM ERR
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
        # Keep the logs and fio's JSON, never the GiB of data.
        rm -rf "$WORK/files"
        find "$TANDEM_DATA_DIR/nodes" -path '*/replicas/*' -type f -size +1M -delete 2>/dev/null
        log "work directory kept (logs, fio JSON; data removed): $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'log "error (status $?) at line $LINENO: $BASH_COMMAND"' ERR
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

# Other people's work on this machine: every second, the CPU used by processes that are neither
# this script's descendants nor this run's Tandem cluster (whose command lines contain $WORK), as
# a percentage of one CPU, with the busiest names. Lines: "EPOCH PERCENT NAME...".
cat >"$WORK/others.py" <<'PY'
import os, sys, time
me, work = int(sys.argv[1]), sys.argv[2]
hz = os.sysconf("SC_CLK_TCK")
def snapshot():
    procs = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        procs[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]), name, cmd)
    return procs
def mine(pid, procs):
    for _ in range(64):
        if pid == me:
            return True
        if pid not in procs or pid <= 1:
            return False
        pid = procs[pid][0]
    return False
before = snapshot()
while True:
    time.sleep(1)
    now = snapshot()
    used = {}
    for pid, (ppid, ticks, name, cmd) in now.items():
        if not cmd or work in cmd or name == "process_api" or mine(pid, now):
            continue
        delta = ticks - before.get(pid, (0, ticks))[1]
        if delta > 0:
            used[name] = used.get(name, 0) + delta
    before = now
    total = sum(used.values()) * 100 // hz
    names = " ".join(n for n, _ in sorted(used.items(), key=lambda kv: -kv[1])[:3]) if total >= 10 else ""
    print(int(time.time()), total, names, flush=True)
PY
python3 "$WORK/others.py" "$$" "$WORK" >"$WORK/others.log" 2>/dev/null &
PIDS+=($!)
# busy_seconds FROM TO: the samples in [FROM, TO] in which another compiler was running
busy_seconds() { awk -v a="$1" -v b="$2" '$1 >= int(a) && $1 <= b && $2 >= 20 { n++ } END { print n + 0 }' "$WORK/others.log"; }
BUSY=""        # measurements that overlapped other people's compilers
busy_note() { # NAME FROM TO
    local n
    n=$(busy_seconds "$2" "$3")
    [ "$n" = 0 ] || BUSY="$BUSY${BUSY:+, }$1 ($n s)"
}

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

# fio_nbd URI FIO-ARGS...: fio's nbd engine on URI (given last: fio takes an engine's options
# only after --ioengine). fio does not let libnbd read the credentials
# an nbds:// URI names (?tls-certificates=DIR), so for those fio runs in a mount namespace of its
# own in which DIR is libnbd's default certificate directory for root (/etc/pki/libnbd).
fio_nbd() {
    local uri=$1
    shift
    case $uri in
    nbds://*\?tls-certificates=*)
        mkdir -p /etc/pki/libnbd
        unshare --mount --propagation private sh -c 'mount --bind "$0" /etc/pki/libnbd && exec fio "$@"' \
            "${uri#*\?tls-certificates=}" "$@" --uri="${uri%%\?*}"
        ;;
    *) fio "$@" --uri="$uri" ;;
    esac
}


# fio_run NAME URI RW BS DEPTH [extra fio options...]: JSON in $WORK/fio/NAME.json
fio_run() {
    local name=$1 uri=$2 rw=$3 bs=$4 depth=$5
    shift 5
    log "fio $name: $rw bs=$bs iodepth=$depth ${RUNTIME}s"
    local from
    from=$(date +%s)
    timeout -k 5 $((RUNTIME + RAMP + 60)) bash -c "$(declare -f fio_nbd); fio_nbd \"\$@\"" _ "$uri" --name="$name" --ioengine=nbd \
        --rw="$rw" --bs="$bs" --iodepth="$depth" --size="${SIZE_MIB}m" \
        --runtime="$RUNTIME" --ramp_time="$RAMP" --time_based \
        --randrepeat=0 --norandommap --lat_percentiles=1 \
        --output-format=json --output="$WORK/fio/$name.json" "$@" \
        >"$WORK/fio/$name.out" 2>&1 || die "fio $name (see $WORK/fio/$name.out)"
    busy_note "$name" "$from" "$(date +%s)"
    local errors
    errors=$(fio_get "$name" '.error')
    [ "$errors" = 0 ] || die "fio $name reported error $errors"
}
# jq on a run's JSON: fio_get NAME FILTER
# (fio may print a line such as "fio: terminating on signal 15" before the JSON.)
fio_get() { sed -n '/^{/,$p' "$WORK/fio/$1.json" | jq -r ".jobs[0] | $2"; }

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
    log "nbdcopy --flush to $2: $COPY_MIBS MiB/s"
}

# --- machine -----------------------------------------------------------------------------------

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
busy_others() { ps -eo comm= | grep -cE '^(rustc|cargo|cc|cc1|cc1plus|ld|ld.lld|rust-lld|fio|nbdkit|qemu-nbd|tandem)$' || true; }
OTHERS_BEFORE=$(busy_others)
log "load average $LOAD_BEFORE; other tandem, compiler or benchmark processes: $OTHERS_BEFORE"
log "work directory $WORK"

log "random data: 1 GiB"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$WORK/files/random.img"

# Fills a 1 GiB export from the random file (the same way for every server: how a file was
# written changes how fast 4k overwrites are, see the notes); sets R[LABEL.fill]
fill_from_random() { # LABEL URI
    copy_timed "$WORK/files/random.img" "$2"
    R[$1.fill]=$COPY_MIBS
}

# --- (a) nbdkit file ---------------------------------------------------------------------------

truncate -s $((SIZE_MIB << 20)) "$WORK/files/nbdkit.img"
PORT=$(free_port)
nbdkit -f -i 127.0.0.1 -p "$PORT" file "$WORK/files/nbdkit.img" >"$WORK/nbdkit.log" 2>&1 &
NBDKIT_PID=$!
PIDS+=("$NBDKIT_PID")
wait_nbd "nbd://127.0.0.1:$PORT"
log "(a) nbdkit file on nbd://127.0.0.1:$PORT"
fill_from_random nbdkit "nbd://127.0.0.1:$PORT"
suite nbdkit "nbd://127.0.0.1:$PORT"
kill -TERM "$NBDKIT_PID"
wait "$NBDKIT_PID" 2>/dev/null || true
rm -f "$WORK/files/nbdkit.img"

# --- (b) qemu-nbd --cache=writeback ------------------------------------------------------------

truncate -s $((SIZE_MIB << 20)) "$WORK/files/qemu.img"
PORT=$(free_port)
qemu-nbd -f raw -t --cache=writeback -b 127.0.0.1 -p "$PORT" "$WORK/files/qemu.img" \
    >"$WORK/qemu-nbd.log" 2>&1 &
QEMU_PID=$!
PIDS+=("$QEMU_PID")
wait_nbd "nbd://127.0.0.1:$PORT"
log "(b) qemu-nbd --cache=writeback on nbd://127.0.0.1:$PORT"
fill_from_random qemu "nbd://127.0.0.1:$PORT"
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

# wait_healthy VOLUME POOL DEADLINE STABLE_SECS: polls the new replica's CVR every 0.2 s until it
# has been Healthy (with a lastResync) for STABLE_SECS, or until DEADLINE (unix seconds; then
# returns 1). Sets T_RECON (first seen reconstructing), T_HEALTHY (first seen Healthy), T_STABLE
# (start of the Healthy streak that held), FLAPS (times it left Healthy again), PHASES, and
# RESYNC_BYTES / RESYNC_FULL (lastResync when first Healthy).
wait_healthy() {
    local vol=$1 pool=$2 deadline=$3 stable=$4 status phase streak="" prev="" at
    T_RECON="" T_HEALTHY="" T_STABLE="" FLAPS=0 PHASES="" RESYNC_BYTES=0 RESYNC_FULL=""
    while :; do
        status=$(cvr_json "$vol" | jq -c --arg pool "$pool" \
            '.items[] | select(.metadata.labels["cstorpoolinstance.openebs.io/name"] == $pool)
             | .status') || status='{}'
        [ -n "$status" ] || status='{}'
        at=$(now)
        phase=$(jq -r '.phase // "none"' <<<"$status")
        [ "$phase" = "$prev" ] || PHASES="$PHASES${PHASES:+ -> }$phase"
        prev=$phase
        if [ -z "$T_RECON" ] && { [ "$phase" = ReconstructingNewReplica ] ||
            [ "$(jq '.rebuild != null' <<<"$status")" = true ]; }; then
            T_RECON=$at
        fi
        if [ "$phase" = Healthy ] && [ "$(jq '.lastResync != null' <<<"$status")" = true ]; then
            if [ -z "$T_HEALTHY" ]; then
                T_HEALTHY=$at
                RESYNC_BYTES=$(jq '.lastResync.bytes' <<<"$status")
                RESYNC_FULL=$(jq '.lastResync.full' <<<"$status")
                [ -n "$T_RECON" ] || T_RECON=$at
                echo "$vol first Healthy: $status" >>"$WORK/tandem-volumes.log"
            fi
            [ -n "$streak" ] || streak=$at
            if awk -v a="$streak" -v b="$at" -v s="$stable" 'BEGIN { exit !(b - a >= s) }'; then
                T_STABLE=$streak
                return 0
            fi
        elif [ -n "$streak" ]; then
            FLAPS=$((FLAPS + 1))
            streak=""
        fi
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# What the target's agent logged about VOLUME's replica RID: ejections, finished resyncs (count,
# total bytes), and the time of the first finished resync (unix seconds, empty if none).
replica_log() { # VOLUME RID
    local lines first
    lines=$(cat "$TANDEM_DATA_DIR"/nodes/*/agent.log | grep -E "(replica ejected|resync finished) volume=$1 replica=$2 " || true)
    local ejected resynced
    ejected=$(grep "replica ejected" <<<"$lines" || true)
    resynced=$(grep "resync finished" <<<"$lines" | grep -v " bytes=0 " | sort || true)
    EJECTIONS=$(grep -c . <<<"$ejected" || true)
    EJECT_REASONS=$(sed -n 's/.*reason=\([A-Za-z]*\).*/\1/p' <<<"$ejected" | sort | uniq -c |
        awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')
    RESYNCS=$(grep -c . <<<"$resynced" || true)
    RESYNC_TOTAL=$(sed -n 's/.* bytes=\([0-9]*\).*/\1/p' <<<"$resynced" | awk '{ s += $1 } END { print s + 0 }')
    first=$(head -1 <<<"$resynced" | cut -d' ' -f1)
    T_FIRST_COPY=""
    [ -z "$first" ] || T_FIRST_COPY=$(date -d "$first" +%s.%N)
    first=$(cat "$TANDEM_DATA_DIR"/nodes/*/agent.log |
        grep "membership change done volume=$1 command=AddReplica(ReplicaId($2))" | sort | head -1 | cut -d' ' -f1 || true)
    T_ADD=""
    [ -z "$first" ] || T_ADD=$(date -d "$first" +%s.%N)
}
replica_id() { # VOLUME POOL
    cvr_json "$1" | jq -r --arg pool "$2" \
        '.items[] | select(.metadata.labels["cstorpoolinstance.openebs.io/name"] == $pool) | .spec.replicaid'
}
mibs() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s; else print "n/a" }'; }

# --- (e) rebuild throughput vs nbdcopy ---------------------------------------------------------

URI=$(volume_create rebuild1 1Gi 1)
log "(e) rebuild: filling rebuild1 ($URI)"
fill_from_random rebuild1 "$URI"
add_replica rebuild1
wait_healthy rebuild1 "$NEW_POOL" $(($(date +%s) + 180)) 2 ||
    die "rebuild1: the new replica in $NEW_POOL not stably Healthy after 180 s (phases: $PHASES)"
R[rebuild.secs]=$(elapsed "$T_PATCH" "$T_HEALTHY")
R[rebuild.copysecs]=$(elapsed "$T_RECON" "$T_HEALTHY")
R[rebuild.bytes]=$RESYNC_BYTES
R[rebuild.full]=$RESYNC_FULL
R[rebuild.phases]=$PHASES
R[rebuild.flaps]=$FLAPS
R[rebuild.mibs]=$(mibs "$RESYNC_BYTES" "${R[rebuild.secs]}")
R[rebuild.copymibs]=$(mibs "$RESYNC_BYTES" "${R[rebuild.copysecs]}")
replica_log rebuild1 "$(replica_id rebuild1 "$NEW_POOL")"
R[rebuild.ejections]=$EJECTIONS
R[rebuild.resyncs]=$RESYNCS
R[rebuild.setup]=n/a R[rebuild.logcopy]=n/a R[rebuild.logmibs]=n/a
if [ -n "$T_ADD" ] && [ -n "$T_FIRST_COPY" ]; then
    R[rebuild.setup]=$(elapsed "$T_PATCH" "$T_ADD")
    R[rebuild.logcopy]=$(elapsed "$T_ADD" "$T_FIRST_COPY")
    R[rebuild.logmibs]=$(mibs "$RESYNC_BYTES" "${R[rebuild.logcopy]}")
    R[rebuild.report]=$(elapsed "$T_FIRST_COPY" "$T_HEALTHY")
fi
busy_note "rebuild" "$T_PATCH" "$T_HEALTHY"
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
FROM=$(date +%s)
copy_timed "nbd://127.0.0.1:$SRC_PORT" "nbd://127.0.0.1:$DST_PORT"
busy_note "nbdcopy" "$FROM" "$(date +%s)"
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
cat "$WORK/files/random.img" "$WORK/files/random.img" >"$WORK/files/random2.img"
copy_timed "$WORK/files/random2.img" "$URI"
rm -f "$WORK/files/random2.img"
fio_run steady "$URI" randwrite 4k 32
R[steady.iops]=$(fio_get steady '.write.iops')

# fio runs in the background logging IOPS every 250 ms (unix epoch ms); the replica is added 3 s
# in. fio is stopped 1 s after the new replica has stayed Healthy for 3 s, or LOAD_LIMIT s after
# the patch if it never does (then we wait, without load, for it to become Healthy).
LOAD_LIMIT=${LOAD_LIMIT:-60}
log "fio during: 4k randwrite iodepth 32 while a third replica is rebuilt (at most ${LOAD_LIMIT}s)"
timeout -k 5 $((LOAD_LIMIT + 60)) fio --name=during --ioengine=nbd --uri="$URI" --rw=randwrite \
    --bs=4k --iodepth=32 --size="${SIZE_MIB}m" --runtime=$((LOAD_LIMIT + 30)) --time_based \
    --randrepeat=0 --norandommap \
    --write_iops_log="$WORK/fio/during" --log_avg_msec=250 --log_unix_epoch=1 \
    --output-format=json --output="$WORK/fio/during.json" >"$WORK/fio/during.out" 2>&1 &
FIO_PID=$!
PIDS+=("$FIO_PID")
sleep 3
add_replica rebuild2
R[during.converged]=yes
if ! wait_healthy rebuild2 "$NEW_POOL" $(($(date +%s) + LOAD_LIMIT)) 3; then
    R[during.converged]=no
    log "rebuild2: the new replica was not stably Healthy within ${LOAD_LIMIT}s under load (phases: $PHASES)"
fi
R[during.phases]=$PHASES
R[during.flaps]=$FLAPS
T_LOAD_END=${T_STABLE:-$(now)}
T_RECON_LOAD=$T_RECON
[ "${R[during.converged]}" = no ] || sleep 1
kill -0 "$FIO_PID" 2>/dev/null || die "fio stopped before the rebuild finished (see $WORK/fio/during.out)"
kill -TERM "$FIO_PID"
T_FIO_STOP=$(now)
wait "$FIO_PID" || true
[ -s "$WORK/fio/during.json" ] || die "fio during: no output (see $WORK/fio/during.out)"
R[during.fioerror]=$(fio_get during '.error')
busy_note "during" "$T_PATCH" "$T_FIO_STOP"
RID=$(replica_id rebuild2 "$NEW_POOL")
if [ "${R[during.converged]}" = no ]; then
    # Without load, does it get there?
    T_UNLOADED=$(now)
    if wait_healthy rebuild2 "$NEW_POOL" $(($(date +%s) + 120)) 3; then
        R[during.unloaded]="stably Healthy $(elapsed "$T_UNLOADED" "$T_STABLE") s after fio stopped"
    else
        R[during.unloaded]="still not stably Healthy 120 s after fio stopped (phases: $PHASES)"
    fi
fi
replica_log rebuild2 "$RID"
R[during.ejections]=$EJECTIONS
R[during.reasons]=$EJECT_REASONS
R[during.resyncs]=$RESYNCS
R[during.copied]=$RESYNC_TOTAL
R[during.secs]=$(elapsed "$T_PATCH" "$T_LOAD_END")
R[during.firstcopy]=$(elapsed "$T_RECON_LOAD" "${T_FIRST_COPY:-$T_LOAD_END}")
R[during.firstmibs]=$(mibs "$(awk -v t="$RESYNC_TOTAL" -v n="$RESYNCS" 'BEGIN { print (n > 0 ? t / n : 0) }')" "${R[during.firstcopy]}")
# IOPS from the log: mean over the 250 ms windows ending inside (from, to] (unix seconds).
window_iops() { # FROM TO -> "mean min samples"
    awk -F', *' -v from="$1" -v to="$2" '
        { t = $1 / 1000; if (t > from + 0.25 && t <= to) { s += $2; n++; if (min == "" || $2 < min) min = $2 } }
        END { if (n) printf "%.0f %.0f %d\n", s / n, min, n; else print "0 0 0" }' \
        "$WORK/fio/during_iops.1.log"
}
read -r "R[during.iops]" "R[during.min]" "R[during.samples]" < <(window_iops "$T_RECON_LOAD" "$T_LOAD_END")
read -r "R[during.firstiops]" _ "R[during.firstsamples]" < <(window_iops "$T_RECON_LOAD" "${T_FIRST_COPY:-$T_LOAD_END}")
PATCH_AT=$(awk -v p="$T_PATCH" 'BEGIN { printf "%.3f", p - 3 }')
read -r "R[during.before]" _ _ < <(window_iops "$PATCH_AT" "$T_PATCH")
if [ "${R[during.converged]}" = yes ]; then
    read -r "R[during.after]" _ _ < <(window_iops "$T_STABLE" "$T_FIO_STOP")
else
    R[during.after]=0
fi
log "steady ${R[steady.iops]} IOPS; during rebuild ${R[during.iops]} IOPS over ${R[during.secs]} s; ejections ${R[during.ejections]}, resyncs ${R[during.resyncs]}"
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
DIRTY=$(cd "$REPO" && git status --porcelain -- crates 2>/dev/null | grep -c . || true)
CPU=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)

OTHERS_SEEN=$(awk '$2 >= 20 { for (i = 3; i <= NF; i++) seen[$i]++ } END { for (n in seen) printf "%s %d\n", n, seen[n] }' "$WORK/others.log" |
    sort -k2,2nr | head -5 | awk '{ printf "%s%s (%s s)", sep, $1, $2; sep = ", " }')
# A long list of phase changes is cut short.
short_phases() { awk -F' -> ' '{ if (NF <= 8) print; else { for (i = 1; i <= 6; i++) printf "%s -> ", $i; printf "... (%d phase changes in all)\n", NF - 1 } }' <<<"$1"; }
R[during.phases]=$(short_phases "${R[during.phases]}")
SHORT_NOTE=""
if [ "${R[during.samples]}" -lt 8 ]; then
    SHORT_NOTE=" The rebuild under load lasted under 2 s, so the during-rebuild figure rests on only ${R[during.samples]} samples."
fi
if [ "${R[during.converged]}" = yes ]; then
    DURING_END="until the new replica had stayed Healthy for 3 s"
else
    DURING_END="for the ${LOAD_LIMIT} s the load was kept on: the new replica was NOT stably Healthy by then (${R[during.unloaded]})"
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
- Each fio run: \`--ioengine=nbd\`, one job, ${RUNTIME} s \`--time_based\` after ${RAMP} s \`--ramp_time\`, \`--size\` = the export (1 GiB), \`--randrepeat=0 --norandommap\`; one run per cell, no repeats. Sequential runs use iodepth ${SEQ_DEPTH} (8 MiB in flight). Runs in order: random write, random read, sequential write, sequential read, iodepth 1.
- Every export was first filled the same way, \`nbdcopy --flush\` of a 1 GiB random file through NBD (so reads hit data): $(n0 "${R[nbdkit.fill]}") MiB/s into nbdkit, $(n0 "${R[qemu.fill]}") into qemu-nbd, $(n0 "${R[tandem1.fill]}") into Tandem with 1 replica, $(n0 "${R[tandem3.fill]}") with 3. How the files were written matters on this kernel: 4k overwrites of a file written in large sequential chunks cost much more kernel time (ext4 on large page-cache folios, \`ext4_block_write_begin\`) than overwrites of a sparse or randomly written file, for every server alike.
- Latency is fio's \`lat\` (submission to completion). iodepth 1 IOPS: nbdkit $(k "${R[nbdkit.qd1iops]}"), qemu-nbd $(k "${R[qemu.qd1iops]}"), Tandem 1 replica $(k "${R[tandem1.qd1iops]}"), 3 replicas $(k "${R[tandem3.qd1iops]}").
- Servers: \`nbdkit -f file FILE\`; \`qemu-nbd -f raw -t --cache=writeback FILE\`; Tandem \`tandem up --pool-size 8G\` (3 node agents on this machine). All files, the Tandem data directory and the pools are on the same filesystem (${WORK%/*}); everything fits in the page cache, no run asks for a flush except the \`nbdcopy --flush\` copies and Tandem's end of rebuild.
- Rebuild (e): ${R[rebuild.bytes]} bytes copied (full: ${R[rebuild.full]}), ${R[rebuild.secs]} s from the patch to the first Healthy (CVR phases seen: ${R[rebuild.phases]}; polled every 0.2 s); by the agents' logs: ${R[rebuild.setup]} s from the patch until the target added the new replica (the control plane creates the CVR, its agent creates the storage), ${R[rebuild.logcopy]} s of copy (${R[rebuild.logmibs]} MiB/s), ${R[rebuild.report]:-n/a} s until the CVR showed Healthy. Ejections of the new replica: ${R[rebuild.ejections]}, resyncs: ${R[rebuild.resyncs]}. The nbdcopy peer: \`nbdcopy --flush\` of the same random 1 GiB from a read-only nbdkit file export to a sparse file export.
- During rebuild (f): fio 4k random write at iodepth 32 on the filled 2 GiB 2-replica volume; a third replica is added 3 s in. "During" is the mean of fio's 250 ms IOPS windows from the first reconstructing phase seen ${DURING_END} (${R[during.secs]} s after the patch; ${R[during.samples]} windows, lowest $(k "${R[during.min]}")). The first copy alone took ${R[during.firstcopy]} s (${R[during.firstmibs]} MiB/s) at $(k "${R[during.firstiops]}") IOPS. The new replica was ejected ${R[during.ejections]} times (${R[during.reasons]:-none}) and resynced ${R[during.resyncs]} times, $(awk -v b="${R[during.copied]}" 'BEGIN { printf "%.1f", b / 1073741824 }') GiB copied in all; CVR phases seen: ${R[during.phases]}. Same fio run: $(k "${R[during.before]}") IOPS in the 3 s before the patch$( [ "${R[during.converged]}" = yes ] && echo ", $(k "${R[during.after]}") once stably Healthy with 3 replicas"). "Steady" is a separate ${RUNTIME} s run on the same 2-replica volume before. fio error code: ${R[during.fioerror]}.${SHORT_NOTE}
- Other people's processes (anything using CPU that is not this run's) took at least 20% of a CPU during: ${BUSY:-none of the measurements} (seconds; sampled every second; the busiest: ${OTHERS_SEEN:-none}).
- Machine: $(nproc) vCPU ${CPU}, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r); fio $(fio --version | sed 's/fio-//'), $(nbdkit --version), $(qemu-nbd --version | awk 'NR == 1 { print $1, $2 }'), nbdcopy $(nbdcopy --version | awk 'NR == 1 { print $2 }'). The fio client, the servers and Tandem's agents share the vCPUs. Load average before: ${LOAD_BEFORE} (other tandem, compiler or benchmark processes at start: ${OTHERS_BEFORE}); after: ${LOAD_AFTER}.
- Tandem commit ${COMMIT}$( [ "${DIRTY:-0}" = 0 ] || echo " (with uncommitted changes in crates/)"); $(date -u '+%Y-%m-%d %H:%M UTC'); the script ran ${RUN_SECS} s.
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
