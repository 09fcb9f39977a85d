#!/usr/bin/env bash
# The cost of the stable client endpoint: fio 4k random reads and writes at iodepth 16 against
# a volume directly (the endpoint of the node running its target) and through a forwarding node
# (another node's endpoint, which relays to the target's node), with the CPU each agent spent
# per operation, read from /proc/PID/stat (utime + stime) around each run.
#
# Usage: bench/endpoint.sh   (from anywhere; uses target/debug/tandem, the optimized dev build)
#
# Environment (all optional):
#   RUNTIME=5       seconds of each fio run (--time_based), after 1 s of ramp
#   REPLICAS=1      the volume's replicas (1 isolates the forwarding cost)
#   TANDEM_BIN=...  use this binary instead of target/debug/tandem
# Not a test: CI does not run it. Needs fio (with the nbd engine) and jq.
set -eEuo pipefail

RUNTIME=${RUNTIME:-5}
REPLICAS=${REPLICAS:-1}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TANDEM=${TANDEM_BIN:-$REPO/target/debug/tandem}
for tool in fio jq awk; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
[ -x "$TANDEM" ] || { echo "$TANDEM is missing: cargo build -p tandem" >&2; exit 1; }

WORK=$(mktemp -d /tmp/tandem-endpoint-bench.XXXXXX)
export TANDEM_DATA_DIR=$WORK/tandem
cleanup() {
    "$TANDEM" down >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$TANDEM" up --nodes 3 --port 0 --pool-size 4G >/dev/null
"$TANDEM" volume create bench --size 1Gi --replicas "$REPLICAS" >/dev/null
"$TANDEM" volume uri bench -n openebs >/dev/null
TARGET=$("$TANDEM" get cv bench -n openebs -o json | jq -r '.metadata.annotations["tandem.io/target-node"]')
OTHER=$(for n in node1 node2 node3; do [ "$n" != "$TARGET" ] && echo "$n"; done | head -1)
DIRECT=$("$TANDEM" volume uri bench -n openebs --node "$TARGET")
FORWARDED=$("$TANDEM" volume uri bench -n openebs --node "$OTHER")
TARGET_PID=$(cat "$TANDEM_DATA_DIR/nodes/$TARGET/agent.pid")
OTHER_PID=$(cat "$TANDEM_DATA_DIR/nodes/$OTHER/agent.pid")
TICKS=$(getconf CLK_TCK)

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Waits until the forwarding node serves the volume.
for _ in $(seq 100); do
    fio --name=probe --ioengine=nbd --uri="$FORWARDED" --rw=read --bs=4k --size=4k \
        --output-format=terse >/dev/null 2>&1 && break
    sleep 0.1
done
# Data to read back: the first 256 MiB written once.
fio --name=fill --ioengine=nbd --uri="$DIRECT" --rw=write --bs=1m --iodepth=8 --size=256m \
    --output-format=terse >/dev/null

# run RW URI -> "iops ops target_ticks other_ticks"
run() {
    local rw=$1 uri=$2 out=$WORK/fio.json
    local t0 o0 t1 o1
    t0=$(cpu_ticks "$TARGET_PID"); o0=$(cpu_ticks "$OTHER_PID")
    fio --name=bench --ioengine=nbd --uri="$uri" --rw="$rw" --bs=4k --iodepth=16 --size=256m \
        --time_based --runtime="$RUNTIME" --output-format=json --output="$out" >/dev/null
    t1=$(cpu_ticks "$TARGET_PID"); o1=$(cpu_ticks "$OTHER_PID")
    local side=read
    [ "$rw" = randwrite ] && side=write
    jq -r --arg side "$side" --arg t "$((t1 - t0))" --arg o "$((o1 - o0))" \
        '"\(.jobs[0][$side].iops|floor) \(.jobs[0][$side].total_ios) \($t) \($o)"' "$out"
}

us_per_op() { awk -v ticks="$1" -v hz="$TICKS" -v ops="$2" 'BEGIN { printf "%.1f", ticks / hz * 1e6 / ops }'; }

echo "| 4k, iodepth 16, ${RUNTIME}s, $REPLICAS replica(s) | direct (IOPS) | forwarded (IOPS) | forwarded / direct | target agent CPU per op, direct | forwarding agent CPU per op | target agent CPU per op, forwarded |"
echo "|---|---|---|---|---|---|---|"
for rw in randread randwrite; do
    read -r d_iops d_ops d_target _ < <(run "$rw" "$DIRECT")
    read -r f_iops f_ops f_target f_other < <(run "$rw" "$FORWARDED")
    ratio=$(awk -v a="$f_iops" -v b="$d_iops" 'BEGIN { printf "%.2fx", a / b }')
    echo "| $rw | $d_iops | $f_iops | $ratio | $(us_per_op "$d_target" "$d_ops") µs | $(us_per_op "$f_other" "$f_ops") µs | $(us_per_op "$f_target" "$f_ops") µs |"
done
