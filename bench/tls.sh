#!/usr/bin/env bash
# The price of TLS: the same fio runs (4k random write at iodepth 32, 1 MiB sequential write at
# iodepth 8) against volumes with 1 and 3 replicas on a `tandem up` cluster (TLS everywhere: the
# API, the replica links, NBD when the agents serve it) and on a `tandem up --insecure` one (plain
# everything), in the same run, one cluster after the other; and, as the peer, against nbdkit's
# file plugin plain and with `--tls=require` (GnuTLS, client certificates of the same CA). Prints
# TLS / plain for throughput, the servers' CPU per operation (utime + stime of every agent, or of
# nbdkit, from /proc/PID/stat over the fio run, in µs per I/O), which is what TLS costs on a
# real cluster too, and fio's own CPU per I/O (its libnbd does the client's half of TLS on the
# same CPUs).
#
#   bench/tls.sh                     RUNTIME=10 (s per fio run)  TANDEM_BIN=path (else a release build)
#
# Not a test: CI does not run it. Needs fio (with the nbd engine), nbdinfo, nbdkit, jq, awk.
set -eEuo pipefail

RUNTIME=${RUNTIME:-10}
MAX_SECONDS=${MAX_SECONDS:-900}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
T_START=$(date +%s)
log() { printf '[%4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}
for tool in fio nbdinfo nbdkit jq awk timeout; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

WORK=$(mktemp -d "${BENCH_BASE:-/tmp}/tandem-tls.XXXXXX")
UP=()            # data directories of clusters that are up
WATCHDOG=""
NBDKIT_PID=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM ERR
    set +e
    local dir
    for dir in "${UP[@]}"; do
        timeout -k 5 60 "$TANDEM" down --data-dir "$dir" >/dev/null 2>&1 || log "tandem down $dir failed"
    done
    [ -z "$NBDKIT_PID" ] || kill "$NBDKIT_PID" 2>/dev/null
    [ -z "$WATCHDOG" ] || kill "$WATCHDOG" 2>/dev/null
    if [ "$status" != 0 ]; then
        find "$WORK" -path '*/replicas/*' -type f -size +1M -delete 2>/dev/null
        log "work directory kept (logs; data removed): $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'log "error (status $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM
# The whole run is bounded; the watchdog takes its sleep with it when stopped (a sleep left
# behind would hold this script's output open).
(
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$MAX_SECONDS" &
    sleeper=$!
    wait "$sleeper"
    echo "bench: over ${MAX_SECONDS}s, stopping" >&2
    kill -TERM $$
) &
WATCHDOG=$!

if [ -n "${TANDEM_BIN:-}" ]; then
    TANDEM=$TANDEM_BIN
else
    log "building target/release/tandem"
    (cd "$REPO" && timeout 1800 cargo build --release -p tandem -q) || die "cargo build"
    TANDEM=$REPO/target/release/tandem
fi

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

# The CPU time so far of processes PIDS, in clock ticks: cpu_ticks PID...
cpu_ticks() {
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
    done
    echo "$total"
}
agent_pids() { cat "$1"/nodes/*/agent.pid; }
HZ=$(getconf CLK_TCK)

declare -A R   # R[mode.label] = throughput; R[mode.label.cpu] = servers' µs of CPU per I/O;
               # R[mode.label.client] = fio's

# measure MODE LABEL URI RW BS DEPTH METRIC SERVER-PID...
measure() {
    local mode=$1 label=$2 uri=$3 rw=$4 bs=$5 depth=$6 metric=$7 before after ios json
    shift 7
    log "$mode $label: fio $rw bs=$bs iodepth=$depth ${RUNTIME}s"
    before=$(cpu_ticks "$@")
    timeout -k 5 $((RUNTIME + 60)) bash -c "$(declare -f fio_nbd); fio_nbd \"\$@\"" _ "$uri" --name="$label" --ioengine=nbd \
        --rw="$rw" --bs="$bs" --iodepth="$depth" --size=1g --runtime="$RUNTIME" --time_based \
        --randrepeat=0 --norandommap --output-format=json --output="$WORK/$mode-$label.json" \
        >"$WORK/$mode-$label.out" 2>&1 || die "fio $mode $label (see $WORK/$mode-$label.out)"
    after=$(cpu_ticks "$@")
    json=$(sed -n '/^{/,$p' "$WORK/$mode-$label.json")
    [ "$(jq -r '.jobs[0].error' <<<"$json")" = 0 ] || die "fio $mode $label reported an error"
    R[$mode.$label]=$(jq -r ".jobs[0].write.$metric" <<<"$json")
    ios=$(jq -r '.jobs[0].write.total_ios' <<<"$json")
    R[$mode.$label.cpu]=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$ios" \
        'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    # fio's usr_cpu and sys_cpu are percentages of one CPU over job_runtime (ms).
    R[$mode.$label.client]=$(jq -r '.jobs[0] | (.usr_cpu + .sys_cpu) / 100 * .job_runtime * 1000
        / .write.total_ios * 10 | floor / 10' <<<"$json")
}

# cluster MODE [up flags...]: brings a cluster up, runs the four measurements, takes it down
cluster() {
    local mode=$1 dir=$WORK/$1
    shift
    mkdir -p "$dir"
    log "tandem up $* ($mode)"
    UP+=("$dir")
    timeout -k 5 120 "$TANDEM" up --port 0 --pool-size 4G --data-dir "$dir" "$@" \
        >"$dir/up.log" 2>&1 || die "tandem up (see $dir/up.log)"
    local replicas uri
    for replicas in 1 3; do
        timeout 60 "$TANDEM" volume create "tls$replicas" --size 1Gi --replicas "$replicas" \
            --data-dir "$dir" >>"$dir/volumes.log" 2>&1 || die "volume create (see $dir/volumes.log)"
        uri=$(timeout 60 "$TANDEM" volume uri "tls$replicas" --data-dir "$dir") || die "volume uri"
        timeout 30 nbdinfo --size "$uri" >/dev/null || die "no NBD export at $uri"
        measure "$mode" "rw4k.$replicas" "$uri" randwrite 4k 32 iops $(agent_pids "$dir")
        measure "$mode" "sw1m.$replicas" "$uri" write 1M 8 'bw_bytes / 1048576' $(agent_pids "$dir")
    done
    timeout -k 5 60 "$TANDEM" down --data-dir "$dir" >/dev/null 2>&1 || log "tandem down failed"
    UP=()
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# nbdkit MODE [nbdkit flags...]: nbdkit's file plugin on a sparse 1 GiB file, the same two runs
nbdkit_peer() {
    local mode=$1 port uri
    shift
    rm -f "$WORK/nbdkit.img" && truncate -s 1G "$WORK/nbdkit.img"
    port=$(free_port)
    log "nbdkit file $* ($mode)"
    nbdkit --exit-with-parent -f -i 127.0.0.1 -p "$port" -P "$WORK/nbdkit.pid" "$@" \
        file "$WORK/nbdkit.img" >"$WORK/nbdkit-$mode.log" 2>&1 &
    NBDKIT_PID=$!
    uri=nbd://127.0.0.1:$port
    [ "$mode" = tls ] && uri=nbds://127.0.0.1:$port/?tls-certificates=$WORK/tls/pki/users/admin.nbd
    # nbdkit writes its pid file once it accepts connections.
    local tries=0
    until [ -s "$WORK/nbdkit.pid" ]; do
        tries=$((tries + 1))
        kill -0 "$NBDKIT_PID" 2>/dev/null && [ "$tries" -lt 100 ] ||
            die "nbdkit did not start (see $WORK/nbdkit-$mode.log)"
        sleep 0.1
    done
    measure "nbdkit-$mode" rw4k "$uri" randwrite 4k 32 iops "$NBDKIT_PID"
    measure "nbdkit-$mode" sw1m "$uri" write 1M 8 'bw_bytes / 1048576' "$NBDKIT_PID"
    kill "$NBDKIT_PID" && wait "$NBDKIT_PID" 2>/dev/null || true
    NBDKIT_PID=""
    rm -f "$WORK/nbdkit.img" "$WORK/nbdkit.pid"
}

cluster plain --insecure
cluster tls
# nbdkit presents node1's certificate of the TLS cluster (it names 127.0.0.1) and requires a
# client certificate of the same CA: the admin's, as for the agents.
mkdir -m 700 "$WORK/nbdkit-tls"
cp "$WORK/tls/pki/ca.crt" "$WORK/nbdkit-tls/ca-cert.pem"
cp "$WORK/tls/pki/nodes/node1.crt" "$WORK/nbdkit-tls/server-cert.pem"
cp "$WORK/tls/pki/nodes/node1.key" "$WORK/nbdkit-tls/server-key.pem"
nbdkit_peer plain
nbdkit_peer tls --tls=require --tls-certificates="$WORK/nbdkit-tls" --tls-verify-peer

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
row() { # WHAT PLAIN-MODE TLS-MODE LABEL UNIT
    local p=$2.$4 t=$3.$4
    printf '| %s | %.0f %s | %.0f %s | %sx | %s / %s | %s / %s |\n' "$1" "${R[$p]}" "$5" "${R[$t]}" "$5" \
        "$(ratio "${R[$t]}" "${R[$p]}")" "${R[$p.cpu]}" "${R[$t.cpu]}" "${R[$p.client]}" "${R[$t.client]}"
}
echo
echo "TLS against plain, $(date -u +%F), $(nproc) CPUs, fio ${RUNTIME}s per run"
echo
echo "| measurement | plain | TLS | TLS / plain | server CPU per I/O, plain / TLS (µs) | fio's CPU per I/O, plain / TLS (µs) |"
echo "|---|---|---|---|---|---|"
row "Tandem, 4k random write, iodepth 32, 1 replica" plain tls rw4k.1 IOPS
row "Tandem, 4k random write, iodepth 32, 3 replicas" plain tls rw4k.3 IOPS
row "nbdkit file, 4k random write, iodepth 32" nbdkit-plain nbdkit-tls rw4k IOPS
row "Tandem, 1 MiB sequential write, iodepth 8, 1 replica" plain tls sw1m.1 MiB/s
row "Tandem, 1 MiB sequential write, iodepth 8, 3 replicas" plain tls sw1m.3 MiB/s
row "nbdkit file, 1 MiB sequential write, iodepth 8" nbdkit-plain nbdkit-tls sw1m MiB/s
