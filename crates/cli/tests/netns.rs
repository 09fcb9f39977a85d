//! `tandem up --netns`: clusters whose nodes are network namespaces on a bridge. Two started at
//! once do not collide; the nodes really talk over the bridge (cutting a node's link takes its
//! pool OFFLINE); `tandem down` leaves no namespace, route or process behind, also after kill -9s
//! and with strays in the namespaces. Skipped (with a message) when not root.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn namespaces() -> Vec<String> {
    let output = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn blackhole_routes() -> String {
    let output = Command::new("ip")
        .args(["-4", "route", "show", "type", "blackhole"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.contains(") Z") && !stat.contains(") X"))
}

fn qemu_io(cluster: &Cluster, uri: &str, commands: &[&str]) -> String {
    let output = cluster
        .client("qemu-io")
        .args(qemu_io_args(uri, commands))
        .output()
        .expect("qemu-io is installed");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "qemu-io {commands:?} {uri}: {text}"
    );
    assert!(!text.contains("Pattern verification failed"), "{text}");
    text
}

#[test]
fn two_clusters_started_at_once_do_not_collide_and_down_leaves_nothing_behind() {
    if !netns_possible() {
        return;
    }
    let starting: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(|| Cluster::up_netns(3, "1G").expect("root")))
        .collect();
    let clusters: Vec<Cluster> = starting
        .into_iter()
        .map(|thread| thread.join().expect("both clusters start"))
        .collect();
    let prefixes: Vec<String> = clusters
        .iter()
        .map(|cluster| cluster.netns_prefix().unwrap().to_string())
        .collect();
    assert_ne!(prefixes[0], prefixes[1]);
    let subnets: Vec<String> = clusters
        .iter()
        .map(|cluster| {
            let address = cluster.node_address("node1");
            address.rsplit_once('.').unwrap().0.to_string()
        })
        .collect();
    assert_ne!(subnets[0], subnets[1], "two clusters share a subnet");

    // Each serves a volume on its own nodes' addresses, at the standard NBD port, reached from
    // its client namespace; the root namespace cannot reach them (the blackhole route).
    for (cluster, name) in clusters.iter().zip(["vol-a", "vol-b"]) {
        cluster.ok(&[
            "volume",
            "create",
            name,
            "--size",
            "64Mi",
            "--replicas",
            "2",
        ]);
        let uri = cluster.uri(name);
        let target = cluster.target_node(name);
        let expected = format!(
            "nbds://{}:10809/{name}?tls-certificates=",
            cluster.node_address(&target)
        );
        assert!(uri.starts_with(&expected), "{uri}");
        qemu_io(cluster, &uri, &["write -P 0x5a 0 4M", "read -P 0x5a 0 4M"]);
        let from_root = Command::new("qemu-io")
            .args(qemu_io_args(&uri, &["read 0 4k"]))
            .output()
            .expect("qemu-io");
        assert!(
            !from_root.status.success(),
            "the root namespace reached {uri}"
        );
        let route = Command::new("ip")
            .args(["route", "get", &cluster.node_address("node1")])
            .output()
            .expect("ip");
        assert!(
            !route.status.success(),
            "the root namespace has a route to a test address: {}",
            String::from_utf8_lossy(&route.stdout)
        );
    }

    // A prefix in use is refused, and so is one that is not a short name; neither creates
    // anything.
    let other = tempfile::tempdir().unwrap();
    for (prefix, expected) in [
        (prefixes[0].as_str(), "the prefix is taken"),
        ("Bad_Prefix", "a prefix is 1 to 8 characters"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["up", "--netns", prefix, "--nodes", "1", "--data-dir"])
            .arg(other.path())
            .env_remove("TANDEM_SERVER")
            .output()
            .expect("tandem");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(expected), "{stderr}");
    }

    // `down` after kill -9s and with a stray process in a namespace still removes everything.
    let first = &clusters[0];
    let prefix = &prefixes[0];
    let mut stray = Command::new("ip")
        .args(["netns", "exec", &format!("{prefix}-client"), "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .expect("sleep in the client namespace");
    first.kill_9("nodes/node2/agent.pid");
    first.kill_9("control-plane/control-plane.pid");
    let pids: Vec<String> = [
        "control-plane/control-plane.pid",
        "nodes/node1/agent.pid",
        "nodes/node2/agent.pid",
        "nodes/node3/agent.pid",
    ]
    .iter()
    .map(|file| first.pid(file))
    .collect();
    let down = first.ok(&["down"]);
    assert!(down.contains("Tandem is down"), "{down}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while stray.try_wait().expect("the stray").is_none() {
        assert!(Instant::now() < deadline, "down left the stray running");
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in &pids {
        assert!(!alive(pid), "pid {pid} still runs");
    }
    let left: Vec<String> = namespaces()
        .into_iter()
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(
        !blackhole_routes().contains(&format!("{}.0/24", subnets[0])),
        "{}",
        blackhole_routes()
    );
    // A second `down` is harmless and touches nothing of the other cluster.
    assert!(first.ok(&["down"]).contains("no Tandem cluster is running"));
    assert!(blackhole_routes().contains(&format!("{}.0/24", subnets[1])));
    let second = &clusters[1];
    qemu_io(second, &second.uri("vol-b"), &["read -P 0x5a 0 4M"]);
}

#[test]
fn a_node_cut_off_the_bridge_goes_offline_and_comes_back() {
    let Some(cluster) = Cluster::up_netns(2, "1G") else {
        return;
    };
    // The agent reaches the control plane over the bridge only: cut, its pool is OFFLINE.
    cluster.cut_link("node2");
    cluster.wait_for(
        "node2's pool to be OFFLINE",
        &["get", "cspi", "-n", "openebs"],
        |out| {
            out.lines()
                .any(|line| line.contains("node2") && line.contains("OFFLINE"))
        },
    );
    cluster.heal_link("node2");
    cluster.wait_for(
        "node2's pool to be ONLINE again",
        &["get", "cspi", "-n", "openebs"],
        |out| {
            out.lines()
                .any(|line| line.contains("node2") && line.contains("ONLINE"))
        },
    );
    // A one-way drop from node1 into node2 leaves node2 reaching the control plane.
    cluster.drop_from("node2", "node1");
    let ping = |from: &str, to: &str| {
        cluster
            .in_node(from, "ping")
            .args(["-c1", "-W1"])
            .arg(cluster.node_address(to))
            .output()
            .expect("ping is installed")
            .status
            .success()
    };
    assert!(!ping("node1", "node2"), "node2 should drop node1's packets");
    cluster.heal_drops("node2");
    assert!(ping("node1", "node2"), "node2 should answer again");
}

#[test]
fn down_after_a_failed_up_removes_what_it_had_created() {
    if !netns_possible() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A file where the control plane's socket goes: the control plane refuses to start, after
    // `up` made the route and the namespaces.
    std::fs::create_dir_all(dir.path().join("control-plane")).unwrap();
    std::fs::write(
        dir.path().join("control-plane/control-plane.sock"),
        "in the way",
    )
    .unwrap();
    let prefix = unique_prefix();
    let tandem = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(args)
            .env("TANDEM_DATA_DIR", dir.path())
            .env_remove("TANDEM_SERVER")
            .env("TANDEM_LOG", "warn")
            .output()
            .expect("tandem")
    };
    let up = tandem(&["up", "--netns", &prefix, "--nodes", "2", "--timeout", "20s"]);
    assert!(!up.status.success());
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(
        stderr.contains("the control plane exited at start"),
        "{stderr}"
    );
    let log = std::fs::read_to_string(dir.path().join("control-plane/control-plane.log")).unwrap();
    assert!(
        log.contains("a file that is not a socket is in the way"),
        "{log}"
    );
    assert!(namespaces().contains(&format!("{prefix}-node2")));

    let down = tandem(&["down"]);
    assert!(down.status.success(), "{down:?}");
    let left: Vec<String> = namespaces()
        .into_iter()
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("cluster.json")).unwrap())
            .unwrap();
    let subnet = recorded["netns"]["subnet"].as_u64().unwrap();
    assert!(
        !blackhole_routes().contains(&format!("10.77.{subnet}.0/24")),
        "{}",
        blackhole_routes()
    );
    let again = tandem(&["down"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("no Tandem cluster is running"));
}
