#!/usr/bin/env bash
# Leader handover benchmark: on a `tandem up --ha` cluster (three control planes on a
# three-member etcd, default lease 3 s), KILLS times: find the leading control plane with
# `tandem status`, kill -9 it, and measure the time until `tandem status` names another leader;
# then bring the killed one back (`tandem up --ha`) for the next round. Prints min / median /
# p90 / max.
#
# Usage: bench/handover.sh [KILLS]     (default 10; 1 to 100)
#
# Environment (all optional):
#   TANDEM_BIN=...    the tandem binary (default: target/debug/tandem, built first)
#   BENCH_BASE=/tmp   where the work directory goes
#   ROUND_SECONDS=30  the longest one round may wait for a new leader (then the run fails)
#
# Not a test: CI does not run it. Needs etcd (etcd-server) and python3.
set -eEuo pipefail

KILLS=${1:-10}
ROUND_SECONDS=${ROUND_SECONDS:-30}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
T_START=$(date +%s)

log() { printf '[%4ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

[[ "$KILLS" =~ ^[0-9]+$ ]] && [ "$KILLS" -ge 1 ] && [ "$KILLS" -le 100 ] ||
    die "KILLS must be a number from 1 to 100, not '$KILLS'"
for tool in etcd python3 timeout; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
if [ -z "${TANDEM_BIN:-}" ]; then
    (cd "$REPO" && cargo build -q -p tandem) || die "cargo build failed"
    TANDEM_BIN="$REPO/target/debug/tandem"
fi
WORK=$(mktemp -d "${BENCH_BASE:-/tmp}/tandem-handover.XXXXXX")
export TANDEM_DATA_DIR="$WORK/data"
trap '"$TANDEM_BIN" down >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

# `tandem status` exits non-zero while a control plane is down: only its table matters here.
leader_pid() {
    { "$TANDEM_BIN" status 2>/dev/null || true; } | awk '$1 ~ /^http/ && $3 == "leader" { print $2 }'
}

log "starting an HA cluster in $WORK"
timeout 180 "$TANDEM_BIN" up --ha --nodes 1 --pool-size 1G --port 0 >"$WORK/up.log" 2>&1 ||
    die "tandem up --ha failed; see $WORK/up.log"
: >"$WORK/times"
for round in $(seq 1 "$KILLS"); do
    deadline=$(($(date +%s) + ROUND_SECONDS))
    old=""
    while [ -z "$old" ]; do
        old=$(leader_pid)
        [ "$(date +%s)" -lt "$deadline" ] || die "round $round: no leader"
        [ -n "$old" ] || sleep 0.1
    done
    start=$(date +%s.%N)
    kill -9 "$old"
    new=""
    while [ -z "$new" ] || [ "$new" = "$old" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || die "round $round: no new leader after killing $old"
        new=$(leader_pid)
    done
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.3f}')" | tee -a "$WORK/times" >/dev/null
    log "round $round: leader $old killed, $new leads after $(tail -1 "$WORK/times") s"
    timeout 120 "$TANDEM_BIN" up --ha --nodes 1 >>"$WORK/up.log" 2>&1 ||
        die "round $round: tandem up --ha failed; see $WORK/up.log"
done
python3 - "$WORK/times" <<'EOF'
import statistics, sys
times = sorted(float(line) for line in open(sys.argv[1]))
p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
print(f"{len(times)} kills: min {times[0]:.2f} s, median {statistics.median(times):.2f} s, "
      f"p90 {p90:.2f} s, max {times[-1]:.2f} s")
EOF
