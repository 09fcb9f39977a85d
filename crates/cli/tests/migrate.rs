//! `tandem volume migrate`: one command moves a replica from one pool to another while fio
//! writes and verifies, with the control plane and the new replica's agent killed -9 in the
//! middle; it ends with exactly the placement asked for, and an impossible migration is refused
//! before anything changes. `tandem node drain` moves every replica and target off a node while
//! fio verifies, refuses up front (cordoning nothing) when a replica has nowhere to go, and,
//! interrupted by kill -9 of itself, the control plane and the new replica's agent, carries on
//! when run again.

mod common;

use common::*;

/// The volume's pools in the spec and in the status, each sorted.
fn placement(cluster: &Cluster, volume: &str) -> (Vec<String>, Vec<String>) {
    let cvc = cluster.cvc(volume);
    let names = |list: &serde_json::Value, field: Option<&str>| -> Vec<String> {
        let mut names: Vec<String> = list
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| text(field.map_or(item, |field| &item[field])))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    (
        names(&cvc["spec"]["policy"]["replicaPoolInfo"], Some("poolName")),
        names(&cvc["status"]["poolInfo"], None),
    )
}

#[test]
fn a_migration_survives_killed_processes_and_ends_with_the_asked_placement() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-m",
        "--size",
        "256Mi",
        "--replicas",
        "2",
    ]);
    let uri = cluster.uri("vol-m");
    let writer = VerifyingFio::start(&cluster, &uri);
    let old_nodes = cluster.replica_nodes("vol-m");
    let (from, to) = (
        cluster.pool_on(&old_nodes[0]),
        cluster.pool_on(&free_node(&cluster, "vol-m")),
    );
    let kept = cluster.pool_on(&old_nodes[1]);
    // Refused up front, nothing changed: the same pool, one that has a replica already, a
    // volume that does not exist.
    let before = placement(&cluster, "vol-m");
    let refused = cluster.fails(&["volume", "migrate", "vol-m", "--from", &from, "--to", &from]);
    assert!(refused.contains("name the same pool"), "{refused}");
    let refused = cluster.fails(&["volume", "migrate", "vol-m", "--from", &from, "--to", &kept]);
    assert!(
        refused.contains(&format!("already has a replica on pool {kept}")),
        "{refused}"
    );
    let missing = cluster.fails(&["volume", "migrate", "nope", "--from", &from, "--to", &to]);
    assert!(missing.contains("volume nope not found"), "{missing}");
    assert_eq!(placement(&cluster, "vol-m"), before);

    let started = cluster.ok(&[
        "volume",
        "migrate",
        "vol-m",
        "--from",
        &from,
        "--to",
        &to,
        "--wait=false",
    ]);
    assert!(
        started.contains(&format!("migrating from pool {from} to pool {to}")),
        "{started}"
    );
    // The control plane dies at once, before or while it acts on the migration: what it
    // restarts with is what the store recorded.
    let to_node = cluster
        .pools()
        .into_iter()
        .find(|(pool, _)| *pool == to)
        .map(|(_, node)| node)
        .expect("the new pool's node");
    cluster.kill_9("control-plane/control-plane.pid");
    cluster.ok(&["up", "--nodes", "3"]);
    // Then the new replica's agent, once the replica exists (while it is rebuilt, or after).
    let new_replica = format!("vol-m-{to}");
    cluster.wait_for(
        "the new replica to be created",
        &["get", "cvr", "-n", "openebs"],
        |out| out.contains(&new_replica),
    );
    cluster.kill_9(&format!("nodes/{to_node}/agent.pid"));
    cluster.ok(&["up", "--nodes", "3"]);
    // The same command again follows the migration to its end (or finds it done).
    let done = cluster.ok(&["volume", "migrate", "vol-m", "--from", &from, "--to", &to]);
    let followed = done.contains("already migrating")
        && done.contains(&format!("moved from pool {from} to pool {to}"));
    let found_done = done.contains("none on pool") && done.contains("its replicas are on");
    assert!(followed || found_done, "{done}");
    let mut wanted = vec![kept.clone(), to.clone()];
    wanted.sort();
    assert_eq!(placement(&cluster, "vol-m"), (wanted.clone(), wanted));
    // The old replica's deletion was asked for; its agent destroys it, and then it is gone.
    let old_replica = format!("vol-m-{from}");
    cluster.wait_for(
        "the old replica to be destroyed",
        &["get", "cvr", "-n", "openebs"],
        |out| !out.contains(&old_replica),
    );
    let cvc = cluster.cvc("vol-m");
    assert!(
        cvc["metadata"]["annotations"]["tandem.io/migrate-from"].is_null(),
        "{cvc}"
    );
    assert!(writer.finish() >= 1);
    // The application's data is all there: the last verifying run read back every block.
    let events = cluster.ok(&["describe", "cvc", "vol-m", "-n", "openebs"]);
    assert!(events.contains("MigratingVolumeReplicas"), "{events}");
    // Straight back, while the old replica may still be being destroyed: a new one is made
    // once it is gone.
    let back = cluster.ok(&[
        "volume",
        "migrate",
        "vol-m",
        "--from",
        &to,
        "--to",
        &from,
        "--timeout",
        "120s",
    ]);
    assert!(
        back.contains(&format!("moved from pool {to} to pool {from}")),
        "{back}"
    );
    let mut wanted = vec![kept, from];
    wanted.sort();
    assert_eq!(placement(&cluster, "vol-m"), (wanted.clone(), wanted));
}

/// Whether node `node`'s pool carries the cordon annotation.
fn is_cordoned(cluster: &Cluster, node: &str) -> bool {
    let pool = cluster.pool_on(node);
    let cspi = cluster.json(&["get", "cspi", &pool, "-n", "openebs"]);
    !cspi["metadata"]["annotations"]["tandem.io/cordoned"].is_null()
}

#[test]
fn a_drain_moves_every_replica_and_target_off_the_node_or_refuses_up_front() {
    let cluster = Cluster::up(3, "1G");
    let create = |name: &str, replicas: &str| {
        cluster.ok(&[
            "volume",
            "create",
            name,
            "--size",
            "128Mi",
            "--replicas",
            replicas,
        ]);
    };
    create("vol-a", "2");
    let node = cluster.target_node("vol-a");
    // A volume with a replica on every node: the drained node's has nowhere to go.
    create("vol-all", "3");
    let refused = cluster.fails(&["node", "drain", &node]);
    assert!(
        refused.contains(&format!("cannot drain node {node}")) && refused.contains("vol-all"),
        "{refused}"
    );
    assert!(refused.contains("nothing was changed"), "{refused}");
    assert!(!is_cordoned(&cluster, &node));
    cluster.ok(&["volume", "delete", "vol-all"]);
    cluster.wait_for(
        "vol-all to be gone",
        &["get", "cvr", "-n", "openebs"],
        |out| !out.contains("vol-all"),
    );

    // The target moves: the application must reconnect (fio's nbd engine does not).
    let application = Application::start(&cluster, &[cluster.uri("vol-a")]);
    let drained = cluster.ok(&["node", "drain", &node]);
    assert!(
        drained.contains(&format!("node/{node} cordoned")),
        "{drained}"
    );
    assert!(
        drained.contains(&format!("node/{node} drained")),
        "{drained}"
    );
    assert!(is_cordoned(&cluster, &node));
    assert!(!cluster.replica_nodes("vol-a").contains(&node));
    let moved_to = cluster.target_node("vol-a");
    assert_ne!(moved_to, node, "the target left the drained node");
    let described = cluster.ok(&["describe", "cv", "vol-a", "-n", "openebs"]);
    assert!(described.contains("TargetMoved"), "{described}");
    let summary = application.finish();
    assert!(summary["writes"].as_u64().unwrap_or(0) > 0, "{summary:#}");
    for field in ["wrongWhileRunning", "blocksWrong", "blocksUnreadable"] {
        assert_eq!(summary[field], 0, "{field}: {summary:#}");
    }
    // A cordoned node gets no new replica; uncordoned, it may again.
    create("vol-b", "2");
    assert!(!cluster.replica_nodes("vol-b").contains(&node));
    let uncordoned = cluster.ok(&["node", "uncordon", &node]);
    assert!(
        uncordoned.contains(&format!("node/{node} uncordoned")),
        "{uncordoned}"
    );
    assert!(!is_cordoned(&cluster, &node));
    let missing = cluster.fails(&["node", "cordon", "node9"]);
    assert!(missing.contains("node node9 has no pool"), "{missing}");
}

#[test]
fn a_dead_node_is_drained_from_the_surviving_replicas() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-d",
        "--size",
        "128Mi",
        "--replicas",
        "2",
    ]);
    let target = cluster.target_node("vol-d");
    let dead = cluster
        .replica_nodes("vol-d")
        .into_iter()
        .find(|node| *node != target)
        .expect("a replica away from the target");
    let pool = cluster.pool_on(&dead);
    cluster.kill_9(&format!("nodes/{dead}/agent.pid"));
    cluster.wait_for(
        "the dead node's pool to be OFFLINE",
        &["get", "cspi", &pool, "-n", "openebs"],
        |out| out.contains("OFFLINE"),
    );
    let drained = cluster.ok(&["node", "drain", &dead]);
    assert!(
        drained.contains(&format!("node/{dead} drained")),
        "{drained}"
    );
    let nodes = cluster.replica_nodes("vol-d");
    assert!(!nodes.contains(&dead) && nodes.len() == 2, "{nodes:?}");
    let replicas = cluster.ok(&["get", "cvr", "-n", "openebs"]);
    let healthy = replicas
        .lines()
        .filter(|line| line.contains("Healthy"))
        .count();
    assert_eq!(healthy, 2, "{replicas}");
}

#[test]
fn a_drain_interrupted_by_killed_processes_carries_on_when_run_again() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-d",
        "--size",
        "256Mi",
        "--replicas",
        "2",
    ]);
    let uri = cluster.uri("vol-d");
    // 32 MiB to copy at 1 MiB/s: the drain is caught in the middle of its migration.
    try_qemu_io(&uri, &["write -P 0x3c 0 32M"]).expect("write");
    let rate = |value: &str| {
        let patch =
            format!(r#"{{"metadata":{{"annotations":{{"tandem.io/rebuild-rate":{value}}}}}}}"#);
        cluster.ok(&[
            "patch", "cvc", "vol-d", "-n", "openebs", "--type", "merge", "-p", &patch,
        ]);
    };
    rate(r#""1Mi""#);
    let writer = VerifyingFio::start(&cluster, &uri);
    // Drain a node holding a replica but not the target, so fio's connection stays up.
    let target = cluster.target_node("vol-d");
    let node = (cluster.replica_nodes("vol-d").into_iter())
        .find(|node| *node != target)
        .expect("a replica off the target's node");
    let to_node = free_node(&cluster, "vol-d");
    let log = cluster.data_dir().join("drain.log");
    let output = std::fs::File::create(&log).expect("the drain's log");
    let drain = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["node", "drain", &node])
        .env("TANDEM_DATA_DIR", cluster.data_dir())
        .env_remove("TANDEM_SERVER")
        .stdout(output.try_clone().expect("the drain's log"))
        .stderr(output)
        .spawn()
        .expect("start the drain");
    let mut drain = KillOnDrop(drain);
    // Once the migration is recorded, the drain command, the control plane and the new
    // replica's agent all die.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cluster
        .ok(&["get", "cvc", "vol-d", "-n", "openebs", "-o", "json"])
        .contains("tandem.io/migrate-from")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the drain did not start migrating vol-d: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = drain.0.kill();
    let _ = drain.0.wait();
    cluster.kill_9("control-plane/control-plane.pid");
    cluster.kill_9(&format!("nodes/{to_node}/agent.pid"));
    cluster.ok(&["up", "--nodes", "3"]);
    rate("null");
    // Run again, the drain finds the migration under way and follows it to the end.
    let drained = cluster.ok(&["node", "drain", &node]);
    assert!(
        drained.contains(&format!("node/{node} drained")),
        "{drained}"
    );
    assert!(drained.contains("copied"), "{drained}");
    let nodes = cluster.replica_nodes("vol-d");
    assert!(!nodes.contains(&node), "{nodes:?}");
    assert!(nodes.contains(&to_node), "{nodes:?}");
    let (spec, status) = placement(&cluster, "vol-d");
    assert_eq!(spec, status);
    assert_eq!(spec.len(), 2, "{spec:?}");
    assert!(writer.finish() > 0, "fio verified nothing");
}

/// A child process killed when dropped (a failed assertion must not leave it running).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
