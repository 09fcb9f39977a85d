//! The real `kubectl`, unchanged, against a cluster's control plane through `tandem kubeconfig`:
//! the seed's walk-through (`get cspc`, `get cspi -l`, `get cvc`, `get cvc NAME -o yaml`, `get
//! cvr`, `edit cvc` adding a pool, `describe cvc` with the scaling events, a refused scale-down
//! with cStor's message), `get -w`, `apply -f` twice, merge and JSON patches, a refused
//! strategic merge patch, `delete`, `get events`, `api-resources`; and each kind's table as
//! kubectl prints it (from the server-side Table) against `tandem get`, AGE aside. Skipped,
//! with a line saying so, where kubectl is not installed (CI has it).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

fn kubectl_installed() -> bool {
    let found = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        eprintln!("skipped: kubectl is not installed");
    }
    found
}

/// How long a test waits for the cluster to reach a state it asked for.
const SETTLE: Duration = Duration::from_secs(60);

/// kubectl with the cluster's kubeconfig, its own discovery cache, and its temporary files
/// (`edit`'s) in the cluster's directory.
struct Kubectl {
    kubeconfig: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn new(cluster: &Cluster) -> Kubectl {
        let dir = cluster.data_dir().join("kubectl");
        std::fs::create_dir_all(&dir).expect("a directory for kubectl");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, cluster.ok(&["kubeconfig"])).expect("write the kubeconfig");
        Kubectl { kubeconfig, dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .arg(format!("--cache-dir={}", self.dir.join("cache").display()))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("TMPDIR", &self.dir)
            .env_remove("KUBE_EDITOR");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kubectl")
    }

    /// `kubectl ARGS`, which must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `kubectl ARGS`, which must fail; its standard error.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "kubectl {} succeeded:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Runs `kubectl ARGS` until `accept` takes its output ([`SETTLE`] at most).
    fn wait_for(&self, what: &str, args: &[&str], accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SETTLE;
        loop {
            let output = self.run(args);
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            if output.status.success() && accept(&stdout) {
                return stdout;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last `kubectl {}`:\n{stdout}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A table's cells by column header, read at the columns' positions (headers are
/// left-aligned over their cells), without the columns named in `ignored`.
fn table_cells(text: &str, ignored: &[&str]) -> Vec<Vec<(String, String)>> {
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    // Headers are separated by at least two spaces ("LAST SEEN" holds one).
    let mut starts = Vec::new();
    let mut at = 0;
    while at < header.len() {
        let rest = &header[at..];
        let skipped = rest.len() - rest.trim_start().len();
        at += skipped;
        if at >= header.len() {
            break;
        }
        let end = header[at..].find("  ").map_or(header.len(), |gap| at + gap);
        starts.push((at, header[at..end].to_string()));
        at = end;
    }
    lines
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .filter(|(_, (_, name))| !ignored.contains(&name.as_str()))
                .map(|(index, (start, name))| {
                    let end = starts.get(index + 1).map_or(line.len(), |next| next.0);
                    let cell = line.get(*start..end.min(line.len())).unwrap_or_default();
                    (name.clone(), cell.trim().to_string())
                })
                .collect()
        })
        .collect()
}

/// kubectl's table for `args` is `tandem get`'s, AGE aside; values that move (a pool's
/// measured size) are given a few reads to agree.
fn same_table(kubectl: &Kubectl, cluster: &Cluster, args: &[&str]) {
    let ignored = ["AGE", "LAST SEEN", "FIRST SEEN"];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let theirs = kubectl.ok(args);
        let mut tandem_args = args.to_vec();
        tandem_args.extend(["-n", "openebs"]);
        let ours = cluster.ok(&tandem_args);
        let (their_cells, our_cells) =
            (table_cells(&theirs, &ignored), table_cells(&ours, &ignored));
        if their_cells == our_cells && !their_cells.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`kubectl {0}` and `tandem {0}` differ:\n{theirs}\n{ours}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Writes the `EDITOR` for `kubectl edit cvc`: it adds `pool` to `spec.policy.replicaPoolInfo`
/// of the file kubectl hands it.
fn editor_adding(kubectl: &Kubectl, pool: &str) -> PathBuf {
    let script = kubectl.dir.join("add-pool.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# Adds {pool} to the replica pools of the volume config being edited.\n\
             sed -i 's/^    replicaPoolInfo:$/    replicaPoolInfo:\\n    - poolName: {pool}/' \"$1\"\n"
        ),
    )
    .expect("write the editor script");
    let status = Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    assert!(status.success());
    script
}

/// `kubectl get ARGS -w` in the background: its lines arrive on the receiver.
struct Watch {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watch {
    fn start(kubectl: &Kubectl, args: &[&str]) -> Watch {
        let mut child = kubectl
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kubectl get -w");
        let stdout = child.stdout.take().expect("piped standard output");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Watch {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits ([`SETTLE`] at most) for a line `accept` takes; every line so far on failure.
    fn wait_for_line(&mut self, what: &str, accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SETTLE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if accept(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "`kubectl get -w` printed no line with {what}:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tables_are_read_by_column_position() {
    let table = "LAST SEEN   TYPE     REASON   OBJECT      MESSAGE\n\
                 3s          Normal   Synced   cvc/pvc-1   created  with  spaces\n\
                 12m         Normal            cvc/pvc-2   m\n";
    let cells = table_cells(table, &["LAST SEEN"]);
    let cell = |row: usize, column: &str| {
        cells[row]
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(cells.len(), 2);
    assert_eq!(cell(0, "MESSAGE"), Some("created  with  spaces"));
    assert_eq!(cell(1, "REASON"), Some(""));
    assert_eq!(cell(1, "OBJECT"), Some("cvc/pvc-2"));
    assert_eq!(cell(0, "LAST SEEN"), None, "ignored");
    assert!(table_cells("", &[]).is_empty());
}

/// The columns of a table line.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn the_seed_walk_through_with_the_real_kubectl() {
    if !kubectl_installed() {
        return;
    }
    let cluster = Cluster::up(3, "1G");
    let kubectl = Kubectl::new(&cluster);
    let volume = "pvc-d1b26676-5035-4e5b-b564-68869b023306";
    cluster.ok(&[
        "volume",
        "create",
        volume,
        "--size",
        "64Mi",
        "--replicas",
        "2",
    ]);

    // kubectl get cspc -n openebs
    let clusters = kubectl.ok(&["get", "cspc", "-n", "openebs"]);
    let lines: Vec<&str> = clusters.lines().collect();
    assert_eq!(
        words(lines[0]),
        [
            "NAME",
            "HEALTHYINSTANCES",
            "PROVISIONEDINSTANCES",
            "DESIREDINSTANCES",
            "AGE"
        ],
        "{clusters}"
    );
    assert_eq!(words(lines[1])[..4], ["cspc-stripe-pool", "3", "3", "3"]);

    // kubectl get cspi -n openebs, and -l openebs.io/cstor-pool-cluster=<cspc_name>
    let pools = kubectl.ok(&["get", "cspi", "-n", "openebs"]);
    assert_eq!(
        words(pools.lines().next().unwrap()),
        [
            "NAME",
            "HOSTNAME",
            "ALLOCATED",
            "FREE",
            "CAPACITY",
            "READONLY",
            "TYPE",
            "STATUS",
            "AGE"
        ],
        "{pools}"
    );
    let selected = kubectl.ok(&[
        "get",
        "cspi",
        "-n",
        "openebs",
        "-l",
        "openebs.io/cstor-pool-cluster=cspc-stripe-pool",
    ]);
    assert_eq!(selected.lines().count(), 4, "{selected}");
    assert!(selected
        .lines()
        .skip(1)
        .all(|line| words(line).contains(&"ONLINE") && words(line).contains(&"stripe")));
    let none = kubectl.run(&[
        "get",
        "cspi",
        "-n",
        "openebs",
        "-l",
        "openebs.io/cstor-pool-cluster=other",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&none.stderr).trim(),
        "No resources found in openebs namespace."
    );

    // kubectl get cvc -n openebs
    let configs = kubectl.ok(&["get", "cvc", "-n", "openebs"]);
    let lines: Vec<&str> = configs.lines().collect();
    assert_eq!(words(lines[0]), ["NAME", "STATUS", "AGE"], "{configs}");
    assert_eq!(words(lines[1])[..2], [volume, "Bound"]);

    // kubectl get cvc <PV_NAME> -n openebs -o yaml
    let yaml = kubectl.ok(&["get", "cvc", volume, "-n", "openebs", "-o", "yaml"]);
    let cvc: serde_json::Value = yaml_serde::from_str(&yaml).expect("kubectl -o yaml is YAML");
    assert_eq!(cvc["kind"], "CStorVolumeConfig");
    let (spec_pools, status_pools) = pool_info(&cvc);
    assert_eq!(spec_pools.len(), 2, "{yaml}");
    assert_eq!(spec_pools, status_pools);
    assert_eq!(cvc["status"]["phase"], "Bound");

    // kubectl get cvr -n openebs
    let replicas = kubectl.wait_for(
        "two Healthy replicas",
        &["get", "cvr", "-n", "openebs"],
        |out| {
            out.lines()
                .skip(1)
                .filter(|line| line.contains(" Healthy "))
                .count()
                == 2
        },
    );
    assert_eq!(
        words(replicas.lines().next().unwrap()),
        ["NAME", "USED", "ALLOCATED", "STATUS", "AGE"]
    );

    // 1: scale the replicas to the pool that has none, by `kubectl edit` (EDITOR adds it),
    // watching the replicas meanwhile.
    let node = free_node(&cluster, volume);
    let pool = cluster.pool_on(&node);
    let new_replica = format!("{volume}-{pool}");
    let mut watch = Watch::start(
        &kubectl,
        &[
            "get",
            "cvr",
            "-n",
            "openebs",
            "-w",
            "--request-timeout=120s",
        ],
    );
    watch.wait_for_line("the listed replicas", |line| line.starts_with(volume));
    let editor = editor_adding(&kubectl, &pool);
    let edited = kubectl
        .command(&["edit", "cvc", volume, "-n", "openebs"])
        .env("EDITOR", &editor)
        .output()
        .expect("run kubectl edit");
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&edited.stdout).trim(),
        format!("cstorvolumeconfig.cstor.openebs.io/{volume} edited")
    );
    watch.wait_for_line("the new replica Healthy", |line| {
        line.starts_with(&new_replica) && words(line).contains(&"Healthy")
    });
    drop(watch);
    let yaml = kubectl.ok(&["get", "cvc", volume, "-n", "openebs", "-o", "yaml"]);
    let cvc: serde_json::Value = yaml_serde::from_str(&yaml).expect("YAML");
    assert!(pool_info(&cvc).0.contains(&pool), "{yaml}");
    let described = kubectl.wait_for(
        "the scale-up event",
        &["describe", "cvc", volume, "-n", "openebs"],
        |out| out.contains("successfully scaled volume replicas to 3"),
    );
    let events = described
        .split("Events:")
        .nth(1)
        .expect("describe ends with the events");
    assert!(
        events
            .lines()
            .any(|line| words(line).first() == Some(&"Normal")
                && line.contains("ScalingVolumeReplicas")
                && line.contains("cstorvolumeclaim-controller")
                && line.ends_with("successfully scaled volume replicas to 3")),
        "{described}"
    );

    // 2: a scale-down of two replicas at once is refused, with cStor's message.
    let (_, pools_now) = pool_info(&cvc);
    let keep_one =
        serde_json::json!({"spec": {"policy": {"replicaPoolInfo": [{"poolName": pools_now[0]}]}}});
    let refused = kubectl.fails(&[
        "patch",
        "cvc",
        volume,
        "-n",
        "openebs",
        "--type=merge",
        "-p",
        &keep_one.to_string(),
    ]);
    assert_eq!(
        refused.trim(),
        "Error from server (BadRequest): admission webhook \"admission-webhook.cstor.openebs.io\" \
         denied the request: Can't perform more than one replica scale down requested scale \
         down count 2"
    );
    // One at a time is allowed: remove the first original pool with a JSON patch.
    let old_pool = spec_pools[0].clone();
    let index = pool_info(&cvc)
        .0
        .iter()
        .position(|name| *name == old_pool)
        .expect("the old pool is listed");
    let remove = format!(r#"[{{"op":"remove","path":"/spec/policy/replicaPoolInfo/{index}"}}]"#);
    kubectl.ok(&[
        "patch",
        "cvc",
        volume,
        "-n",
        "openebs",
        "--type=json",
        "-p",
        &remove,
    ]);
    let old_replica = format!("{volume}-{old_pool}");
    kubectl.wait_for(
        "the old replica gone",
        &["get", "cvr", "-n", "openebs"],
        |out| !out.contains(&old_replica) && out.lines().count() == 3,
    );
    let described = kubectl.wait_for(
        "the scale-down events",
        &["describe", "cvc", volume, "-n", "openebs"],
        |out| out.contains("successfully scaled volume replicas to 2"),
    );
    assert!(
        described.contains("Scaling down volume replicas from 3 to 2 is in progress"),
        "{described}"
    );

    // Every kind as kubectl prints it is what `tandem get` prints (AGE aside), wide too.
    for kind in ["cspc", "cspi", "cvc", "cv", "cvr", "events"] {
        same_table(&kubectl, &cluster, &["get", kind]);
        same_table(&kubectl, &cluster, &["get", kind, "-o", "wide"]);
    }
    same_table(&kubectl, &cluster, &["get", "cvc", volume]);
}

const APPLIED: &str = "apiVersion: cstor.openebs.io/v1
kind: CStorVolumeConfig
metadata:
  name: pvc-applied
  namespace: openebs
  labels:
    openebs.io/cstor-pool-cluster: cspc-stripe-pool
spec:
  capacity:
    storage: 64Mi
  provision:
    capacity:
      storage: 64Mi
    replicaCount: 1
";

#[test]
fn the_real_kubectl_discovers_applies_patches_and_deletes() {
    if !kubectl_installed() {
        return;
    }
    let cluster = Cluster::up(1, "1G");
    let kubectl = Kubectl::new(&cluster);

    let resources = kubectl.ok(&["api-resources"]);
    for short in ["cspc", "cspi", "cvc", "cv", "cvr", "ev"] {
        assert!(
            resources
                .lines()
                .any(|line| words(line).get(1) == Some(&short)),
            "{short} missing:\n{resources}"
        );
    }

    // apply -f: created, then configured.
    let file = kubectl.dir.join("pvc-applied.yaml");
    std::fs::write(&file, APPLIED).expect("write the manifest");
    let file = file.to_str().expect("a UTF-8 path");
    assert_eq!(
        kubectl.ok(&["apply", "-f", file]).trim(),
        "cstorvolumeconfig.cstor.openebs.io/pvc-applied created"
    );
    kubectl.wait_for(
        "the applied volume Bound",
        &["get", "cvc", "pvc-applied"],
        |out| out.contains(" Bound "),
    );
    let labeled = APPLIED.replace("  labels:\n", "  labels:\n    team: storage\n");
    std::fs::write(kubectl.dir.join("pvc-applied.yaml"), labeled).expect("rewrite");
    assert_eq!(
        kubectl.ok(&["apply", "-f", file]).trim(),
        "cstorvolumeconfig.cstor.openebs.io/pvc-applied configured"
    );
    assert_eq!(
        kubectl.ok(&[
            "get",
            "cvc",
            "pvc-applied",
            "-o",
            "jsonpath={.metadata.labels.team}"
        ]),
        "storage"
    );

    // Merge and JSON patches; a strategic merge patch is refused as for any custom resource.
    kubectl.ok(&[
        "patch",
        "cvc",
        "pvc-applied",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":"gold"}}}"#,
    ]);
    kubectl.ok(&[
        "patch",
        "cvc",
        "pvc-applied",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/metadata/labels/tier","value":"silver"}]"#,
    ]);
    let selected = kubectl.ok(&[
        "get",
        "cvc",
        "-l",
        "tier=silver,team in (storage)",
        "-o",
        "name",
    ]);
    assert_eq!(
        selected.trim(),
        "cstorvolumeconfig.cstor.openebs.io/pvc-applied"
    );
    let strategic = kubectl.fails(&[
        "patch",
        "cvc",
        "pvc-applied",
        "-p",
        r#"{"metadata":{"labels":{"tier":"bronze"}}}"#,
    ]);
    assert!(
        strategic.contains(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json-patch+json, application/merge-patch+json"
        ),
        "{strategic}"
    );

    // get events (and one by name), and a field selector kubectl passes through.
    let events = kubectl.ok(&["get", "events"]);
    assert_eq!(
        words(events.lines().next().unwrap()),
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{events}"
    );
    assert!(events.contains("cstorvolumeconfig/pvc-applied"), "{events}");
    let name = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=pvc-applied,reason=Synced",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let one = kubectl.ok(&["get", "event", &name, "-o", "jsonpath={.message}"]);
    assert_eq!(one, "cstorvolumeconfig created successfully");
    let unsupported = kubectl.fails(&["get", "cvc", "--field-selector", "status.phase=Bound"]);
    assert!(
        unsupported.contains("field label not supported: status.phase"),
        "{unsupported}"
    );

    // delete, then the object is gone as kubectl says it.
    assert_eq!(
        kubectl.ok(&["delete", "cvc", "pvc-applied"]).trim(),
        "cstorvolumeconfig.cstor.openebs.io \"pvc-applied\" deleted"
    );
    assert_eq!(
        kubectl.fails(&["get", "cvc", "pvc-applied"]).trim(),
        "Error from server (NotFound): cstorvolumeconfigs.cstor.openebs.io \"pvc-applied\" not found"
    );
}
