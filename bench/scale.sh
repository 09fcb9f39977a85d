#!/usr/bin/env bash
# What many volumes cost: for each count in COUNTS, a fresh `tandem up` cluster (3 nodes, one
# machine, TLS everywhere) is given that many 2-replica volumes at once (CStorVolumeConfigs
# POSTed to the API; the controllers place them, the agents create the replicas and start the
# targets). Measured per count:
#   - create: from the first POST until every CVC is Bound, and until every CV is Healthy;
#   - idle CPU: utime + stime of the control plane and every agent (/proc/PID/stat) over
#     IDLE_SECONDS with no I/O and nothing changing, in % of one core;
#   - memory: every agent's VmRSS, and per volume against the smallest count's cluster;
#   - `tandem get cvr -A` over all 2N replicas: median of LIST_REPEATS runs;
#   - a scale-up of one volume (2 -> 3 replicas: the third node's pool added to its
#     replicaPoolInfo) until its CV says 3 replicas Healthy.
# The smallest count (default 1) is the empty cluster the others are compared with.
#
#   bench/scale.sh     COUNTS="1 100 300 1000"  IDLE_SECONDS=120  TANDEM_BIN=path (else a release build)
#                      KEEP=1 (a cluster whose scale-up did not finish is left running, to look at;
#                      KEEP=all: every cluster)
#
# Goals (issue 14): 1,000 volumes Bound in <= 60 s; idle CPU <= 2 % of a core at 1,000 volumes;
# `get cvr -A` over 2,000 replicas <= 0.5 s; the scale-up as fast among 1,000 as alone.
# Not a test: CI does not run it. Needs python3.
set -eEuo pipefail

COUNTS=${COUNTS:-1 100 300 1000}
IDLE_SECONDS=${IDLE_SECONDS:-120}
LIST_REPEATS=${LIST_REPEATS:-5}
MAX_SECONDS=${MAX_SECONDS:-1800}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
command -v python3 >/dev/null || { echo "python3 is not installed" >&2; exit 1; }

if [ -n "${TANDEM_BIN:-}" ]; then
    TANDEM=$TANDEM_BIN
else
    echo "building target/release/tandem" >&2
    (cd "$REPO" && timeout 1800 cargo build --release -p tandem -q)
    TANDEM=$REPO/target/release/tandem
fi
WORK=$(mktemp -d "${BENCH_BASE:-/tmp}/tandem-scale.XXXXXX")
cleanup() {
    local dir
    if [ -n "${KEEP:-}" ] && compgen -G "$WORK/n*" >/dev/null; then
        echo "KEEP: left running in $WORK (tandem down --data-dir DIR for each)" >&2
        return
    fi
    for dir in "$WORK"/n*; do
        [ -d "$dir" ] && timeout -k 5 120 "$TANDEM" down --data-dir "$dir" >/dev/null 2>&1
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

timeout -k 10 "$MAX_SECONDS" python3 - "$WORK" "$TANDEM" "$IDLE_SECONDS" "$LIST_REPEATS" \
    "$(git -C "$REPO" rev-parse --short HEAD)" $COUNTS <<'EOF'
import json, os, ssl, statistics, subprocess, sys, time, urllib.error, urllib.request

work, tandem, idle_seconds, list_repeats, commit = sys.argv[1:6]
idle_seconds, list_repeats = int(idle_seconds), int(list_repeats)
counts = sorted(int(count) for count in sys.argv[6:])
API = "/apis/cstor.openebs.io/v1/namespaces/openebs"
TICKS = os.sysconf("SC_CLK_TCK")
T0 = time.monotonic()

def log(message):
    print(f"[{time.monotonic() - T0:6.0f}s] {message}", file=sys.stderr, flush=True)

def run(args, directory):
    return subprocess.run([tandem, *args, "--data-dir", directory], check=True,
                          capture_output=True, text=True).stdout

class Api:
    def __init__(self, directory):
        with open(f"{directory}/control-plane/address") as file:
            self.base = file.read().split(",")[0].strip()
        pki = f"{directory}/pki"
        context = ssl.create_default_context(cafile=f"{pki}/ca.crt")
        context.load_cert_chain(f"{pki}/users/admin.crt", f"{pki}/users/admin.key")
        self.http = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))

    def call(self, path, body=None, method="GET", content_type="application/json"):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + API + path, data=data, method=method,
                                         headers={"Content-Type": content_type})
        return json.load(self.http.open(request, timeout=30))

    def items(self, plural):
        return self.call(f"/{plural}")["items"]

def volume(index, cluster):
    name = f"vol-{index:05}"
    return {
        "apiVersion": "cstor.openebs.io/v1", "kind": "CStorVolumeConfig",
        "metadata": {"name": name, "namespace": "openebs",
                     "labels": {"openebs.io/cstor-pool-cluster": cluster}},
        "spec": {"capacity": {"storage": "64Mi"},
                 "provision": {"capacity": {"storage": "64Mi"}, "replicaCount": 2}},
    }

def wait(what, check, limit, poll=0.2):
    started = time.monotonic()
    while True:
        result = check()
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise SystemExit(f"gave up waiting {limit}s for {what}")
        time.sleep(poll)

def processes(directory):
    found = {"control-plane": int(open(f"{directory}/control-plane/control-plane.pid").read())}
    for node in sorted(os.listdir(f"{directory}/nodes")):
        found[node] = int(open(f"{directory}/nodes/{node}/agent.pid").read())
    return found

def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

def healthy_count(cv):
    statuses = cv.get("status", {}).get("replicaStatuses") or []
    return sum(1 for status in statuses if status.get("mode") == "Healthy")

def measure(count):
    directory = f"{work}/n{count}"
    log(f"{count} volumes: tandem up")
    run(["up", "--nodes", "3", "--pool-size", "1T", "--port", "0"], directory)
    api = Api(directory)
    cluster = api.items("cstorpoolclusters")[0]["metadata"]["name"]
    pids = processes(directory)
    result = {"count": count}

    started = time.monotonic()
    for index in range(count):
        api.call("/cstorvolumeconfigs", volume(index, cluster), method="POST")
    result["post_s"] = time.monotonic() - started
    def bound():
        return sum(1 for cvc in api.items("cstorvolumeconfigs")
                   if cvc.get("status", {}).get("phase") == "Bound") == count
    wait("every CVC Bound", bound, 600)
    result["bound_s"] = time.monotonic() - started
    def healthy():
        cvs = api.items("cstorvolumes")
        return len(cvs) == count and all(cv.get("status", {}).get("phase") == "Healthy"
                                         and healthy_count(cv) == 2 for cv in cvs)
    wait("every CV Healthy with 2 replicas", healthy, 600)
    result["healthy_s"] = time.monotonic() - started
    log(f"{count} volumes: Bound after {result['bound_s']:.1f} s, Healthy after "
        f"{result['healthy_s']:.1f} s")

    time.sleep(5)  # let rebuild-progress and status writes settle before the idle window
    before = {name: cpu_ticks(pid) for name, pid in pids.items()}
    wall = time.monotonic()
    time.sleep(idle_seconds)
    wall = time.monotonic() - wall
    result["idle_cpu"] = {name: (cpu_ticks(pid) - before[name]) / TICKS / wall * 100
                          for name, pid in pids.items()}
    result["rss_kib"] = {name: rss_kib(pid) for name, pid in pids.items()}
    log(f"{count} volumes: idle CPU {sum(result['idle_cpu'].values()):.2f} % of a core")

    times = []
    for _ in range(list_repeats):
        started = time.monotonic()
        out = run(["get", "cvr", "-A"], directory)
        times.append(time.monotonic() - started)
        assert len(out.splitlines()) - 1 == 2 * count, out[:200]
    result["list_s"] = statistics.median(times)

    cvc = api.call("/cstorvolumeconfigs/vol-00000")
    used = {info["poolName"] for info in cvc["spec"]["policy"]["replicaPoolInfo"]}
    free = [pool["metadata"]["name"] for pool in api.items("cstorpoolinstances")
            if pool["metadata"]["name"] not in used]
    pools = [{"poolName": name} for name in sorted(used) + free[:1]]
    started = time.monotonic()
    log(f"{count} volumes: scale-up of vol-00000 asked at {time.time():.3f} (Unix time)")
    api.call("/cstorvolumeconfigs/vol-00000", {"spec": {"policy": {"replicaPoolInfo": pools}}},
             method="PATCH", content_type="application/merge-patch+json")
    try:
        wait("the scale-up", lambda: healthy_count(api.call("/cstorvolumes/vol-00000")) == 3,
             120, poll=0.02)
        result["scale_up_s"] = time.monotonic() - started
        log(f"{count} volumes: scale-up Healthy after {result['scale_up_s']:.2f} s")
    except SystemExit as error:
        result["scale_up_s"] = None
        log(f"{count} volumes: {error}")
        if os.environ.get("KEEP"):
            log(f"KEEP: the cluster is left running in {directory}")
            return result

    if os.environ.get("KEEP") == "all":
        log(f"KEEP: the cluster is left running in {directory}")
        return result
    run(["down"], directory)
    subprocess.run(["rm", "-rf", directory], check=True)
    return result

def scale_up(seconds):
    return "not Healthy within 120 s" if seconds is None else f"{seconds:.2f} s"

results = [measure(count) for count in counts]
base = results[0]
print(f"\nbench/scale.sh: 3 nodes on one machine, 2-replica volumes of 64Mi, idle over "
      f"{idle_seconds} s; commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
print("| volumes | Bound | Healthy | idle CPU, % of a core (control plane / agents) "
      "| agent RSS (MiB) | per volume (KiB) | get cvr -A | scale-up to Healthy |")
print("|---|---|---|---|---|---|---|---|")
for result in results:
    cpu = result["idle_cpu"]
    agents = [value for name, value in cpu.items() if name != "control-plane"]
    rss = [value for name, value in result["rss_kib"].items() if name != "control-plane"]
    base_rss = [value for name, value in base["rss_kib"].items() if name != "control-plane"]
    extra = result["count"] - base["count"]
    per_volume = (sum(rss) - sum(base_rss)) / extra if extra else 0
    print(f"| {result['count']} | {result['bound_s']:.1f} s | {result['healthy_s']:.1f} s "
          f"| {sum(cpu.values()):.2f} ({cpu['control-plane']:.2f} / "
          f"{' '.join(f'{value:.2f}' for value in agents)}) "
          f"| {' '.join(f'{value / 1024:.0f}' for value in rss)} "
          f"| {per_volume:.0f} | {result['list_s'] * 1000:.0f} ms "
          f"| {scale_up(result['scale_up_s'])} |")
EOF
