//! Several control planes on etcd (`tandem up --ha`): the leader killed with -9 during a scale-up
//! is replaced within its lease and the scale-up completes exactly once; a leader paused past its
//! lease acts on nothing when it wakes; etcd losing one member changes nothing, losing quorum
//! refuses writes clearly while volumes keep serving I/O; with every control plane down the
//! data path serves and a pending scale-up completes once one is back; watches on any control
//! plane see every write; the leader compacts etcd; `tandem store copy` into redb and etcd.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tandem_pki::rustls::pki_types::ServerName;
use tandem_pki::rustls::{ClientConnection, StreamOwned};

/// `etcd` is installed (CI installs Debian's etcd-server); else the tests say why they skip.
fn etcd_installed() -> bool {
    let found = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        println!("SKIPPED: etcd is not installed (Debian: etcd-server)");
    }
    found
}

/// The control planes as `tandem status` lists them: (address, pid, role).
fn control_planes(cluster: &Cluster) -> Vec<(String, String, String)> {
    let output = cluster.run(&["status"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines()
        .skip(1)
        .take_while(|line| line.starts_with("https://"))
        .map(|line| {
            let mut words = line.split_whitespace();
            let address = words.next().unwrap_or_default().to_string();
            let pid = words.next().unwrap_or_default().to_string();
            let role = words.collect::<Vec<_>>().join(" ");
            (address, pid, role)
        })
        .collect()
}

/// Waits (bounded) until a control plane other than `not` leads; returns its (address, pid).
fn wait_for_leader(cluster: &Cluster, not: Option<&str>, within: Duration) -> (String, String) {
    let deadline = Instant::now() + within;
    loop {
        let planes = control_planes(cluster);
        let leaders: Vec<_> = planes
            .iter()
            .filter(|(_, _, role)| role == "leader")
            .collect();
        assert!(leaders.len() <= 1, "two leaders: {planes:?}");
        if let Some((address, pid, _)) = leaders.first() {
            if Some(pid.as_str()) != not {
                return (address.clone(), pid.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new leader within {within:?}: {planes:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sets a label on the volume's CVC: a small write through the API and the store.
fn label(cluster: &Cluster, volume: &str, key: &str, value: &str) -> std::process::Output {
    let patch = format!(r#"{{"metadata":{{"labels":{{"{key}":"{value}"}}}}}}"#);
    cluster.run(&[
        "patch", "cvc", volume, "-n", "openebs", "--type", "merge", "-p", &patch,
    ])
}

fn kill(signal: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// How often the scale-up to `count` replicas is recorded in the volume's events.
fn scaled_events(cluster: &Cluster, volume: &str, count: usize) -> usize {
    let described = cluster.ok(&["describe", "cvc", volume, "-n", "openebs"]);
    let needle = format!("successfully scaled volume replicas to {count}");
    described
        .lines()
        .filter(|line| line.contains(&needle))
        .map(|line| {
            // describe folds repeats into one line with a count ("x2") in the Age column.
            if line.contains(" (x") {
                2
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn a_killed_leader_is_replaced_and_the_scale_up_it_was_doing_completes_once() {
    if !etcd_installed() {
        return;
    }
    let cluster = Cluster::up_ha(4, "1G");
    let pools = cluster.pools();
    let first_three: Vec<String> = pools.iter().take(3).map(|(pool, _)| pool.clone()).collect();
    cluster.create_volume_on("pvc-ha", "64Mi", &first_three);
    let uri = cluster.uri("pvc-ha");
    try_qemu_io(&uri, &["write -P 0x5a 0 4M", "flush"]).expect("the volume serves");

    let (_, leader_pid) = wait_for_leader(&cluster, None, Duration::from_secs(10));
    let mut all: Vec<String> = first_three.clone();
    all.push(pools[3].0.clone());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let output = cluster.patch_pools("pvc-ha", &refs);
    assert!(output.status.success(), "{output:?}");
    kill("-9", &leader_pid);
    let killed = Instant::now();
    let (_, next) = wait_for_leader(&cluster, Some(&leader_pid), Duration::from_secs(10));
    let handover = killed.elapsed();
    println!("leader handover after kill -9: {handover:?} (new leader pid {next})");
    assert!(handover <= Duration::from_secs(5), "{handover:?}");

    cluster.wait_for(
        "the scale-up to complete under the new leader",
        &["describe", "cvc", "pvc-ha", "-n", "openebs"],
        |out| out.contains("successfully scaled volume replicas to 4"),
    );
    assert_eq!(scaled_events(&cluster, "pvc-ha", 4), 1, "recorded once");
    let replicas = cluster.ok(&["get", "cvr", "-n", "openebs"]);
    assert_eq!(
        replicas.lines().filter(|l| l.contains("pvc-ha-")).count(),
        4,
        "nothing done twice:\n{replicas}"
    );
    try_qemu_io(&uri, &["read -P 0x5a 0 4M"]).expect("the data is all there");

    // `up --ha` brings the killed control plane back; it registers, as a standby.
    cluster.ok(&["up", "--ha", "--nodes", "4"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let planes = control_planes(&cluster);
        let settled = planes.len() == 3
            && planes
                .iter()
                .all(|(_, _, role)| role == "leader" || role == "standby");
        if settled {
            break;
        }
        assert!(Instant::now() < deadline, "{planes:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_leader_paused_past_its_lease_does_nothing_when_it_wakes() {
    if !etcd_installed() {
        return;
    }
    let cluster = Cluster::up_ha(4, "1G");
    let pools = cluster.pools();
    let first_two: Vec<String> = pools.iter().take(2).map(|(pool, _)| pool.clone()).collect();
    cluster.create_volume_on("pvc-pause", "32Mi", &first_two);
    let (_, paused) = wait_for_leader(&cluster, None, Duration::from_secs(10));
    kill("-STOP", &paused);
    // While it sleeps, another leads and scales the volume up.
    let (_, next) = wait_for_leader(&cluster, Some(&paused), Duration::from_secs(10));
    cluster.add_pool("pvc-pause", &pools[2].1);
    kill("-CONT", &paused);
    // It wakes believing it leads; its mandate ran out by its own clock, and its writes carry
    // an old term: it must step down without acting.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let planes = control_planes(&cluster);
        let role = |pid: &str| {
            planes
                .iter()
                .find(|(_, p, _)| p == pid)
                .map(|(_, _, role)| role.clone())
        };
        if role(&paused).as_deref() == Some("standby") && role(&next).as_deref() == Some("leader") {
            break;
        }
        assert!(Instant::now() < deadline, "{planes:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(scaled_events(&cluster, "pvc-pause", 3), 1);
    let replicas = cluster.ok(&["get", "cvr", "-n", "openebs"]);
    assert_eq!(
        replicas
            .lines()
            .filter(|l| l.contains("pvc-pause-"))
            .count(),
        3,
        "{replicas}"
    );
}

#[test]
fn without_etcd_quorum_writes_are_refused_and_volumes_keep_serving() {
    if !etcd_installed() {
        return;
    }
    let cluster = Cluster::up_ha(3, "1G");
    let pools = cluster.pools();
    let first_two: Vec<String> = pools.iter().take(2).map(|(pool, _)| pool.clone()).collect();
    cluster.create_volume_on("pvc-q", "32Mi", &first_two);
    let uri = cluster.uri("pvc-q");

    // One member down: nothing changes.
    cluster.kill_9("etcd/etcd3/etcd.pid");
    let output = label(&cluster, "pvc-q", "one", "down");
    assert!(output.status.success(), "{output:?}");
    try_qemu_io(&uri, &["write -P 0x11 0 1M"]).expect("I/O with one etcd member down");

    // Two down: no quorum. Writes are refused saying why; the data path does not notice.
    cluster.kill_9("etcd/etcd2/etcd.pid");
    let refused = label(&cluster, "pvc-q", "two", "down");
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("etcd"),
        "the refusal names the store: {error}"
    );
    // Reads are linearizable, as Kubernetes' are by default: without quorum they are refused
    // too, rather than answered from a member that may be behind.
    let started = Instant::now();
    let read = cluster.run(&["get", "cvc", "pvc-q", "-n", "openebs"]);
    let error = String::from_utf8_lossy(&read.stderr);
    assert!(!read.status.success(), "{read:?}");
    assert!(
        error.contains("etcd"),
        "the refusal names the store: {error}"
    );
    println!(
        "a read without quorum was refused after {:?}: {error}",
        started.elapsed()
    );
    try_qemu_io(&uri, &["write -P 0x22 1M 1M", "flush", "read -P 0x11 0 1M"])
        .expect("I/O without etcd quorum");

    // Quorum back: everything continues, nothing lost.
    cluster.ok(&["up", "--ha", "--nodes", "3"]);
    let output = label(&cluster, "pvc-q", "two", "back");
    assert!(output.status.success(), "{output:?}");
    let labels = &cluster.cvc("pvc-q")["metadata"]["labels"];
    assert_eq!(labels["one"], "down");
    assert_eq!(labels["two"], "back");
    try_qemu_io(&uri, &["read -P 0x11 0 1M", "read -P 0x22 1M 1M"]).expect("the data is there");
}

#[test]
fn with_every_control_plane_down_volumes_serve_and_a_pending_scale_up_completes_later() {
    if !etcd_installed() {
        return;
    }
    let cluster = Cluster::up_ha(3, "1G");
    let pools = cluster.pools();
    let first_two: Vec<String> = pools.iter().take(2).map(|(pool, _)| pool.clone()).collect();
    cluster.create_volume_on("pvc-all", "32Mi", &first_two);
    let uri = cluster.uri("pvc-all");
    let mut all = first_two.clone();
    all.push(pools[2].0.clone());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    assert!(cluster.patch_pools("pvc-all", &refs).status.success());
    for index in 1..=3 {
        cluster.kill_9(&format!(
            "control-planes/cp{index}/control-plane/control-plane.pid"
        ));
    }
    try_qemu_io(&uri, &["write -P 0x33 0 2M", "flush", "read -P 0x33 0 2M"])
        .expect("I/O with every control plane down");
    cluster.ok(&["up", "--ha", "--nodes", "3"]);
    cluster.wait_for(
        "the scale-up to complete once a control plane is back",
        &["describe", "cvc", "pvc-all", "-n", "openebs"],
        |out| out.contains("successfully scaled volume replicas to 3"),
    );
    try_qemu_io(&uri, &["read -P 0x33 0 2M"]).expect("the data is there");
}

/// `tandem store copy` moves every object of a stopped cluster into an empty store (another redb
/// file, then etcd under a prefix of its own), refuses a store that holds objects, and a control
/// plane on the copy serves them.
#[test]
fn store_copy_moves_every_object_into_an_empty_store_only() {
    let cluster = Cluster::up(1, "1G");
    let before = cluster.ok(&["get", "cspi", "-n", "openebs", "-o", "name"]);
    cluster.ok(&["down"]);
    let from = format!(
        "redb:{}",
        cluster
            .data_dir()
            .join("control-plane/store.redb")
            .display()
    );
    let copy_dir = tempfile::tempdir().expect("a temporary directory");
    let to = format!("redb:{}", copy_dir.path().join("copy.redb").display());
    let copied = cluster.ok(&["store", "copy", "--from", &from, "--to", &to]);
    assert!(copied.contains("copied 1 cstorpoolclusters"), "{copied}");
    assert!(copied.contains("copied 1 cstorpoolinstances"), "{copied}");
    let again = cluster.fails(&["store", "copy", "--from", &from, "--to", &to]);
    assert!(
        again.contains("already holds") && again.contains("copy only into an empty store"),
        "{again}"
    );

    // A control plane on the copy serves the same objects.
    let after = served(&cluster, &to, &[], copy_dir.path());
    assert_eq!(after, before);

    // Into etcd: the redb cluster's objects move to a `tandem up --ha` etcd, under a prefix of
    // their own, and a control plane there serves them. etcd serves TLS to holders of its own
    // CA's certificates only.
    if !etcd_installed() {
        return;
    }
    let ha = Cluster::up_ha(1, "1G");
    let status = ha.ok(&["status"]);
    let members: Vec<&str> = status
        .lines()
        .filter(|line| line.starts_with("etcd"))
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(|url| url.trim_start_matches("https://"))
        .collect();
    assert_eq!(members.len(), 3, "{status}");
    assert!(
        members.iter().all(|m| m.starts_with("127.0.0.1:")),
        "{status}"
    );
    let etcd = format!("etcd://{}/moved", members.join(","));
    let copy = ["store", "copy", "--from", &from, "--to", &etcd];
    let (etcd_pki, cluster_pki) = (ha.data_dir().join("pki/etcd"), ha.data_dir().join("pki"));
    let credential = |pki: &std::path::Path, ca: &str, certificate: &str| -> Vec<String> {
        let file = |name: &str| pki.join(name).display().to_string();
        let key = certificate.replace(".crt", ".key");
        [
            "--etcd-ca",
            &file(ca),
            "--etcd-certificate",
            &file(certificate),
            "--etcd-key",
            &file(&key),
        ]
        .map(String::from)
        .to_vec()
    };
    let etcd_client = credential(&etcd_pki, "ca.crt", "control-planes/etcd-client.crt");
    let with = |flags: &[String]| -> Vec<String> {
        copy.iter()
            .map(|arg| arg.to_string())
            .chain(flags.iter().cloned())
            .collect()
    };
    // Plain HTTP, or the cluster's admin or a node's certificate (trusting etcd's CA): refused.
    for flags in [
        Vec::new(),
        credential(&cluster_pki, "etcd/ca.crt", "users/admin.crt"),
        credential(&cluster_pki, "etcd/ca.crt", "nodes/node1.crt"),
    ] {
        let args = with(&flags);
        let refused = cluster.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            refused.contains("the store to copy to"),
            "{flags:?}: {refused}"
        );
    }
    let args = with(&etcd_client);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let copied = cluster.ok(&args);
    assert!(copied.contains("copied 1 cstorpoolinstances"), "{copied}");
    let again = cluster.fails(&args);
    assert!(again.contains("copy only into an empty store"), "{again}");
    let etcd_dir = tempfile::tempdir().expect("a temporary directory");
    assert_eq!(
        served(&cluster, &etcd, &etcd_client, etcd_dir.path()),
        before
    );
}

/// `tandem get cspi -o name` from a control plane started on `store` (with the arguments
/// `etcd`, its credential for etcd; its data directory `dir`).
fn served(cluster: &Cluster, store: &str, etcd: &[String], dir: &std::path::Path) -> String {
    // The cluster's own credentials, so its CLI reaches this control plane too.
    let pki = cluster.data_dir().join("pki");
    let mut control_plane = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "control-plane",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store,
            "--data-dir",
        ])
        .arg(dir)
        .arg("--ca")
        .arg(pki.join("ca.crt"))
        .arg("--certificate")
        .arg(pki.join("control-planes/control-plane.crt"))
        .arg("--key")
        .arg(pki.join("control-planes/control-plane.key"))
        .args(etcd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a control plane");
    let address_file = dir.join("control-plane/address");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !address_file.exists() {
        assert!(Instant::now() < deadline, "the control plane did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let server = std::fs::read_to_string(&address_file).expect("its address");
    let after = cluster.run_with(
        &["get", "cspi", "-n", "openebs", "-o", "name"],
        &[("TANDEM_SERVER", server.trim())],
    );
    let _ = control_plane.kill();
    let _ = control_plane.wait();
    assert!(after.status.success(), "{after:?}");
    String::from_utf8_lossy(&after.stdout).into_owned()
}

/// A watch on a standby control plane sees writes made through another: the store's own watch
/// wakes it, not only writes this process makes.
#[test]
fn a_watch_on_a_standby_sees_writes_made_through_the_leader() {
    if !etcd_installed() {
        return;
    }
    let cluster = Cluster::up_ha(1, "1G");
    let (leader, _) = wait_for_leader(&cluster, None, Duration::from_secs(10));
    let standby = control_planes(&cluster)
        .into_iter()
        .map(|(address, _, _)| address)
        .find(|address| *address != leader)
        .expect("a standby control plane");
    let pool = cluster.pools()[0].0.clone();

    let mut watch = Watch::open(
        &cluster,
        &standby,
        "/apis/cstor.openebs.io/v1/namespaces/openebs/cstorpoolinstances?watch=true",
    );
    watch.until(&format!(r#""name":"{pool}""#));

    let patch = r#"{"metadata":{"labels":{"seen-from":"the-leader"}}}"#;
    cluster.ok(&[
        "patch", "cspi", &pool, "-n", "openebs", "--type", "merge", "-p", patch, "--server",
        &leader,
    ]);
    watch.until(r#""seen-from":"the-leader""#);
}

/// The leader compacts etcd's history every `--compaction-interval`: a watch from before it is
/// told its version is too old (410 Gone), as Kubernetes answers, and lists again.
#[test]
fn the_leader_compacts_etcd_and_a_watch_from_before_is_told_to_list_again() {
    if !etcd_installed() {
        return;
    }
    let cluster = Cluster::up_ha_with(1, "1G", &[("TANDEM_COMPACTION_INTERVAL", "1s")]);
    let (leader, _) = wait_for_leader(&cluster, None, Duration::from_secs(10));
    // A control plane's watch cache holds the changes since it started, whatever etcd forgets;
    // one restarted after the cluster's first writes must ask etcd for them.
    let before = control_planes(&cluster);
    let (_, pid, _) = before
        .iter()
        .find(|(address, _, _)| *address != leader)
        .expect("a standby control plane");
    kill("-9", pid);
    cluster.ok_with(
        &["up", "--ha", "--nodes", "1"],
        &[("TANDEM_COMPACTION_INTERVAL", "1s")],
    );
    let started = Instant::now();
    let restarted = loop {
        let planes = control_planes(&cluster);
        if let Some((address, _, _)) = planes
            .iter()
            .find(|(_, pid, _)| !before.iter().any(|(_, old, _)| old == pid))
        {
            break address.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the restarted control plane did not register: {planes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // From version 1, older than the restarted control plane's watch cache: replayed from
        // etcd's history until the leader compacts it.
        let mut watch = Watch::open(
            &cluster,
            &restarted,
            "/apis/cstor.openebs.io/v1/namespaces/openebs/cstorpoolinstances\
             ?watch=true&resourceVersion=1&timeoutSeconds=1",
        );
        let answer = watch.read_to_end();
        if answer.contains("410") && answer.contains("too old resource version") {
            break;
        }
        assert!(
            answer.contains(r#""type":"ADDED""#),
            "before compaction the history is replayed: {answer}"
        );
        assert!(
            Instant::now() < deadline,
            "etcd was not compacted within 20 s: {answer}"
        );
    }
    // The objects themselves are all there, and a new watch from now works.
    let pools = cluster.pools();
    assert_eq!(pools.len(), 1);
    let mut watch = Watch::open(
        &cluster,
        &leader,
        "/apis/cstor.openebs.io/v1/namespaces/openebs/cstorpoolinstances?watch=true",
    );
    watch.until(&format!(r#""name":"{}""#, pools[0].0));
}

/// A watch over HTTPS/1.1 (the admin credential of `cluster`), read as raw text (chunk sizes
/// and all).
struct Watch {
    stream: StreamOwned<ClientConnection, std::net::TcpStream>,
    seen: String,
}

impl Watch {
    fn open(cluster: &Cluster, address: &str, path: &str) -> Watch {
        let host = address.trim_start_matches("https://");
        let socket = std::net::TcpStream::connect(host)
            .unwrap_or_else(|error| panic!("connect to {address}: {error}"));
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("a read timeout");
        let pki = cluster.data_dir().join("pki");
        let ca = std::fs::read_to_string(pki.join("ca.crt")).expect("the cluster's CA");
        let admin = tandem_pki::Credential::load(
            &pki.join("users/admin.crt"),
            &pki.join("users/admin.key"),
        )
        .expect("the admin credential");
        let config = tandem_pki::client_config(&ca, Some(&admin)).expect("a TLS set-up");
        let name = ServerName::try_from("127.0.0.1").expect("a server name");
        let connection =
            ClientConnection::new(std::sync::Arc::new(config), name).expect("a TLS client");
        let mut stream = StreamOwned::new(connection, socket);
        let request = format!("GET {path} HTTP/1.1\r\nHost: tandem\r\nConnection: close\r\n\r\n");
        std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send the watch");
        Watch {
            stream,
            seen: String::new(),
        }
    }

    /// Reads a little more; false once the answer has ended.
    fn read(&mut self) -> bool {
        let mut buffer = [0u8; 8192];
        match std::io::Read::read(&mut self.stream, &mut buffer) {
            Ok(0) => false,
            Ok(read) => {
                self.seen
                    .push_str(&String::from_utf8_lossy(&buffer[..read]));
                true
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                true
            }
            Err(error) => panic!("read the watch: {error}"),
        }
    }

    /// Reads until `needle` shows (within 15 s).
    fn until(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.seen.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the watch did not show {needle} within 15 s: {}",
                self.seen
            );
            assert!(
                self.read(),
                "the watch ended without {needle}: {}",
                self.seen
            );
        }
    }

    /// Reads the whole answer (within 15 s).
    fn read_to_end(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.read() {
            assert!(
                Instant::now() < deadline,
                "the watch did not end: {}",
                self.seen
            );
        }
        std::mem::take(&mut self.seen)
    }
}
