#!/usr/bin/env bash
# Failover benchmark: how long a volume's I/O pauses when the node hosting its target dies.
# On a loopback cluster (`tandem up`, default lease timing), a 3-replica volume is written once;
# then, KILLS times: wait until the volume is Healthy, kill -9 the agent of the node hosting its
# target, and measure the time from the kill to the first successful read (qemu-io, checking the
# pattern) through a surviving node's endpoint (`tandem volume uri --node`, the same address for
# the whole round: that node forwards to wherever the target runs); then bring the node back
# (`tandem up`) for the next round. Prints min / median / p90 / max.
#
# Usage: bench/failover.sh [KILLS]     (default 20; 1 to 200)
#
# Environment (all optional):
#   TANDEM_BIN=...    the tandem binary (default: target/debug/tandem, built first)
#   NODES=3           nodes of the cluster (the volume has 3 replicas)
#   BENCH_BASE=/tmp   where the work directory goes
#   ROUND_SECONDS=60  the longest one round may wait for anything (then the run fails)
#   MAX_SECONDS=1200  no new round starts after this long
#
# Not a test: CI does not run it. Needs qemu-io, jq, python3.
set -eEuo pipefail

KILLS=${1:-20}
NODES=${NODES:-3}
ROUND_SECONDS=${ROUND_SECONDS:-60}
MAX_SECONDS=${MAX_SECONDS:-1200}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
VOLUME=vol-failover
T_START=$(date +%s)

log() { printf '[%4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

[[ "$KILLS" =~ ^[0-9]+$ ]] && [ "$KILLS" -ge 1 ] && [ "$KILLS" -le 200 ] ||
    die "KILLS must be a number from 1 to 200, not '$KILLS'"
[ "$NODES" -ge 3 ] 2>/dev/null || die "NODES must be at least 3 (the volume has 3 replicas)"
for tool in qemu-io jq python3 timeout; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

if [ -z "${TANDEM_BIN:-}" ]; then
    log "building target/debug/tandem"
    (cd "$REPO" && cargo build -q -p tandem) || die "cargo build failed"
    TANDEM_BIN=$REPO/target/debug/tandem
fi
[ -x "$TANDEM_BIN" ] || die "$TANDEM_BIN is not an executable"

WORK=$(mktemp -d "${BENCH_BASE:-/tmp}/tandem-failover.XXXXXX")
export TANDEM_DATA_DIR=$WORK/tandem
unset TANDEM_SERVER
cleanup() {
    local status=$?
    trap - EXIT INT TERM ERR
    set +e
    "$TANDEM_BIN" down >/dev/null 2>&1
    if [ "$status" -ne 0 ]; then
        log "logs kept in $WORK (the control plane's and each agent's)"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 1' INT TERM
trap 'die "line $LINENO: $BASH_COMMAND"' ERR

tandem() { "$TANDEM_BIN" "$@"; }
now() { date +%s.%N; }
cv_json() { tandem get cv "$VOLUME" -n openebs -o json 2>/dev/null; }

# Waits (at most ROUND_SECONDS) until `$1` (a shell command) succeeds; `$2` says what for.
wait_until() {
    local deadline=$(($(date +%s) + ROUND_SECONDS))
    until eval "$1"; do
        [ "$(date +%s)" -lt "$deadline" ] || die "waited ${ROUND_SECONDS}s for $2"
        sleep 0.1
    done
}

log "starting a $NODES-node cluster in $WORK (default lease timing)"
tandem up --nodes "$NODES" --pool-size 1G --port 0 >"$WORK/up.log" || die "tandem up: $(tail -5 "$WORK/up.log")"
tandem volume create "$VOLUME" --size 64Mi --replicas 3 >/dev/null
URI=$(tandem volume uri "$VOLUME" -n openebs)
qemu-io -f raw -c "write -P 0x5a 0 16M" -c flush "$URI" >/dev/null || die "the first write failed"

# A successful read through `$1`.
read_ok() {
    local uri=$1
    local out
    out=$(qemu-io -f raw -c "read -P 0x5a 0 1M" "$uri" 2>&1) || return 1
    if grep -q "Pattern verification failed" <<<"$out"; then
        die "a read after a failover returned the wrong data: $out"
    fi
    ! grep -qi "error\|can't open" <<<"$out"
}

PAUSES=()
for round in $(seq 1 "$KILLS"); do
    # Every wait is bounded by ROUND_SECONDS; the whole run by MAX_SECONDS.
    [ "$(($(date +%s) - T_START))" -lt "$MAX_SECONDS" ] || die "over MAX_SECONDS=$MAX_SECONDS after $((round - 1)) rounds"
    wait_until '[ "$(cv_json | jq -r .status.phase)" = Healthy ]' "the volume to be Healthy before round $round"
    node=$(cv_json | jq -r '.metadata.annotations["tandem.io/target-node"]')
    pid=$(cat "$TANDEM_DATA_DIR/nodes/$node/agent.pid")
    survivor=node1
    [ "$node" != node1 ] || survivor=node2
    uri=$(tandem volume uri "$VOLUME" -n openebs --node "$survivor")
    killed=$(now)
    kill -9 "$pid"
    deadline=$(($(date +%s) + ROUND_SECONDS))
    until read_ok "$uri"; do
        [ "$(date +%s)" -lt "$deadline" ] || die "round $round: no successful read ${ROUND_SECONDS}s after the kill"
        sleep 0.02
    done
    served=$(now)
    pause=$(python3 -c "print(f'{$served - $killed:.3f}')")
    moved=$(cv_json | jq -r '.metadata.annotations["tandem.io/target-node"]')
    log "round $round: killed $node's agent; $moved serves; I/O through $survivor paused ${pause}s"
    PAUSES+=("$pause")
    # The dead node returns (its replica resyncs) for the next round.
    while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
    tandem up --nodes "$NODES" >>"$WORK/up.log" || die "tandem up after round $round"
done

python3 - "${PAUSES[@]}" <<'EOF'
import statistics, sys
pauses = sorted(float(p) for p in sys.argv[1:])
def percentile(q):
    # nearest rank
    rank = max(1, -(-len(pauses) * q // 100))
    return pauses[int(rank) - 1]
print(f"failover: {len(pauses)} kills -9 of the target node's agent, time to the first successful read")
print(f"  min {pauses[0]:.2f}s  median {statistics.median(pauses):.2f}s  "
      f"p90 {percentile(90):.2f}s  max {pauses[-1]:.2f}s")
EOF
