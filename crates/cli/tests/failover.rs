//! Node loss end to end, on clusters started with `tandem up` (default lease timing: agents
//! heartbeat every 500ms, a node's lease is 2 s): kill -9 of the agent hosting a volume's target
//! moves the target to a node holding a trusted replica, which serves everything written before
//! (read back with qemu-io); the dead node's replica resyncs when it returns; a node gone for
//! good is replaced with the seed's two edits; a control-plane restart during a failover
//! finishes it; two failovers in a row work while CF replicas survive; an agent paused past its
//! lease (SIGSTOP) loses its target and does not take it back when resumed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// How long a test waits for a failover before calling it failed (the goal is 5 s; this
/// machine is shared with builds).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

fn qemu_io(uri: &str, commands: &[&str]) -> String {
    try_qemu_io(uri, commands).unwrap_or_else(|text| panic!("qemu-io {commands:?}: {text}"))
}

/// The endpoint of the node the volume's target runs on now (`tandem volume uri --node`): the
/// default endpoint may be the node these tests kill.
fn target_uri(cluster: &Cluster, volume: &str) -> String {
    let node = cluster.target_node(volume);
    cluster
        .ok(&["volume", "uri", volume, "-n", "openebs", "--node", &node])
        .trim()
        .to_string()
}

/// Asks `tandem volume uri --node` for the address of the endpoint on the node the volume's
/// target runs on now, and runs `commands` there until they succeed (the client retrying, as qemu's reconnect-delay does); returns when they did.
fn until_served(cluster: &Cluster, volume: &str, commands: &[&str], what: &str) -> Instant {
    let deadline = Instant::now() + FAILOVER_DEADLINE;
    loop {
        let node = cluster.target_node(volume);
        let output = cluster.run(&[
            "volume",
            "uri",
            volume,
            "-n",
            "openebs",
            "--node",
            &node,
            "--timeout",
            "2s",
        ]);
        let uri = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let last = if output.status.success() {
            match try_qemu_io(&uri, commands) {
                Ok(_) => return Instant::now(),
                Err(text) => format!("qemu-io on {uri}: {text}"),
            }
        } else {
            String::from_utf8_lossy(&output.stderr).into_owned()
        };
        assert!(
            Instant::now() < deadline,
            "{what}: volume {volume} was not served again: {last}\nthe control plane \
             logged:\n{}",
            cluster.control_plane_log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the volume's target is placed on a node other than `dead` and returns it.
fn wait_moved_off(cluster: &Cluster, volume: &str, dead: &str) -> String {
    let out = cluster.wait_for(
        &format!("the target of {volume} to leave {dead}"),
        &["get", "cv", volume, "-n", "openebs", "-o", "json"],
        |out| {
            serde_json::from_str::<Value>(out).is_ok_and(|cv| {
                let node = &cv["metadata"]["annotations"]["tandem.io/target-node"];
                node.as_str().is_some_and(|node| node != dead)
            })
        },
    );
    let cv: Value = serde_json::from_str(&out).expect("JSON");
    text(&cv["metadata"]["annotations"]["tandem.io/target-node"])
}

/// The volume's TargetFailover events, as `tandem describe cv` lists them.
fn failover_events(cluster: &Cluster, volume: &str) -> Vec<String> {
    cluster
        .ok(&["describe", "cv", volume, "-n", "openebs"])
        .lines()
        .filter(|line| line.contains("TargetFailover"))
        .map(str::to_string)
        .collect()
}

/// The pattern of 1 MiB chunk `index` (so a read from the wrong place cannot pass).
fn pattern(index: usize) -> String {
    format!("0x{:02x}", 0x10 + index)
}

fn writes(chunks: std::ops::Range<usize>) -> Vec<String> {
    chunks
        .map(|index| format!("write -P {} {index}M 1M", pattern(index)))
        .collect()
}

fn reads(chunks: std::ops::Range<usize>) -> Vec<String> {
    chunks
        .map(|index| format!("read -P {} {index}M 1M", pattern(index)))
        .collect()
}

fn refs(commands: &[String]) -> Vec<&str> {
    commands.iter().map(String::as_str).collect()
}

#[test]
fn killing_the_target_nodes_agent_moves_the_target_and_the_node_resyncs_when_it_returns() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-f",
        "--size",
        "64Mi",
        "--replicas",
        "3",
    ]);
    let uri = target_uri(&cluster, "vol-f");
    let mut first = writes(0..16);
    first.push("flush".to_string());
    qemu_io(&uri, &refs(&first));
    let dead = cluster.target_node("vol-f");
    let generation = cluster.target_generation("vol-f");

    let killed = Instant::now();
    cluster.kill_9(&format!("nodes/{dead}/agent.pid"));
    let served = until_served(
        &cluster,
        "vol-f",
        &refs(&reads(0..16)),
        "read after the kill",
    );
    eprintln!(
        "failover: kill -9 of the target node's agent to the first successful read: {:.2}s",
        (served - killed).as_secs_f64()
    );
    assert!(
        served - killed < FAILOVER_DEADLINE,
        "I/O resumed only after {:?}",
        served - killed
    );
    let moved_to = wait_moved_off(&cluster, "vol-f", &dead);
    assert!(cluster.target_generation("vol-f") > generation);
    let events = failover_events(&cluster, "vol-f");
    assert!(
        events.iter().any(|event| event.contains(&format!(
            "target failed over from node {dead} to node {moved_to}"
        )) && event
            .contains(&format!("the old target had generation {generation}"))),
        "{events:?}"
    );
    let done = cluster.wait_for(
        "the failover to be recorded as done",
        &["describe", "cv", "vol-f", "-n", "openebs"],
        |out| out.contains("TargetFailoverDone"),
    );
    assert!(
        done.contains(&format!(
            "node {moved_to} serves the volume with generation"
        )),
        "{done}"
    );
    assert!(
        cluster.cv("vol-f")["metadata"]["annotations"]["tandem.io/failover"].is_null(),
        "the failover annotation is gone once it is done"
    );
    // Everything reads back through the new address, and more can be written.
    let uri = target_uri(&cluster, "vol-f");
    let mut more = writes(16..24);
    more.push("flush".to_string());
    qemu_io(&uri, &refs(&more));
    qemu_io(&uri, &refs(&reads(0..24)));
    let cv = cluster.cv("vol-f");
    assert_eq!(cv["status"]["phase"], "Degraded", "{cv}");

    // The dead node returns: its replica catches up by an incremental resync, and the target
    // stays where it went (the returning agent does not start one).
    let generation_after = cluster.target_generation("vol-f");
    cluster.ok(&["up", "--nodes", "3"]);
    let pool = cluster.pool_on(&dead);
    let replica = format!("vol-f-{pool}");
    cluster.wait_for(
        "the returned replica to be Healthy after a resync",
        &["get", "cvr", &replica, "-n", "openebs", "-o", "json"],
        |out| {
            serde_json::from_str::<Value>(out).is_ok_and(|cvr| {
                cvr["status"]["phase"] == "Healthy" && cvr["status"]["lastResync"].is_object()
            })
        },
    );
    let cvr = cluster.cvr(&replica);
    assert_eq!(cvr["status"]["lastResync"]["full"], false, "{cvr}");
    cluster.wait_for(
        "the volume to be Healthy",
        &["get", "cv", "vol-f", "-n", "openebs"],
        |out| out.contains("Healthy"),
    );
    assert_eq!(cluster.target_node("vol-f"), moved_to);
    assert_eq!(cluster.target_generation("vol-f"), generation_after);
    qemu_io(&target_uri(&cluster, "vol-f"), &refs(&reads(0..24)));
}

#[test]
fn a_dead_node_is_replaced_by_adding_a_pool_then_removing_its_pool() {
    let cluster = Cluster::up(4, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-r",
        "--size",
        "64Mi",
        "--replicas",
        "3",
    ]);
    let uri = target_uri(&cluster, "vol-r");
    let mut first = writes(0..16);
    first.push("flush".to_string());
    qemu_io(&uri, &refs(&first));
    let target = cluster.target_node("vol-r");
    let nodes = cluster.replica_nodes("vol-r");
    let dead = nodes
        .iter()
        .find(|node| **node != target)
        .expect("a replica node without the target")
        .clone();
    let spare = free_node(&cluster, "vol-r");
    let dead_pool = cluster.pool_on(&dead);
    // A 2-replica volume on the same dead node: removing its dead replica would leave one,
    // fewer than its consistency factor (2).
    cluster.create_volume_on(
        "vol-two",
        "16Mi",
        &[cluster.pool_on(&target), dead_pool.clone()],
    );
    target_uri(&cluster, "vol-two");

    cluster.kill_9(&format!("nodes/{dead}/agent.pid"));
    cluster.wait_for(
        "vol-r to be Degraded",
        &["get", "cv", "vol-r", "-n", "openebs"],
        |out| out.contains("Degraded"),
    );
    cluster.wait_for(
        "the dead replicas to show Offline",
        &["get", "cvr", "-n", "openebs"],
        |out| {
            out.lines()
                .filter(|line| line.contains(&dead_pool) && line.contains("Offline"))
                .count()
                == 2
        },
    );

    // Refused: the dead replica of the 2-replica volume, with the reason.
    let target_pool = cluster.pool_on(&target);
    let refused = cluster.patch_pools("vol-two", &[&target_pool]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    // Why, once the survivor's status says Degraded (its target lost a member), or before.
    let why = [
        format!("the replica on pool {target_pool} is Degraded"),
        "only 1 would remain".to_string(),
    ];
    assert!(
        why.iter().any(|why| stderr.contains(&format!(
            "removing pool {dead_pool}, whose replica is Offline (not Healthy), is allowed only \
             when every other replica is Healthy and at least 2 (the volume's consistency \
             factor) of them remain; {why}"
        ))),
        "{stderr}"
    );

    // The seed's two edits: a pool on a live node (rebuilt from the survivors), then the dead
    // node's pool removed.
    let added = cluster.add_pool("vol-r", &spare);
    assert_eq!(cluster.cvr(&added)["status"]["phase"], "Healthy");
    let (_, pools) = pool_info(&cluster.cvc("vol-r"));
    let kept: Vec<&str> = pools
        .iter()
        .map(String::as_str)
        .filter(|pool| *pool != dead_pool)
        .collect();
    let output = cluster.patch_pools("vol-r", &kept);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let described = cluster.wait_for(
        "the dead pool to leave the volume",
        &["describe", "cvc", "vol-r", "-n", "openebs"],
        |out| out.contains("ReplicaReplaced"),
    );
    assert!(
        described.contains(&format!(
            "removed the replica on pool {dead_pool} (node {dead}), which was Offline"
        )),
        "{described}"
    );
    let (spec, status) = pool_info(&cluster.cvc("vol-r"));
    assert_eq!(spec, status);
    assert!(!status.contains(&dead_pool), "{status:?}");
    cluster.wait_for(
        "vol-r to be Healthy on its three live replicas",
        &["get", "cv", "vol-r", "-n", "openebs"],
        |out| out.contains("Healthy"),
    );
    qemu_io(&target_uri(&cluster, "vol-r"), &refs(&reads(0..16)));

    // When the dead node comes back after all, the removed replica's storage is destroyed.
    cluster.ok(&["up", "--nodes", "4"]);
    let data = cluster
        .data_dir()
        .join("nodes")
        .join(&dead)
        .join("pool/replicas/vol-r");
    cluster.wait_for(
        "the removed replica to be gone",
        &["get", "cvr", "-n", "openebs"],
        |out| !out.contains(&format!("vol-r-{dead_pool}")),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while data.exists() {
        assert!(Instant::now() < deadline, "{} stays", data.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_control_plane_restarted_during_a_failover_finishes_it() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-c",
        "--size",
        "64Mi",
        "--replicas",
        "3",
    ]);
    let uri = target_uri(&cluster, "vol-c");
    let mut first = writes(0..8);
    first.push("flush".to_string());
    qemu_io(&uri, &refs(&first));
    let dead = cluster.target_node("vol-c");

    // The target's node dies, and the control plane with it before the lease runs out: the
    // restarted control plane has never heard of the dead node, and after its start-up grace
    // fails the target over all the same.
    cluster.kill_9(&format!("nodes/{dead}/agent.pid"));
    cluster.kill_9("control-plane/control-plane.pid");
    cluster.restart_control_plane();
    until_served(
        &cluster,
        "vol-c",
        &refs(&reads(0..8)),
        "read after the restart",
    );
    let moved_to = wait_moved_off(&cluster, "vol-c", &dead);
    let events = failover_events(&cluster, "vol-c");
    assert!(
        events
            .iter()
            .any(|event| event.contains(&format!("from node {dead} to node {moved_to}"))),
        "{events:?}"
    );
    let mut more = writes(8..12);
    more.push("flush".to_string());
    qemu_io(&target_uri(&cluster, "vol-c"), &refs(&more));
    qemu_io(&target_uri(&cluster, "vol-c"), &refs(&reads(0..12)));
}

#[test]
fn two_failovers_in_a_row_work_while_cf_replicas_survive() {
    // Five replicas (CF 3): two nodes may die.
    let cluster = Cluster::up(5, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-d",
        "--size",
        "32Mi",
        "--replicas",
        "5",
    ]);
    let uri = target_uri(&cluster, "vol-d");
    let mut first = writes(0..8);
    first.push("flush".to_string());
    qemu_io(&uri, &refs(&first));

    let first_dead = cluster.target_node("vol-d");
    cluster.kill_9(&format!("nodes/{first_dead}/agent.pid"));
    until_served(
        &cluster,
        "vol-d",
        &refs(&reads(0..8)),
        "read after the first kill",
    );
    let second_dead = wait_moved_off(&cluster, "vol-d", &first_dead);
    let mut more = writes(8..12);
    more.push("flush".to_string());
    qemu_io(&target_uri(&cluster, "vol-d"), &refs(&more));

    // The new target's node dies too.
    cluster.kill_9(&format!("nodes/{second_dead}/agent.pid"));
    until_served(
        &cluster,
        "vol-d",
        &refs(&reads(0..12)),
        "read after the second kill",
    );
    let third = wait_moved_off(&cluster, "vol-d", &second_dead);
    assert_ne!(third, first_dead);
    let mut last = writes(12..16);
    last.push("flush".to_string());
    qemu_io(&target_uri(&cluster, "vol-d"), &refs(&last));
    qemu_io(&target_uri(&cluster, "vol-d"), &refs(&reads(0..16)));
    let events = failover_events(&cluster, "vol-d");
    for (from, to) in [(&first_dead, &second_dead), (&second_dead, &third)] {
        assert!(
            events
                .iter()
                .any(|event| event.contains(&format!("from node {from} to node {to}"))),
            "{events:?}"
        );
    }
    let cv = cluster.cv("vol-d");
    assert_eq!(cv["status"]["phase"], "Degraded", "{cv}");
}

/// Sends `signal` (STOP, CONT) to node `node`'s agent.
fn signal_agent(cluster: &Cluster, node: &str, signal: &str) {
    common::signal(signal, &cluster.pid(&format!("nodes/{node}/agent.pid")));
}

#[test]
fn an_agent_paused_past_its_lease_loses_its_target_and_does_not_take_it_back_when_resumed() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-s",
        "--size",
        "64Mi",
        "--replicas",
        "3",
    ]);
    let uri = target_uri(&cluster, "vol-s");
    let mut first = writes(0..8);
    first.push("flush".to_string());
    qemu_io(&uri, &refs(&first));
    let paused = cluster.target_node("vol-s");

    signal_agent(&cluster, &paused, "STOP");
    let moved_to = wait_moved_off(&cluster, "vol-s", &paused);
    until_served(&cluster, "vol-s", &refs(&reads(0..8)), "read while paused");
    let generation = cluster.target_generation("vol-s");
    signal_agent(&cluster, &paused, "CONT");

    // Resumed, the paused node's agent finds the target elsewhere and stops its own; its
    // replica returns Healthy, the target stays where it went, at the same generation.
    let pool = cluster.pool_on(&paused);
    cluster.wait_for(
        "the resumed node's replica to be Healthy",
        &["get", "cvr", &format!("vol-s-{pool}"), "-n", "openebs"],
        |out| out.contains("Healthy"),
    );
    cluster.wait_for(
        "the volume to be Healthy",
        &["get", "cv", "vol-s", "-n", "openebs"],
        |out| out.contains("Healthy"),
    );
    assert_eq!(cluster.target_node("vol-s"), moved_to);
    assert_eq!(cluster.target_generation("vol-s"), generation);
    let mut more = writes(8..12);
    more.push("flush".to_string());
    qemu_io(&target_uri(&cluster, "vol-s"), &refs(&more));
    qemu_io(&target_uri(&cluster, "vol-s"), &refs(&reads(0..12)));
}
