//! An old target that wakes up after a failover serves nothing stale: its node's agent is paused
//! (SIGSTOP) past its lease, another node takes the target over and the application overwrites
//! data there; when the old agent resumes (SIGCONT), a client still connected to the old target
//! gets an error or the new data, never the old, and the old target stops.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Sends `signal` to the process in `pid_file`; a paused process is resumed when dropped, so a
/// failing test leaves nothing stopped behind.
struct Paused {
    pid: String,
}

impl Paused {
    fn stop(cluster: &Cluster, pid_file: &str) -> Paused {
        let pid = cluster.pid(pid_file);
        signal("STOP", &pid);
        Paused { pid }
    }

    fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal("CONT", &self.pid);
    }
}

/// Runs qemu-io commands through the endpoint of the node the target runs on now, until they
/// all succeed (the volume is failing over meanwhile).
fn qemu_io_eventually(cluster: &Cluster, volume: &str, commands: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let node = cluster.target_node(volume);
        let uri = cluster
            .ok(&["volume", "uri", volume, "-n", "openebs", "--node", &node])
            .trim()
            .to_string();
        let Err(text) = try_qemu_io(&uri, commands) else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "{commands:?} on {uri} never succeeded:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_paused_target_wakes_up_fenced_and_serves_nothing_stale() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-p",
        "--size",
        "64Mi",
        "--replicas",
        "3",
    ]);
    let uri = cluster.uri("vol-p");
    if let Err(text) = try_qemu_io(&uri, &["write -P 0xaa 0 1M"]) {
        panic!("{text}");
    }
    let old_node = cluster.target_node("vol-p");

    // A client connected to the old target, which it keeps across the pause.
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let held = runtime
        .block_on(tandem_nbd::Client::connect(&uri))
        .expect("connect to the target");
    let before = runtime.block_on(held.read(0, 4096)).expect("read");
    assert!(before.iter().all(|byte| *byte == 0xaa));

    let paused = Paused::stop(&cluster, &format!("nodes/{old_node}/agent.pid"));
    cluster.wait_for(
        "another node to take the target over",
        &["get", "cv", "vol-p", "-n", "openebs", "-o", "json"],
        |out| {
            let cv: serde_json::Value = serde_json::from_str(out).unwrap_or_default();
            let node = &cv["metadata"]["annotations"]["tandem.io/target-node"];
            node.as_str().is_some_and(|node| node != old_node)
        },
    );
    qemu_io_eventually(&cluster, "vol-p", &["write -P 0xbb 0 1M"]);
    paused.resume();

    // The old target sees on waking that its read lease ran out, cannot renew it (the other
    // replicas answer the new target only), and is fenced: the held client gets an error or
    // (through whatever answers its connection) the new data, never the old.
    let answer = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(40), held.read(0, 4096)).await
    });
    match answer {
        Ok(Ok(data)) => assert!(
            data.iter().all(|byte| *byte == 0xbb),
            "the old target served stale data: {:x?}",
            &data[..16]
        ),
        Ok(Err(_)) => {}
        Err(_) => panic!("the old target never answered the held client"),
    }
    // The old node's agent stops its target; its replica rejoins the new one.
    cluster.wait_for(
        "the volume to be Healthy on the new target",
        &["get", "cv", "vol-p", "-n", "openebs"],
        |out| out.contains("Healthy"),
    );
    qemu_io_eventually(&cluster, "vol-p", &["read -P 0xbb 0 1M"]);
}
