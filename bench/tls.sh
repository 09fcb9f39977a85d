#!/usr/bin/env bash
# The price of TLS: the same fio runs (4k random write at iodepth 32, 1 MiB sequential write at
# iodepth 8) against volumes with 1 and 3 replicas on a `tandem up` cluster (TLS everywhere: the
# API, the replica links, NBD when the agents serve it) and on a `tandem up --insecure` one (plain
# everything), in the same run, one cluster after the other. Prints TLS / plain for throughput
# and the agents' CPU per operation (utime + stime of every agent from /proc/PID/stat over the
# fio run, in µs per I/O), which is what TLS costs on a real cluster too.
#
#   bench/tls.sh                     RUNTIME=10 (s per fio run)  TANDEM_BIN=path (else a release build)
#
# Not a test: CI does not run it. Needs fio (with the nbd engine), nbdinfo, jq, awk.
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
for tool in fio nbdinfo jq awk timeout; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

WORK=$(mktemp -d "${BENCH_BASE:-/tmp}/tandem-tls.XXXXXX")
UP=()            # data directories of clusters that are up
WATCHDOG=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM ERR
    set +e
    local dir
    for dir in "${UP[@]}"; do
        timeout -k 5 60 "$TANDEM" down --data-dir "$dir" >/dev/null 2>&1 || log "tandem down $dir failed"
    done
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

# The agents' CPU time so far, in clock ticks: agent_ticks DATA_DIR
agent_ticks() {
    local total=0 pid fields
    for pid in $(cat "$1"/nodes/*/agent.pid); do
        fields=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")
        total=$((total + fields))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)

declare -A R   # R[mode.label] = throughput; R[mode.label.cpu] = agents' µs of CPU per I/O

# measure MODE LABEL DATA_DIR URI RW BS DEPTH METRIC
measure() {
    local mode=$1 label=$2 dir=$3 uri=$4 rw=$5 bs=$6 depth=$7 metric=$8 before after ios
    log "$mode $label: fio $rw bs=$bs iodepth=$depth ${RUNTIME}s"
    before=$(agent_ticks "$dir")
    timeout -k 5 $((RUNTIME + 60)) bash -c "$(declare -f fio_nbd); fio_nbd \"\$@\"" _ "$uri" --name="$label" --ioengine=nbd \
        --rw="$rw" --bs="$bs" --iodepth="$depth" --size=1g --runtime="$RUNTIME" --time_based \
        --randrepeat=0 --norandommap --output-format=json --output="$WORK/$mode-$label.json" \
        >"$WORK/$mode-$label.out" 2>&1 || die "fio $mode $label (see $WORK/$mode-$label.out)"
    after=$(agent_ticks "$dir")
    local json=".jobs[0]"
    [ "$(sed -n '/^{/,$p' "$WORK/$mode-$label.json" | jq -r "$json.error")" = 0 ] ||
        die "fio $mode $label reported an error"
    R[$mode.$label]=$(sed -n '/^{/,$p' "$WORK/$mode-$label.json" | jq -r "$json.write.$metric")
    ios=$(sed -n '/^{/,$p' "$WORK/$mode-$label.json" | jq -r "$json.write.total_ios")
    R[$mode.$label.cpu]=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$ios" \
        'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
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
        measure "$mode" "rw4k.$replicas" "$dir" "$uri" randwrite 4k 32 iops
        measure "$mode" "sw1m.$replicas" "$dir" "$uri" write 1M 8 'bw_bytes / 1048576'
    done
    timeout -k 5 60 "$TANDEM" down --data-dir "$dir" >/dev/null 2>&1 || log "tandem down failed"
    UP=()
}

cluster plain --insecure
cluster tls

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
row() { # WHAT LABEL UNIT
    printf '| %s | %.0f %s | %.0f %s | %sx | %s | %s |\n' "$1" "${R[plain.$2]}" "$3" "${R[tls.$2]}" "$3" \
        "$(ratio "${R[tls.$2]}" "${R[plain.$2]}")" "${R[plain.$2.cpu]}" "${R[tls.$2.cpu]}"
}
echo
echo "TLS against plain, $(date -u +%F), $(nproc) CPUs, fio ${RUNTIME}s per run"
echo
echo "| measurement | plain | TLS | TLS / plain | agents' CPU per I/O, plain (µs) | with TLS (µs) |"
echo "|---|---|---|---|---|---|"
row "4k random write, iodepth 32, 1 replica" rw4k.1 IOPS
row "4k random write, iodepth 32, 3 replicas" rw4k.3 IOPS
row "1 MiB sequential write, iodepth 8, 1 replica" sw1m.1 MiB/s
row "1 MiB sequential write, iodepth 8, 3 replicas" sw1m.3 MiB/s
