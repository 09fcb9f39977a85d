//! End to end, as a user meets Tandem: `tandem up` starts a real control plane and real agents
//! (separate processes, real pool directories, loopback sockets) in a temporary data directory,
//! and everything after that goes through the `tandem` command only.

mod common;

use common::*;

const VOLUME: &str = "pvc-d1b26676-5035-4e5b-b564-68869b023306";

#[test]
fn the_seed_tables_and_a_volume_on_two_pools_on_two_nodes() {
    let cluster = Cluster::up(3, "10G");

    let table = rows(&cluster.ok(&["get", "cspc", "-n", "openebs"]));
    assert_eq!(
        columns(&table[0]),
        [
            "NAME",
            "HEALTHYINSTANCES",
            "PROVISIONEDINSTANCES",
            "DESIREDINSTANCES",
            "AGE"
        ]
    );
    assert_eq!(columns(&table[1])[..4], ["cspc-stripe-pool", "3", "3", "3"]);

    let table = rows(&cluster.ok(&["get", "cspi", "-n", "openebs"]));
    assert_eq!(
        columns(&table[0]),
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
        ]
    );
    assert_eq!(table.len(), 4);
    let mut hosts: Vec<&str> = table[1..].iter().map(|row| row[1].as_str()).collect();
    hosts.sort_unstable();
    assert_eq!(hosts, ["node1", "node2", "node3"]);
    for row in &table[1..] {
        assert!(
            row[0].starts_with("cspc-stripe-pool-") && row[0].len() == 21,
            "{row:?}"
        );
        assert_eq!(
            columns(row)[4..8],
            ["10G", "false", "stripe", "ONLINE"],
            "{row:?}"
        );
    }
    let selected = cluster.ok(&[
        "get",
        "cspi",
        "-n",
        "openebs",
        "-l",
        "openebs.io/cstor-pool-cluster=cspc-stripe-pool",
    ]);
    assert_eq!(rows(&selected).len(), 4);

    cluster.ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        "5Gi",
        "--replicas",
        "2",
    ]);
    let table = rows(&cluster.ok(&["get", "cvc", "-n", "openebs"]));
    assert_eq!(columns(&table[0]), ["NAME", "STATUS", "AGE"]);
    assert_eq!(columns(&table[1])[..2], [VOLUME, "Bound"]);

    let yaml = cluster.ok(&["get", "cvc", VOLUME, "-n", "openebs", "-o", "yaml"]);
    assert!(
        yaml.contains("replicaPoolInfo:") && yaml.contains("poolInfo:"),
        "{yaml}"
    );
    let pools = bound_pools(&cluster, VOLUME);
    assert_eq!(pools.len(), 2);
    let nodes: Vec<String> = pools
        .iter()
        .map(|pool| {
            cluster
                .pools()
                .into_iter()
                .find(|(name, _)| name == pool)
                .map(|(_, node)| node)
                .expect("the pool exists")
        })
        .collect();
    assert_ne!(nodes[0], nodes[1], "two replicas never share a node");

    // The agents create the storage, the volume's target connects to both: Healthy, as in the
    // seed's table.
    let table = cluster.wait_for(
        "both replicas to be Healthy",
        &["get", "cvr", "-n", "openebs"],
        |out| {
            out.lines()
                .filter(|line| line.contains(" Healthy "))
                .count()
                == 2
        },
    );
    let table = rows(&table);
    assert_eq!(
        columns(&table[0]),
        ["NAME", "USED", "ALLOCATED", "STATUS", "AGE"]
    );
    let mut names: Vec<&str> = table[1..].iter().map(|row| row[0].as_str()).collect();
    names.sort_unstable();
    let mut expected: Vec<String> = pools
        .iter()
        .map(|pool| format!("{VOLUME}-{pool}"))
        .collect();
    expected.sort();
    assert_eq!(names, expected);

    // Each replica's storage is on its node's pool: a sparse file of the volume's size.
    for node in &nodes {
        let data = cluster
            .data_dir()
            .join("nodes")
            .join(node)
            .join("pool/replicas")
            .join(VOLUME)
            .join("data");
        let metadata =
            std::fs::metadata(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
        assert_eq!(metadata.len(), 5 << 30);
        assert!(
            std::os::unix::fs::MetadataExt::blocks(&metadata) * 512 < 1 << 20,
            "sparse"
        );
    }

    let described = cluster.ok(&["describe", "cvc", VOLUME, "-n", "openebs"]);
    assert!(described.contains("Events:"), "{described}");
    assert!(
        described.contains("Synced")
            && described.contains("cstorvolumeclaim-controller")
            && described.contains("cstorvolumeconfig created successfully"),
        "{described}"
    );
}

#[test]
fn every_admission_rule_refuses_with_its_message_and_changes_nothing() {
    let cluster = Cluster::up(4, "10G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-a",
        "--size",
        "1Gi",
        "--replicas",
        "2",
    ]);
    cluster.ok(&[
        "volume",
        "create",
        "vol-one",
        "--size",
        "1Gi",
        "--replicas",
        "1",
    ]);
    cluster.ok(&[
        "volume",
        "create",
        "vol-three",
        "--size",
        "1Gi",
        "--replicas",
        "3",
    ]);
    let a = bound_pools(&cluster, "vol-a");
    let free: Vec<String> = cluster
        .pools()
        .into_iter()
        .map(|(pool, _)| pool)
        .filter(|pool| !a.contains(pool))
        .collect();
    let before = cluster.cvc("vol-a");

    let refused = |args: &[&str], message: &str| {
        let stderr = cluster.fails(args);
        assert!(
            stderr.contains(message),
            "expected {message:?} in {stderr:?}"
        );
    };
    let merge = |patch: &str| -> Vec<String> {
        [
            "patch", "cvc", "vol-a", "-n", "openebs", "--type", "merge", "-p", patch,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = merge(r#"{"spec":{"provision":{"replicaCount":3}}}"#);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, "cvc vol-a replicaCount got modified from 2 to 3");
    let args = merge(r#"{"spec":{"provision":{"capacity":{"storage":"2Gi"}}}}"#);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(
        &args,
        "cvc initial provisioned capacity `Spec.Provision.Capacity` is immutable, can't be modified",
    );

    let pools_refused = |volume: &str, pools: &[&str], message: &str| {
        let output = cluster.patch_pools(volume, pools);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{pools:?} was accepted");
        assert!(
            stderr.contains(message),
            "expected {message:?} in {stderr:?}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    };
    pools_refused(
        "vol-a",
        &[&a[0], &free[0]],
        &format!(
            "volume replica migration directly by modifying pool names [{}] is not yet supported",
            a[1]
        ),
    );
    pools_refused(
        "vol-a",
        &[&a[0], &a[1], &a[1]],
        &format!(
            "duplicate pool names [{} {} {}] found under spec of cvc vol-a",
            a[0], a[1], a[1]
        ),
    );
    pools_refused(
        "vol-a",
        &[&a[0], &a[1], "cspc-stripe-pool-zzzz"],
        "pool cspc-stripe-pool-zzzz named in spec.policy.replicaPoolInfo does not exist",
    );
    bound_pools(&cluster, "vol-one");
    pools_refused("vol-one", &[], "refusing to remove the last replica");
    let three = bound_pools(&cluster, "vol-three");
    pools_refused(
        "vol-three",
        &[&three[0]],
        "Can't perform more than one replica scale down requested scale down count 2",
    );

    // A pool of another pool cluster (its agent serves the first cluster's pool on that node,
    // so this one never comes ONLINE; the cluster rule speaks first).
    let other = "apiVersion: cstor.openebs.io/v1\nkind: CStorPoolCluster\nmetadata:\n  name: cspc-other\n  namespace: openebs\nspec:\n  pools:\n  - nodeSelector: {kubernetes.io/hostname: node1}\n    dataRaidGroups: [{blockDevices: [{blockDeviceName: other-disk}]}]\n    poolConfig: {dataRaidGroupType: stripe}\n";
    let file = cluster.data_dir().join("other.yaml");
    std::fs::write(&file, other).unwrap();
    cluster.ok(&["apply", "-f", file.to_str().unwrap()]);
    let other_pool = cluster.wait_for(
        "the other cluster's pool",
        &[
            "get",
            "cspi",
            "-n",
            "openebs",
            "-l",
            "openebs.io/cstor-pool-cluster=cspc-other",
            "-o",
            "name",
        ],
        |out| !out.trim().is_empty(),
    );
    let other_pool = other_pool.trim().rsplit('/').next().unwrap().to_string();
    pools_refused(
        "vol-a",
        &[&a[0], &a[1], &other_pool],
        &format!("pool {other_pool} belongs to CStorPoolCluster cspc-other, but the volume's replicas must be on pools of CStorPoolCluster cspc-stripe-pool"),
    );

    // Only when Bound: a volume that cannot be placed (5 replicas, 4 pools) stays Pending.
    let output = cluster.run(&[
        "volume",
        "create",
        "vol-pending",
        "--size",
        "1Gi",
        "--replicas",
        "5",
        "--cspc",
        "cspc-stripe-pool",
        "--timeout",
        "3s",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not enough pools are available"),
        "{stderr}"
    );
    pools_refused(
        "vol-pending",
        &[&a[0]],
        "Can't perform scaling of volume replicas when CVC is not in Bound state",
    );

    // A refused edit through the editor: re-opened with the error, then given up.
    let editor = cluster.data_dir().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\ngrep -q '^# \\* ' \"$1\" && exit 0\nsed -i 's/replicaCount: 2/replicaCount: 4/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let output = cluster.run_with(
        &["edit", "cvc", "vol-a", "-n", "openebs"],
        &[
            ("EDITOR", editor.to_str().unwrap()),
            ("KUBE_EDITOR", editor.to_str().unwrap()),
        ],
    );
    assert!(!output.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        all.contains("replicaCount got modified from 2 to 4"),
        "{all}"
    );

    // Nothing refused changed anything.
    let after = cluster.cvc("vol-a");
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(after["status"], before["status"]);
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );

    // A scale-up is accepted, but its new replica cannot be built while its node's agent is
    // down (killed just before the edit, while its pool still counts as ONLINE): no other change
    // is accepted until the new replica is Healthy, and "successfully scaled" is not said.
    // (Not vol-three's target node: vol-three must keep reporting for the check after this.)
    let three_target = cluster.target_node("vol-three");
    let (stalled_pool, stalled_node) = cluster
        .pools()
        .into_iter()
        .find(|(pool, node)| free.contains(pool) && *node != three_target)
        .unwrap();
    cluster.kill_9(&format!("nodes/{stalled_node}/agent.pid"));
    let output = cluster.patch_pools("vol-a", &[&a[0], &a[1], &stalled_pool]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let new_replica = format!("vol-a-{stalled_pool}");
    cluster.wait_for("the new replica", &["get", "cvr", "-n", "openebs"], |out| {
        out.contains(&new_replica)
    });
    let output = cluster.patch_pools("vol-a", &[&a[0], &a[1], &free[0], &free[1]]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("scaling of CVC vol-a is already in progress")
            || stderr.contains("the last replica change is not finished"),
        "{stderr}"
    );
    let described = cluster.ok(&["describe", "cvc", "vol-a", "-n", "openebs"]);
    assert!(
        described.contains("Scaling up volume replicas from 2 to 3"),
        "{described}"
    );
    assert!(
        !described.contains("successfully scaled"),
        "not before the replica is Healthy"
    );

    // Scale-down only while the volume is Healthy: vol-three is Degraded once the agent of one
    // of its replicas (not the one hosting its target, which would then report nothing) is dead.
    let target = cluster.target_node("vol-three");
    let nodes = cluster.replica_nodes("vol-three");
    // One dead replica only (two of three would leave it Offline, below its consistency factor).
    let dead = if nodes.contains(&stalled_node) {
        stalled_node.clone()
    } else {
        nodes.iter().find(|node| **node != target).unwrap().clone()
    };
    if dead != stalled_node {
        cluster.kill_9(&format!("nodes/{dead}/agent.pid"));
    }
    cluster.wait_for(
        "vol-three to be Degraded",
        &["get", "cv", "vol-three", "-n", "openebs"],
        |out| out.contains("Degraded"),
    );
    let keep: Vec<String> = nodes
        .iter()
        .filter(|node| **node != target)
        .map(|node| cluster.pool_on(node))
        .collect();
    let refs: Vec<&str> = keep.iter().map(String::as_str).collect();
    pools_refused(
        "vol-three",
        &refs,
        "is allowed only while CStorVolume vol-three is Healthy; it is Degraded",
    );
    cluster.ok(&["up", "--nodes", "4"]);
}

#[test]
fn a_pool_past_its_threshold_goes_read_only_and_is_skipped() {
    let cluster = Cluster::up(3, "64M");
    let full = cluster.pool_on("node3");
    let filler = cluster.data_dir().join("nodes/node3/pool/filler");
    std::fs::write(&filler, vec![0xa5u8; 56 << 20]).unwrap();
    let table = cluster.wait_for(
        "node3's pool to be read-only",
        &["get", "cspi", "-n", "openebs"],
        |out| {
            out.lines()
                .any(|line| line.contains("node3") && line.contains(" true "))
        },
    );
    assert!(
        !table
            .lines()
            .any(|line| line.contains("node1") && line.contains(" true ")),
        "{table}"
    );
    let described = cluster.ok(&["describe", "cspi", &full, "-n", "openebs"]);
    assert!(
        described.contains("PoolReadOnlyThreshold")
            && described.contains("Pool storage limit reached to read only threshold limit"),
        "{described}"
    );
    // The usage warnings came first (70 % and 80 % by default): one event, at the highest.
    assert!(
        described.contains("PoolUsageHigh") && described.contains("past its usage warning at 80%"),
        "{described}"
    );

    let output = cluster.run(&[
        "volume",
        "create",
        "vol-3",
        "--size",
        "32Mi",
        "--replicas",
        "3",
        "--timeout",
        "5s",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("usable pool count: 2 pending replica count: 3")
            && stderr.contains(&format!("{full} is read-only")),
        "{stderr}"
    );
    cluster.ok(&[
        "volume",
        "create",
        "vol-2",
        "--size",
        "32Mi",
        "--replicas",
        "2",
    ]);
    let pools = bound_pools(&cluster, "vol-2");
    assert!(!pools.contains(&full), "{pools:?}");
    let add = cluster.patch_pools("vol-2", &[&pools[0], &pools[1], &full]);
    assert!(!add.status.success());
    assert!(String::from_utf8_lossy(&add.stderr).contains(&format!("pool {full} is read-only")));

    std::fs::remove_file(&filler).unwrap();
    cluster.wait_for(
        "node3's pool to be writable again",
        &["get", "cspi", "-n", "openebs"],
        |out| {
            out.lines()
                .any(|line| line.contains("node3") && line.contains(" false "))
        },
    );
    let described = cluster.ok(&["describe", "cspi", &full, "-n", "openebs"]);
    assert!(
        described.contains("pool readOnly mode is unset")
            && described.contains("back under its usage warnings"),
        "{described}"
    );
}

#[test]
fn killed_processes_lose_nothing_and_a_dead_agent_shows_offline() {
    killed_processes_lose_nothing_and_a_dead_agent_shows_offline_on(Net::Loopback);
}

#[test]
fn killed_processes_lose_nothing_and_a_dead_agent_shows_offline_on_netns() {
    killed_processes_lose_nothing_and_a_dead_agent_shows_offline_on(Net::Netns);
}

fn killed_processes_lose_nothing_and_a_dead_agent_shows_offline_on(net: Net) {
    let Some(cluster) = Cluster::on(net, 3, "10G") else {
        return;
    };
    cluster.ok(&[
        "volume",
        "create",
        "vol-k",
        "--size",
        "2Gi",
        "--replicas",
        "1",
    ]);
    let placed = bound_pools(&cluster, "vol-k");
    let snapshot = |cluster: &Cluster| -> Vec<(String, String)> {
        let mut objects = Vec::new();
        for kind in ["cspc", "cspi", "cvc", "cv", "cvr"] {
            for item in items(&cluster.json(&["get", kind, "-n", "openebs"])) {
                objects.push((
                    text(&item["metadata"]["name"]),
                    text(&item["metadata"]["uid"]),
                ));
            }
        }
        objects.sort();
        objects
    };
    let before = snapshot(&cluster);
    assert_eq!(before.len(), 1 + 3 + 1 + 1 + 1);

    // The control plane dies without warning; the CLI says so in one line.
    cluster.kill_9("control-plane/control-plane.pid");
    let stderr = cluster.fails(&["get", "cvc", "-n", "openebs"]);
    assert!(
        stderr.contains("cannot reach the Tandem control plane"),
        "{stderr}"
    );
    cluster.ok(&["up", "--nodes", "3"]);
    assert_eq!(snapshot(&cluster), before);
    assert_eq!(bound_pools(&cluster, "vol-k"), placed);

    // An agent dies: its pool goes OFFLINE and takes no new replica.
    let (victim_pool, victim_node) = cluster
        .pools()
        .into_iter()
        .find(|(pool, _)| !placed.contains(pool))
        .unwrap();
    cluster.kill_9(&format!("nodes/{victim_node}/agent.pid"));
    cluster.wait_for(
        "the dead agent's pool to be OFFLINE",
        &["get", "cspi", "-n", "openebs"],
        |out| {
            out.lines()
                .any(|line| line.contains(&victim_node) && line.contains("OFFLINE"))
        },
    );
    let described = cluster.ok(&["describe", "cspi", &victim_pool, "-n", "openebs"]);
    assert!(described.contains("PoolOffline"), "{described}");
    let add = cluster.patch_pools("vol-k", &[&placed[0], &victim_pool]);
    assert!(!add.status.success());
    assert!(
        String::from_utf8_lossy(&add.stderr)
            .contains(&format!("pool {victim_pool} is OFFLINE, not ONLINE")),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );

    // `tandem up` brings it back.
    let again = cluster.ok(&["up", "--nodes", "3"]);
    assert!(again.contains("control plane already running"), "{again}");
    assert!(
        again.contains(&format!("started agent {victim_node}")),
        "{again}"
    );
    let table = cluster.ok(&["get", "cspi", "-n", "openebs"]);
    assert!(
        table
            .lines()
            .any(|line| line.contains(&victim_node) && line.contains("ONLINE")),
        "{table}"
    );

    // `tandem down` stops every process and keeps the data; a second `down` has nothing to do.
    let pids: Vec<String> = ["control-plane/control-plane.pid", "nodes/node1/agent.pid"]
        .iter()
        .map(|file| cluster.pid(file))
        .collect();
    let down = cluster.ok(&["down"]);
    assert!(down.contains("Tandem is down"), "{down}");
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "pid {pid} still runs"
        );
    }
    assert!(cluster
        .ok(&["down"])
        .contains("no Tandem cluster is running"));
    let stderr = cluster.fails(&["get", "cspc", "-n", "openebs"]);
    assert!(stderr.contains("no Tandem cluster found"), "{stderr}");
    assert!(cluster.data_dir().join("control-plane/store.redb").exists());
}
