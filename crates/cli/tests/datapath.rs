//! The data path end to end: volumes of a cluster started with `tandem up` (separate agent and
//! control-plane processes, real pool directories, loopback TCP) served over NBD to real
//! clients — qemu-io, qemu-img, nbdinfo, nbdcopy, fio — while replicas move, and while agents
//! are killed with kill -9. The tests that matter across hosts run twice: `X` on loopback and
//! `X_on_netns` on a cluster whose nodes are network namespaces (`tandem up --netns`), the
//! clients in its client namespace.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn tool(cluster: &Cluster, name: &str, args: &[&str]) -> String {
    let output = cluster
        .client(name)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{name} is not installed ({error}); .ci/run installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{name} {args:?} failed:\n{text}");
    text
}

/// qemu-io commands against the volume; a failed pattern check fails the test (qemu-io's exit
/// status does not say so).
fn qemu_io(cluster: &Cluster, uri: &str, commands: &[&str]) -> String {
    let args = qemu_io_args(uri, commands);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = tool(cluster, "qemu-io", &args);
    assert!(!text.contains("Pattern verification failed"), "{text}");
    assert!(!text.to_lowercase().contains("error"), "{text}");
    text
}

#[test]
fn real_clients_read_back_everything_across_a_replica_move() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-q",
        "--size",
        "128Mi",
        "--replicas",
        "2",
    ]);
    let uri = cluster.uri("vol-q");
    assert!(
        uri.starts_with("nbds://127.0.0.1:")
            && uri.contains("/vol-q?tls-certificates=")
            && uri.ends_with("/pki/users/admin.nbd"),
        "{uri}"
    );

    let info: Value = serde_json::from_str(&tool(&cluster, "nbdinfo", &["--json", &uri])).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 128 << 20);
    for flag in [
        "can_flush",
        "can_fua",
        "can_multi_conn",
        "can_trim",
        "can_zero",
    ] {
        assert_eq!(export[flag], true, "{flag}: {info}");
    }

    qemu_io(
        &cluster,
        &uri,
        &["write -P 0x11 0 4M", "write -P 0x22 64M 8M", "flush"],
    );
    // nbdcopy a file in at 32M.. and compare it byte for byte after the move.
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.img");
    let pattern: Vec<u8> = (0..(16u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&source, &pattern).unwrap();
    let write_file = format!("write -s {} 32M 16M", source.display());
    qemu_io(&cluster, &uri, &[write_file.as_str(), "flush"]);

    let old = cluster.replica_nodes("vol-q");
    let free = free_node(&cluster, "vol-q");
    cluster.add_pool("vol-q", &free);
    cluster.remove_pool("vol-q", &old[0]);

    qemu_io(
        &cluster,
        &uri,
        &[
            "read -P 0x11 0 4M",
            "read -P 0x22 64M 8M",
            "read -P 0 4M 28M",
        ],
    );

    // Block status (`base:allocation`): what was written is data, the rest holes, also on the
    // replica rebuilt during the move (it is copied only the regions ever written).
    let map: Value =
        serde_json::from_str(&tool(&cluster, "nbdinfo", &["--map", "--json", &uri])).unwrap();
    let extents: Vec<(u64, u64, u64)> = map
        .as_array()
        .unwrap_or_else(|| panic!("nbdinfo --map: {map}"))
        .iter()
        .map(|e| {
            let field = |name: &str| e[name].as_u64().unwrap_or_else(|| panic!("{e}"));
            (field("offset"), field("length"), field("type"))
        })
        .collect();
    let mib = 1u64 << 20;
    let data = 0; // NBD_STATE_HOLE | NBD_STATE_ZERO = 3 for a hole
    assert_eq!(
        extents,
        vec![
            (0, 4 * mib, data),
            (4 * mib, 28 * mib, 3),
            (32 * mib, 16 * mib, data),
            (48 * mib, 16 * mib, 3),
            (64 * mib, 8 * mib, data),
            (72 * mib, 56 * mib, 3),
        ],
        "nbdinfo --map: {map}"
    );

    // A sparse-aware client copies only the data.
    let copy = dir.path().join("copy.img");
    tool(&cluster, "nbdcopy", &[&uri, copy.to_str().unwrap()]);
    let copied = std::fs::read(&copy).unwrap();
    assert_eq!(copied.len(), 128 << 20);
    assert!(
        copied[32 << 20..48 << 20] == pattern[..],
        "the copied window differs"
    );
    assert!(copied[..4 << 20].iter().all(|&b| b == 0x11));
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&copy).unwrap().blocks() * 512;
    assert!(
        allocated <= 30 * mib,
        "nbdcopy wrote {allocated} bytes of a volume holding 28 MiB of data"
    );

    // The CV's per-replica status carries the target's view of each replica's I/O.
    let cv = cluster.json(&["get", "cv", "vol-q", "-n", "openebs"]);
    let statuses = cv["status"]["replicaStatuses"]
        .as_array()
        .unwrap_or_else(|| panic!("{cv}"));
    assert_eq!(statuses.len(), 2, "{cv}");
    for status in statuses {
        assert_eq!(status["mode"], "Healthy", "{status}");
        for counter in [
            "checkpointedIOSeq",
            "inflightRead",
            "inflightWrite",
            "inflightSync",
        ] {
            let value = status[counter].as_str().unwrap_or_default();
            assert!(value.parse::<u64>().is_ok(), "{counter}: {status}");
        }
    }
    assert!(
        statuses
            .iter()
            .any(|s| s["checkpointedIOSeq"].as_str().unwrap_or("0") != "0"),
        "no replica reports a checkpoint: {cv}"
    );
}

#[test]
fn fio_verifies_with_no_errors_during_a_full_migration() {
    fio_verifies_with_no_errors_during_a_full_migration_on(Net::Loopback);
}

#[test]
fn fio_verifies_with_no_errors_during_a_full_migration_on_netns() {
    fio_verifies_with_no_errors_during_a_full_migration_on(Net::Netns);
}

fn fio_verifies_with_no_errors_during_a_full_migration_on(net: Net) {
    let Some(cluster) = Cluster::on(net, 3, "1G") else {
        return;
    };
    cluster.ok(&[
        "volume",
        "create",
        "vol-f",
        "--size",
        "256Mi",
        "--replicas",
        "2",
    ]);
    let uri = cluster.uri("vol-f");
    let writer = VerifyingFio::start(&cluster, &uri);
    let old = cluster.replica_nodes("vol-f");
    let free = free_node(&cluster, "vol-f");
    cluster.add_pool("vol-f", &free);
    cluster.remove_pool("vol-f", &old[0]);
    assert!(writer.finish() >= 1);
}

#[test]
fn a_killed_replica_agent_resyncs_only_what_it_missed() {
    a_killed_replica_agent_resyncs_only_what_it_missed_on(Net::Loopback);
}

#[test]
fn a_killed_replica_agent_resyncs_only_what_it_missed_on_netns() {
    a_killed_replica_agent_resyncs_only_what_it_missed_on(Net::Netns);
}

fn a_killed_replica_agent_resyncs_only_what_it_missed_on(net: Net) {
    let Some(cluster) = Cluster::on(net, 3, "1G") else {
        return;
    };
    cluster.ok(&[
        "volume",
        "create",
        "vol-k",
        "--size",
        "256Mi",
        "--replicas",
        "3",
    ]);
    let uri = cluster.uri("vol-k");
    qemu_io(&cluster, &uri, &["write -P 0x33 0 64M", "flush"]);
    let target = cluster.target_node("vol-k");
    let victim = cluster
        .replica_nodes("vol-k")
        .into_iter()
        .find(|node| *node != target)
        .unwrap();
    let replica = format!("vol-k-{}", cluster.pool_on(&victim));
    cluster.kill_9(&format!("nodes/{victim}/agent.pid"));
    // I/O goes on with two of three replicas.
    qemu_io(
        &cluster,
        &uri,
        &["write -P 0x44 128M 2M", "flush", "read -P 0x33 0 64M"],
    );
    cluster.wait_for(
        "the replica to be seen Offline",
        &["get", "cvr", &replica, "-n", "openebs"],
        |out| !out.contains("Healthy"),
    );
    cluster.ok(&["up", "--nodes", "3"]);
    cluster.wait_for(
        "the replica to be Healthy again",
        &["get", "cvr", &replica, "-n", "openebs"],
        |out| out.contains("Healthy"),
    );
    let last = &cluster.cvr(&replica)["status"]["lastResync"];
    assert_eq!(last["full"], false, "{last}");
    let bytes = last["bytes"].as_u64().unwrap();
    // 2 MiB were written meanwhile (1 MiB regions); the 64 MiB before were not copied again.
    assert!((2 << 20..=4 << 20).contains(&bytes), "copied {bytes} bytes");
    qemu_io(
        &cluster,
        &uri,
        &["read -P 0x33 0 64M", "read -P 0x44 128M 2M"],
    );
}

#[test]
fn a_killed_target_agent_comes_back_and_every_acknowledged_write_reads_back() {
    a_killed_target_agent_comes_back_and_every_acknowledged_write_reads_back_on(Net::Loopback);
}

#[test]
fn a_killed_target_agent_comes_back_and_every_acknowledged_write_reads_back_on_netns() {
    a_killed_target_agent_comes_back_and_every_acknowledged_write_reads_back_on(Net::Netns);
}

fn a_killed_target_agent_comes_back_and_every_acknowledged_write_reads_back_on(net: Net) {
    let Some(cluster) = Cluster::on(net, 3, "1G") else {
        return;
    };
    cluster.ok(&[
        "volume",
        "create",
        "vol-t",
        "--size",
        "128Mi",
        "--replicas",
        "2",
    ]);
    let uri = cluster.uri("vol-t");
    qemu_io(
        &cluster,
        &uri,
        &["write -P 0x55 0 16M", "write -P 0x66 16M 1M"],
    );
    let target = cluster.target_node("vol-t");
    cluster.kill_9(&format!("nodes/{target}/agent.pid"));
    cluster.ok(&["up", "--nodes", "3"]);
    // The same address serves again once the new target has recovered; a client reconnects
    // (retries) until then, as qemu's NBD driver does with reconnect-delay.
    assert_eq!(cluster.uri("vol-t"), uri);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = cluster
            .client("qemu-io")
            .args(qemu_io_args(
                &uri,
                &["read -P 0x55 0 16M", "read -P 0x66 16M 1M"],
            ))
            .output()
            .expect("qemu-io is installed");
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        if output.status.success() && !text.contains("can't open") {
            assert!(!text.contains("Pattern verification failed"), "{text}");
            assert!(text.contains("read 1048576/1048576 bytes"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the volume did not come back: {text}\nthe agent on {target} logged:\n{}",
            cluster.agent_log_tail(&target)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A small tmpfs mounted on a directory, unmounted when dropped (after the cluster is down).
struct SmallFs {
    path: std::path::PathBuf,
}

impl SmallFs {
    /// `None` when this machine does not let the test mount (not root): then the test says so.
    fn mount(path: &std::path::Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?;
        status.success().then(|| SmallFs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn a_full_pool_drops_its_replica_and_the_volume_keeps_everything() {
    a_full_pool_drops_its_replica_and_the_volume_keeps_everything_on(Net::Loopback);
}

#[test]
fn a_full_pool_drops_its_replica_and_the_volume_keeps_everything_on_netns() {
    a_full_pool_drops_its_replica_and_the_volume_keeps_everything_on(Net::Netns);
}

fn a_full_pool_drops_its_replica_and_the_volume_keeps_everything_on(net: Net) {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("nodes/node3/pool");
    let Some(small) = SmallFs::mount(&pool, "40m") else {
        eprintln!("skipped: mounting a 40 MiB tmpfs needs root (CAP_SYS_ADMIN)");
        return;
    };
    let Some(cluster) = Cluster::on_in(net, dir, 3, "1G") else {
        return;
    };
    cluster.ok(&[
        "volume",
        "create",
        "vol-full",
        "--size",
        "256Mi",
        "--replicas",
        "3",
    ]);
    let uri = cluster.uri("vol-full");
    let full_replica = format!("vol-full-{}", cluster.pool_on("node3"));
    // 96 MiB do not fit node3's 40 MiB: its writes fail with ENOSPC, the target ejects it, and
    // the two others (the consistency factor of three) acknowledge everything.
    qemu_io(&cluster, &uri, &["write -P 0x77 0 96M", "flush"]);
    cluster.wait_for(
        "the full pool's replica to leave",
        &["get", "cvr", &full_replica, "-n", "openebs"],
        |out| {
            out.lines()
                .nth(1)
                .is_some_and(|line| !line.contains(" Healthy "))
        },
    );
    cluster.wait_for(
        "the volume to say it is Degraded",
        &["get", "cv", "vol-full", "-n", "openebs"],
        |out| out.contains("Degraded"),
    );
    qemu_io(
        &cluster,
        &uri,
        &[
            "read -P 0x77 0 96M",
            "write -P 0x78 200M 1M",
            "read -P 0x78 200M 1M",
        ],
    );
    drop(cluster);
    drop(small);
}

/// A pool past its size (`--pool-size`, not a full file system): its replicas refuse writes, the
/// volume goes on with the other two, and once space is freed the replica comes back, is
/// resynced, and holds everything.
#[test]
fn a_pool_past_its_size_refuses_writes_until_space_is_freed() {
    let cluster = Cluster::up(3, "64M");
    // Promising six times the pools' size takes an operator's consent.
    cluster.allow_over_provisioning("1000");
    cluster.ok(&[
        "volume",
        "create",
        "vol-a",
        "--size",
        "256Mi",
        "--replicas",
        "3",
    ]);
    cluster.ok(&[
        "volume",
        "create",
        "filler",
        "--size",
        "128Mi",
        "--replicas",
        "1",
    ]);
    let crowded = cluster.replica_nodes("filler")[0].clone();
    let replica = format!("vol-a-{}", cluster.pool_on(&crowded));
    qemu_io(
        &cluster,
        &cluster.uri("filler"),
        &["write -P 0x11 0 40M", "flush"],
    );
    let uri = cluster.uri("vol-a");
    qemu_io(&cluster, &uri, &["write -P 0x22 0 32M", "flush"]);
    // The agent measures its pool every few seconds; once it sees 72 MiB used of 64 MiB, the
    // next writes to the replica there fail and the target ejects it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        qemu_io(&cluster, &uri, &["write -P 0x33 64M 1M", "flush"]);
        let cvr = cluster.ok(&["get", "cvr", &replica, "-n", "openebs"]);
        if cvr
            .lines()
            .nth(1)
            .is_some_and(|line| !line.contains(" Healthy "))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the full pool's replica stayed: {cvr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.wait_for(
        "the volume to say it is Degraded",
        &["get", "cv", "vol-a", "-n", "openebs"],
        |out| out.contains("Degraded"),
    );
    qemu_io(
        &cluster,
        &uri,
        &["write -P 0x44 100M 4M", "read -P 0x22 0 32M"],
    );

    cluster.ok(&["volume", "delete", "filler"]);
    cluster.wait_for(
        "the replica to come back once its pool has space",
        &["get", "cvr", &replica, "-n", "openebs"],
        |out| {
            out.lines()
                .nth(1)
                .is_some_and(|line| line.contains(" Healthy "))
        },
    );
    cluster.wait_for(
        "the volume to be Healthy",
        &["get", "cv", "vol-a", "-n", "openebs"],
        |out| out.contains("Healthy"),
    );
    qemu_io(
        &cluster,
        &uri,
        &[
            "read -P 0x22 0 32M",
            "read -P 0x33 64M 1M",
            "read -P 0x44 100M 4M",
        ],
    );
}

/// A volume `vol-a` (two replicas, 16 MiB of 0x22 written) whose two pools a `filler` volume
/// has filled past their 64 MiB, on a cluster of `nodes` nodes; checks that a client's writes
/// fail with ENOSPC (qemu-io: "No space left on device"), reads go on, and no replica leaves.
fn volume_on_full_pools(nodes: usize) -> (Cluster, String) {
    let cluster = Cluster::up(nodes, "64M");
    cluster.allow_over_provisioning("1000");
    cluster.ok(&[
        "volume",
        "create",
        "vol-a",
        "--size",
        "256Mi",
        "--replicas",
        "2",
    ]);
    // The filler goes where vol-a is: the other nodes are cordoned meanwhile.
    let full_nodes = cluster.replica_nodes("vol-a");
    let others: Vec<String> = (1..=nodes)
        .map(|n| format!("node{n}"))
        .filter(|node| !full_nodes.contains(node))
        .collect();
    for node in &others {
        cluster.ok(&["node", "cordon", node]);
    }
    cluster.ok(&[
        "volume",
        "create",
        "filler",
        "--size",
        "128Mi",
        "--replicas",
        "2",
    ]);
    for node in &others {
        cluster.ok(&["node", "uncordon", node]);
    }
    let uri = cluster.uri("vol-a");
    qemu_io(&cluster, &uri, &["write -P 0x22 0 16M", "flush"]);
    // 16 MiB of vol-a and 56 MiB of the filler on each of vol-a's pools: past their 64 MiB.
    qemu_io(
        &cluster,
        &cluster.uri("filler"),
        &["write -P 0x11 0 56M", "flush"],
    );
    let full_pools: Vec<String> = full_nodes
        .iter()
        .map(|node| cluster.pool_on(node))
        .collect();
    cluster.wait_for(
        "vol-a's pools to report no free space",
        &["get", "cspi", "-n", "openebs", "-o", "json"],
        |out| {
            let list: Value = serde_json::from_str(out).unwrap_or_default();
            list["items"].as_array().is_some_and(|pools| {
                pools
                    .iter()
                    .filter(|pool| {
                        full_pools
                            .iter()
                            .any(|name| pool["metadata"]["name"] == **name)
                    })
                    .filter(|pool| pool["status"]["capacity"]["free"] == "0")
                    .count()
                    == 2
            })
        },
    );

    let refused = qemu_io_write(&cluster, &uri, "0x33");
    assert!(
        refused.contains("No space left on device"),
        "a write to a volume whose pools are full: {refused}"
    );
    qemu_io(&cluster, &uri, &["read -P 0x22 0 16M", "read -P 0 32M 1M"]);
    let cv = cluster.ok(&["get", "cv", "vol-a", "-n", "openebs"]);
    assert!(cv.contains("Healthy"), "{cv}");
    cluster.wait_for(
        "the volume to say its writes fail for lack of space",
        &["describe", "cv", "vol-a", "-n", "openebs"],
        |out| out.contains("Warning  VolumeOutOfSpace") && out.contains("writes fail with ENOSPC"),
    );
    let cvrs = cluster.ok(&["get", "cvr", "-n", "openebs"]);
    for line in cvrs.lines().filter(|line| line.starts_with("vol-a-")) {
        assert!(line.contains(" Healthy "), "no replica leaves: {cvrs}");
    }
    (cluster, uri)
}

/// qemu-io writes 1 MiB of `pattern` at 32 MiB and flushes; what it printed.
fn qemu_io_write(cluster: &Cluster, uri: &str, pattern: &str) -> String {
    let command = format!("write -P {pattern} 32M 1M");
    let args = qemu_io_args(uri, &[command.as_str(), "flush"]);
    let output = cluster
        .client("qemu-io")
        .args(&args)
        .output()
        .expect("qemu-io runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Writes until one succeeds (the target probes for space once a second), then reads back
/// everything written before and that write.
fn writes_succeed_again(cluster: &Cluster, uri: &str, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = qemu_io_write(cluster, uri, "0x44");
        if !answer.to_lowercase().contains("error") && !answer.contains("No space") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes still fail once {why}: {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    qemu_io(cluster, uri, &["read -P 0x22 0 16M", "read -P 0x44 32M 1M"]);
    cluster.wait_for(
        "the volume to be Healthy",
        &["get", "cv", "vol-a", "-n", "openebs"],
        |out| out.contains("Healthy"),
    );
    cluster.wait_for(
        "the volume to say its writes succeed again",
        &["describe", "cv", "vol-a", "-n", "openebs"],
        |out| out.contains("writes succeed again"),
    );
}

/// Every pool of a volume full: writes fail with ENOSPC, reads go on, no replica leaves; once
/// space is freed, writes succeed again, with everything acknowledged before still there.
#[test]
fn writes_fail_with_enospc_while_every_pool_is_full_and_succeed_once_space_is_freed() {
    let (cluster, uri) = volume_on_full_pools(2);
    cluster.ok(&["volume", "delete", "filler"]);
    writes_succeed_again(&cluster, &uri, "space was freed");
}

/// The same, and the volume moves off its full pools (both replicas migrated, one after the
/// other, to pools with room): writes succeed again.
#[test]
fn writes_fail_with_enospc_while_every_pool_is_full_and_succeed_once_the_volume_moved() {
    let (cluster, uri) = volume_on_full_pools(4);
    let full_nodes = cluster.replica_nodes("vol-a");
    let free_nodes: Vec<String> = (1..=4)
        .map(|n| format!("node{n}"))
        .filter(|node| !full_nodes.contains(node))
        .collect();
    for (from, to) in full_nodes.iter().zip(&free_nodes) {
        cluster.ok(&[
            "volume",
            "migrate",
            "vol-a",
            "--from",
            &cluster.pool_on(from),
            "--to",
            &cluster.pool_on(to),
            "--timeout",
            "2m",
        ]);
    }
    writes_succeed_again(&cluster, &uri, "the volume moved");
}
