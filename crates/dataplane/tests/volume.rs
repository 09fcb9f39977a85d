//! A whole volume in one process: three replica hosts on real pool directories, a target
//! connected to them over loopback TCP, the NBD server in front, and qemu-io as the application.
//! Then a fourth replica is added (rebuilt while the volume serves) and one removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_core::{
    Command, Fenced, Generation, Incarnation, Membership, ReplicaId, ReplicaMode, TargetOptions,
    VolumeStatus,
};
use tandem_dataplane::replica::storage::{create_replica, geometry_for, NewReplica};
use tandem_dataplane::replica::{HostOptions, ReplicaHost};
use tandem_dataplane::target::{self, MembershipStore, TargetConfig, TargetHandle};
use tandem_nbd::{Server, ServerConfig};

const VOLUME: &str = "pvc-1";
const SIZE: u64 = 64 << 20;

/// Remembers what the target persisted (the control plane's CV in production).
#[derive(Default)]
struct Recorded {
    persisted: Mutex<Vec<Membership>>,
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

struct Node {
    _dir: tempfile::TempDir,
    replicas_dir: PathBuf,
    host: ReplicaHost,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let replicas_dir = dir.path().join("replicas");
    std::fs::create_dir_all(&replicas_dir).unwrap();
    let host = ReplicaHost::bind("127.0.0.1:0".parse().unwrap(), HostOptions::default())
        .await
        .unwrap();
    Node {
        _dir: dir,
        replicas_dir,
        host,
    }
}

async fn replica_on(node: &Node, id: u64, consistent: bool) -> (ReplicaId, Incarnation) {
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
        },
    )
    .unwrap();
    assert_eq!(node.host.add_replica(&dir).await.unwrap(), replica);
    (replica, incarnation)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn qemu_io(uri: &str, commands: &[&str]) -> String {
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

fn data_file(node: &Node) -> PathBuf {
    node.replicas_dir.join(VOLUME).join("data")
}

fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let mut buffer = vec![0u8; len];
    file.read_exact_at(&mut buffer, offset).unwrap();
    buffer
}

/// Starts generation 1's target over `initial` (replica i+1 on `nodes[i]`), waits for it to be
/// Healthy, and serves it over NBD; returns the handle and the export's URI.
async fn serve_volume(
    nodes: &[Node],
    initial: &[(ReplicaId, Incarnation)],
    store: Arc<Recorded>,
) -> (TargetHandle, String) {
    let addresses: BTreeMap<ReplicaId, _> = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| (ReplicaId(index as u64 + 1), node.host.local_addr()))
        .collect();
    let handle: TargetHandle = target::start(
        TargetConfig {
            volume: VOLUME.to_string(),
            generation: Generation(1),
            geometry: geometry_for(SIZE, None).unwrap(),
            membership: Membership::initial(initial),
            addresses,
            options: TargetOptions::default(),
        },
        store,
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_serves_nbd_and_moves_a_replica_while_serving() {
    let nodes = [node().await, node().await, node().await, node().await];
    let mut initial = Vec::new();
    for (index, node) in nodes[..3].iter().enumerate() {
        initial.push(replica_on(node, index as u64 + 1, true).await);
    }
    let store = Arc::new(Recorded::default());
    let (handle, uri) = serve_volume(&nodes, &initial, store.clone()).await;

    let written = {
        let uri = uri.clone();
        tokio::task::spawn_blocking(move || {
            qemu_io(
                &uri,
                &[
                    "write -P 0xab 0 1M",
                    "write -P 0xcd 8M 4M",
                    "flush",
                    "read -P 0xab 0 1M",
                    "read -P 0xcd 8M 4M",
                ],
            )
        })
        .await
        .unwrap()
    };
    assert!(written.contains("wrote 1048576/1048576 bytes"), "{written}");
    // Every replica holds the flushed data in its own file.
    for node in &nodes[..3] {
        assert_eq!(file_bytes(&data_file(node), 0, 4096), vec![0xab; 4096]);
        assert_eq!(
            file_bytes(&data_file(node), 8 << 20, 4096),
            vec![0xcd; 4096]
        );
    }

    // Add a fourth replica: it is rebuilt from a healthy peer while the volume serves.
    let (fourth, _) = replica_on(&nodes[3], 4, false).await;
    handle.command(Command::AddReplica(fourth)).await.unwrap();
    let during = {
        let uri = uri.clone();
        tokio::task::spawn_blocking(move || qemu_io(&uri, &["write -P 0xef 20M 1M", "flush"]))
    };
    eventually("the new replica to be Healthy and trusted", || {
        let status = handle.status();
        status.modes.get(&fourth) == Some(&ReplicaMode::Healthy)
            && status
                .membership
                .get(fourth)
                .is_some_and(|member| member.trusted)
    })
    .await;
    during.await.unwrap();
    let flushed = {
        let uri = uri.clone();
        tokio::task::spawn_blocking(move || qemu_io(&uri, &["flush"]))
            .await
            .unwrap()
    };
    let _ = flushed;
    assert_eq!(file_bytes(&data_file(&nodes[3]), 0, 4096), vec![0xab; 4096]);
    assert_eq!(
        file_bytes(&data_file(&nodes[3]), 8 << 20, 4096),
        vec![0xcd; 4096]
    );
    assert_eq!(
        file_bytes(&data_file(&nodes[3]), 20 << 20, 4096),
        vec![0xef; 4096]
    );
    assert!(store
        .persisted
        .lock()
        .unwrap()
        .iter()
        .any(|membership| membership.get(fourth).is_some_and(|m| m.trusted)));

    // Remove the first replica; the volume keeps serving everything written.
    handle
        .command(Command::RemoveReplica(ReplicaId(1)))
        .await
        .unwrap();
    eventually("the first replica to leave", || {
        handle.status().membership.get(ReplicaId(1)).is_none()
    })
    .await;
    let read = tokio::task::spawn_blocking(move || {
        qemu_io(
            &uri,
            &[
                "read -P 0xab 0 1M",
                "read -P 0xcd 8M 4M",
                "read -P 0xef 20M 1M",
            ],
        )
    })
    .await
    .unwrap();
    assert!(read.contains("read 1048576/1048576 bytes"), "{read}");
    handle.stop().await;
}

/// A pool whose size is reached refuses writes as "no space": its replica leaves the volume,
/// which keeps serving from the other two; once the pool has space again the replica returns,
/// is resynced, and holds what was written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_pool_refuses_writes_and_its_replica_returns_when_space_is_freed() {
    let nodes = [node().await, node().await, node().await];
    let mut initial = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        initial.push(replica_on(node, index as u64 + 1, true).await);
    }
    let (handle, uri) = serve_volume(&nodes, &initial, Arc::new(Recorded::default())).await;

    let full = ReplicaId(3);
    nodes[2].host.set_pool_full(true);
    let written = {
        let uri = uri.clone();
        tokio::task::spawn_blocking(move || {
            qemu_io(
                &uri,
                &["write -P 0x5a 4M 2M", "flush", "read -P 0x5a 4M 2M"],
            )
        })
        .await
        .unwrap()
    };
    assert!(written.contains("wrote 2097152/2097152 bytes"), "{written}");
    assert_ne!(
        handle.status().modes.get(&full),
        Some(&ReplicaMode::Healthy)
    );
    assert_eq!(handle.status().status, VolumeStatus::Degraded);
    assert_eq!(
        file_bytes(&data_file(&nodes[2]), 4 << 20, 4096),
        vec![0; 4096]
    );

    nodes[2].host.set_pool_full(false);
    eventually("the replica to return and be resynced", || {
        let status = handle.status();
        status.status == VolumeStatus::Healthy
            && status.modes.get(&full) == Some(&ReplicaMode::Healthy)
    })
    .await;
    let resync = handle
        .status()
        .resyncs_finished
        .iter()
        .rev()
        .find(|resync| resync.replica == full)
        .cloned()
        .expect("the returning replica was resynced");
    assert!(!resync.full && resync.bytes >= 2 << 20, "{resync:?}");
    assert_eq!(
        file_bytes(&data_file(&nodes[2]), 4 << 20, 4096),
        vec![0x5a; 4096]
    );
    handle.stop().await;
}
