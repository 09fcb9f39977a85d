//! `tandem volume migrate`: one command moves a replica from one pool to another while fio
//! writes and verifies, with the control plane and the new replica's agent killed -9 in the
//! middle; it ends with exactly the placement asked for, and an impossible migration is refused
//! before anything changes.

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
    assert!(
        done.contains("already migrating") || done.contains("none on pool"),
        "{done}"
    );
    assert!(
        done.contains(&format!("moved from pool {from} to pool {to}")),
        "{done}"
    );
    let mut wanted = vec![kept.clone(), to.clone()];
    wanted.sort();
    assert_eq!(placement(&cluster, "vol-m"), (wanted.clone(), wanted));
    let replicas = cluster.ok(&["get", "cvr", "-n", "openebs"]);
    assert!(!replicas.contains(&format!("vol-m-{from}")), "{replicas}");
    let cvc = cluster.cvc("vol-m");
    assert!(
        cvc["metadata"]["annotations"]["tandem.io/migrate-from"].is_null(),
        "{cvc}"
    );
    assert!(writer.finish() >= 1);
    // The application's data is all there: the last verifying run read back every block.
    let events = cluster.ok(&["describe", "cvc", "vol-m", "-n", "openebs"]);
    assert!(events.contains("MigratingVolumeReplicas"), "{events}");
}
