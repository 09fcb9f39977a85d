#!/usr/bin/env bash
# API latency of listing many objects, on each store backend: a cluster on the default redb
# store (`tandem up`) and one on a three-member etcd (`tandem up --ha`), each given OBJECTS
# CStorVolumeReplicas (about 700 bytes of JSON each; they name no existing pool or volume, so
# neither the agents nor the garbage collector touch them). Then, REPEATS times each: the raw
# JSON list over HTTP, `tandem get cvr -A`, and the real `kubectl get cvr -A` (a server-side
# Table). Prints the median and p90 of each, and etcd's median over redb's.
#
# Usage: bench/list.sh            (from anywhere)
#
# Environment (all optional):
#   OBJECTS=2000      replicas to create in each cluster
#   REPEATS=10        timed runs of each client
#   TANDEM_BIN=...    the tandem binary (default: target/debug/tandem, built first)
#
# Not a test: CI does not run it. Needs etcd (etcd-server), kubectl and python3.
set -eEuo pipefail

OBJECTS=${OBJECTS:-2000}
REPEATS=${REPEATS:-10}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for tool in etcd kubectl python3; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
if [ -z "${TANDEM_BIN:-}" ]; then
    (cd "$REPO" && cargo build -q -p tandem)
    TANDEM_BIN="$REPO/target/debug/tandem"
fi
WORK=$(mktemp -d /tmp/tandem-list-bench.XXXXXX)
cleanup() {
    for backend in redb etcd; do
        TANDEM_DATA_DIR=$WORK/$backend "$TANDEM_BIN" down >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

TANDEM_DATA_DIR=$WORK/redb "$TANDEM_BIN" up --nodes 1 --pool-size 1G --port 0 >/dev/null
TANDEM_DATA_DIR=$WORK/etcd "$TANDEM_BIN" up --ha --nodes 1 --pool-size 1G --port 0 >/dev/null
for backend in redb etcd; do
    TANDEM_DATA_DIR=$WORK/$backend "$TANDEM_BIN" kubeconfig >"$WORK/$backend.kubeconfig"
done

python3 - "$WORK" "$TANDEM_BIN" "$OBJECTS" "$REPEATS" <<'EOF'
import json, os, ssl, statistics, subprocess, sys, time, urllib.request

work, tandem, objects, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
path = "/apis/cstor.openebs.io/v1/namespaces/openebs/cstorvolumereplicas"

def server(backend):
    with open(f"{work}/{backend}/control-plane/address") as file:
        return file.read().split(",")[0].strip()

def opener(backend):
    """HTTPS with the cluster's admin credential (plain HTTP needs none)."""
    pki = f"{work}/{backend}/pki"
    if not os.path.exists(f"{pki}/ca.crt"):
        return urllib.request.build_opener()
    context = ssl.create_default_context(cafile=f"{pki}/ca.crt")
    context.load_cert_chain(f"{pki}/users/admin.crt", f"{pki}/users/admin.key")
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))

def replica(index):
    return {
        "apiVersion": "cstor.openebs.io/v1",
        "kind": "CStorVolumeReplica",
        "metadata": {
            "name": f"pvc-bench-{index:05}-pool-none",
            "namespace": "openebs",
            "labels": {
                "cstorpoolinstance.openebs.io/name": "pool-none",
                "cstorvolume.openebs.io/name": f"pvc-bench-{index:05}",
                "openebs.io/persistent-volume": f"pvc-bench-{index:05}",
            },
            "finalizers": ["cstorvolumereplica.openebs.io/finalizer"],
        },
        "spec": {"capacity": "10Gi", "targetIP": "127.0.0.1", "replicaid": f"{index:032x}"},
    }

def create(base, http):
    for index in range(objects):
        request = urllib.request.Request(
            base + path, data=json.dumps(replica(index)).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        http.open(request).read()

def timed(run):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    times.sort()
    return times

def raw(base, http):
    def run():
        items = json.load(http.open(base + "/apis/cstor.openebs.io/v1/cstorvolumereplicas"))["items"]
        assert len(items) == objects, len(items)
    return run

def command(args, backend):
    env = dict(os.environ, TANDEM_DATA_DIR=f"{work}/{backend}",
               KUBECONFIG=f"{work}/{backend}.kubeconfig", KUBECACHEDIR=f"{work}/{backend}.kube-cache")
    def run():
        out = subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout
        rows = len(out.splitlines()) - 1
        assert rows == objects, (args, rows)
    return run

results = {}
for backend in ("redb", "etcd"):
    base = server(backend)
    started = time.perf_counter()
    http = opener(backend)
    create(base, http)
    per_create = (time.perf_counter() - started) / objects
    print(f"{backend}: created {objects} replicas, {per_create * 1e3:.2f} ms each", flush=True)
    command(["kubectl", "get", "cvr", "-A"], backend)()  # discovery, cached after
    results[backend] = {
        "raw JSON list": timed(raw(base, http)),
        "tandem get cvr -A": timed(command([tandem, "get", "cvr", "-A"], backend)),
        "kubectl get cvr -A": timed(command(["kubectl", "get", "cvr", "-A"], backend)),
    }

print(f"\n{objects} CStorVolumeReplicas, {repeats} runs each (median / p90, ms):")
print(f"{'client':<22}{'redb':>16}{'etcd (3 members)':>20}{'etcd / redb':>14}")
for client in results["redb"]:
    cells = []
    for backend in ("redb", "etcd"):
        times = results[backend][client]
        p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
        cells.append(f"{statistics.median(times) * 1e3:.0f} / {p90 * 1e3:.0f}")
    ratio = statistics.median(results["etcd"][client]) / statistics.median(results["redb"][client])
    print(f"{client:<22}{cells[0]:>16}{cells[1]:>20}{ratio:>13.2f}x")
EOF
