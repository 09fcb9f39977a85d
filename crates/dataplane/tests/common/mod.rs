//! The in-process volume the data-path tests share: replica hosts on real pool directories
//! ("nodes"), a target connected to them over loopback TCP, and the NBD server in front.
#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_core::{
    Fenced, Generation, Incarnation, Membership, ReplicaId, TargetOptions, VolumeStatus,
};
use tandem_dataplane::replica::storage::{create_replica, geometry_for, NewReplica};
use tandem_dataplane::replica::{HostOptions, LocalHost, ReplicaHost};
use tandem_dataplane::security::LinkSecurity;
use tandem_dataplane::target::{
    self, MembershipStore, ReplicaEndpoint, TargetConfig, TargetHandle,
};
use tandem_nbd::{Server, ServerConfig};

pub const VOLUME: &str = "pvc-1";
pub const SIZE: u64 = 64 << 20;

/// Remembers what the target persisted (the control plane's CV in production).
#[derive(Default)]
pub struct Recorded {
    pub persisted: Mutex<Vec<Membership>>,
}

impl MembershipStore for Recorded {
    fn persist(
        &self,
        _generation: Generation,
        membership: Membership,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Fenced>> + Send + '_>> {
        self.persisted.lock().unwrap().push(membership);
        Box::pin(async { Ok(()) })
    }
}

pub struct Node {
    pub _dir: tempfile::TempDir,
    pub replicas_dir: PathBuf,
    pub host: ReplicaHost,
}

pub async fn node() -> Node {
    node_with(HostOptions::default()).await
}

/// A node whose replica host runs with `options` (its link security, say).
pub async fn node_with(options: HostOptions) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let replicas_dir = dir.path().join("replicas");
    std::fs::create_dir_all(&replicas_dir).unwrap();
    let host = ReplicaHost::bind("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    Node {
        _dir: dir,
        replicas_dir,
        host,
    }
}

pub async fn replica_on(node: &Node, id: u64, consistent: bool) -> (ReplicaId, Incarnation) {
    let replica = ReplicaId(id);
    let incarnation = Incarnation(1000 + id);
    let dir = create_replica(
        &node.replicas_dir,
        &NewReplica {
            volume: VOLUME.to_string(),
            replica,
            incarnation,
            geometry: geometry_for(SIZE, None).unwrap(),
            consistent,
            thick: false,
        },
    )
    .unwrap();
    assert_eq!(node.host.add_replica(&dir).await.unwrap(), replica);
    (replica, incarnation)
}

pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut process = Process::new("qemu-io");
    process.args(["-f", "raw"]);
    for command in commands {
        process.args(["-c", command]);
    }
    let output = process
        .arg(uri)
        .output()
        .expect("qemu-io is installed (qemu-utils)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "qemu-io failed: {text}");
    assert!(!text.contains("Pattern verification failed"), "{text}");
    assert!(!text.contains("error"), "{text}");
    text
}

pub fn data_file(node: &Node) -> PathBuf {
    node.replicas_dir.join(VOLUME).join("data")
}

pub fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let mut buffer = vec![0u8; len];
    file.read_exact_at(&mut buffer, offset).unwrap();
    buffer
}

/// Starts generation 1's target over `initial`, replica i+1 served at `endpoints[i]`, with
/// `security` on its replica links (and `local`, the replica host of its own process).
pub fn start_target(
    endpoints: Vec<ReplicaEndpoint>,
    initial: &[(ReplicaId, Incarnation)],
    store: Arc<Recorded>,
    (security, local): (LinkSecurity, Option<LocalHost>),
    options: TargetOptions,
) -> TargetHandle {
    let endpoints: BTreeMap<ReplicaId, _> = endpoints
        .into_iter()
        .enumerate()
        .map(|(index, endpoint)| (ReplicaId(index as u64 + 1), endpoint))
        .collect();
    target::start(
        TargetConfig {
            volume: VOLUME.to_string(),
            generation: Generation(1),
            geometry: geometry_for(SIZE, None).unwrap(),
            membership: Membership::initial(initial),
            endpoints,
            security,
            local,
            options,
        },
        store,
    )
}

/// Starts generation 1's target over `initial` (replica i+1 on `nodes[i]`), waits for it to be
/// Healthy, and serves it over NBD; returns the handle and the export's URI.
pub async fn serve_volume(
    nodes: &[Node],
    initial: &[(ReplicaId, Incarnation)],
    store: Arc<Recorded>,
) -> (TargetHandle, String) {
    serve_volume_with(nodes, initial, store, TargetOptions::default()).await
}

/// [`serve_volume`] with the target's `options`.
pub async fn serve_volume_with(
    nodes: &[Node],
    initial: &[(ReplicaId, Incarnation)],
    store: Arc<Recorded>,
    options: TargetOptions,
) -> (TargetHandle, String) {
    let endpoints = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| ReplicaEndpoint::new(node.host.local_addr(), format!("node{index}")))
        .collect();
    let links = (LinkSecurity::Plain, None);
    let handle = start_target(endpoints, initial, store, links, options);
    eventually("the volume to be Healthy", || {
        handle.status().status == VolumeStatus::Healthy
    })
    .await;
    let server = Arc::new(Server::new(ServerConfig::default()));
    server.add_export(VOLUME, Arc::new(handle.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("nbd://{}/{VOLUME}", listener.local_addr().unwrap());
    tokio::spawn(server.serve(listener, std::future::pending()));
    (handle, uri)
}
