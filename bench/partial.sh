#!/usr/bin/env bash
# The cost of partial-block writes: fio random writes of 4 KiB aligned to 4 KiB, 4 KiB aligned
# only to 512 bytes (two partial blocks each) and 512 bytes (one partial block each), at
# iodepth 16, against a Tandem volume (its blocks are 4 KiB: a partial write is a
# read-modify-write in the target) and against nbdkit's file plugin on a file in the same
# directory (which writes any byte range in place), with the server CPU per operation from
# /proc/PID/stat (utime + stime) around each run.
#
# Usage: bench/partial.sh   (from anywhere; uses target/debug/tandem, the optimized dev build)
#
# Environment (all optional):
#   RUNTIME=5       seconds of each fio run (--time_based), after 1 s of ramp
#   REPLICAS=1      the volume's replicas
#   TANDEM_BIN=...  use this binary instead of target/debug/tandem
# Not a test: CI does not run it. Needs fio (with the nbd engine), nbdkit and jq.
set -eEuo pipefail

RUNTIME=${RUNTIME:-5}
REPLICAS=${REPLICAS:-1}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TANDEM=${TANDEM_BIN:-$REPO/target/debug/tandem}
for tool in fio jq awk nbdkit; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
[ -x "$TANDEM" ] || { echo "$TANDEM is missing: cargo build -p tandem" >&2; exit 1; }

WORK=$(mktemp -d /tmp/tandem-partial-bench.XXXXXX)
export TANDEM_DATA_DIR=$WORK/tandem
NBDKIT_PID=
cleanup() {
    [ -n "$NBDKIT_PID" ] && kill "$NBDKIT_PID" 2>/dev/null
    "$TANDEM" down >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$TANDEM" up --nodes 3 --port 0 --pool-size 4G >/dev/null
"$TANDEM" volume create bench --size 1Gi --replicas "$REPLICAS" >/dev/null
TARGET=$("$TANDEM" get cv bench -n openebs -o json | jq -r '.metadata.annotations["tandem.io/target-node"]')
TANDEM_URI=$("$TANDEM" volume uri bench -n openebs --node "$TARGET")
TANDEM_PID=$(cat "$TANDEM_DATA_DIR/nodes/$TARGET/agent.pid")

truncate -s 1G "$WORK/peer.img"
nbdkit -f -U "$WORK/nbdkit.sock" -P "$WORK/nbdkit.pid" file "$WORK/peer.img" &
for _ in $(seq 100); do [ -s "$WORK/nbdkit.pid" ] && break; sleep 0.1; done
NBDKIT_PID=$(cat "$WORK/nbdkit.pid")
NBDKIT_URI="nbd+unix:///?socket=$WORK/nbdkit.sock"
TICKS=$(getconf CLK_TCK)

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Data under every partial write: the first 256 MiB written once on both.
for uri in "$TANDEM_URI" "$NBDKIT_URI"; do
    fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1m --iodepth=8 --size=256m \
        --output-format=terse >/dev/null
done

# run URI PID BS ALIGN -> "iops ops ticks"
run() {
    local uri=$1 pid=$2 bs=$3 align=$4 out=$WORK/fio.json
    local c0 c1
    c0=$(cpu_ticks "$pid")
    fio --name=bench --ioengine=nbd --uri="$uri" --rw=randwrite --bs="$bs" --blockalign="$align" \
        --iodepth=16 --size=256m --ramp_time=1 --time_based --runtime="$RUNTIME" \
        --randrepeat=0 --norandommap --output-format=json --output="$out" >/dev/null
    c1=$(cpu_ticks "$pid")
    jq -r --arg c "$((c1 - c0))" '"\(.jobs[0].write.iops|floor) \(.jobs[0].write.total_ios) \($c)"' "$out"
}

us_per_op() { awk -v ticks="$1" -v hz="$TICKS" -v ops="$2" 'BEGIN { printf "%.1f", ticks / hz * 1e6 / ops }'; }

echo "| random write, iodepth 16, ${RUNTIME}s, Tandem $REPLICAS replica(s) | nbdkit file (IOPS) | Tandem (IOPS) | Tandem / nbdkit | nbdkit CPU per op | Tandem target agent CPU per op |"
echo "|---|---|---|---|---|---|"
for case in "4k 4k" "4k 512" "512 512"; do
    read -r bs align <<<"$case"
    read -r k_iops k_ops k_cpu < <(run "$NBDKIT_URI" "$NBDKIT_PID" "$bs" "$align")
    read -r t_iops t_ops t_cpu < <(run "$TANDEM_URI" "$TANDEM_PID" "$bs" "$align")
    ratio=$(awk -v a="$t_iops" -v b="$k_iops" 'BEGIN { printf "%.2fx", a / b }')
    echo "| $bs at $align-byte offsets | $k_iops | $t_iops | $ratio | $(us_per_op "$k_cpu" "$k_ops") µs | $(us_per_op "$t_cpu" "$t_ops") µs |"
done
