//! The agent against the real object API (in-process, on 127.0.0.1, with a store file in a
//! temporary directory) and a real pool directory: what it writes to the control plane and what
//! it leaves on disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tandem_agent::storage::{geometry_for, read_meta, DATA_FILE, META_FILE};
use tandem_agent::{
    AgentConfig, NodeAgent, FINALIZER, MESSAGE_READ_ONLY_SET, MESSAGE_READ_ONLY_UNSET,
    REASON_POOL_CREATION_FAILED, REASON_READ_ONLY,
};
use tandem_client::Client;
use tandem_control_plane::{router, Api};
use tandem_core::{Envelope, Generation, Geometry, Message, ReplicaId, Seq, SessionId, Stamp};
use tandem_objects::{
    CStorPoolInstance, CStorPoolInstancePhase, CStorVolumeReplica, CStorVolumeReplicaPhase,
    EventType, Kind, Object, ObjectMeta, Quantity, LABEL_CSTOR_POOL_CLUSTER,
    LABEL_CSTOR_POOL_INSTANCE_NAME, LABEL_HOSTNAME, LABEL_PERSISTENT_VOLUME,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const NS: &str = "openebs";
const DEADLINE: Duration = Duration::from_secs(30);

struct Harness {
    client: Client,
    server: String,
    _store_dir: tempfile::TempDir,
}

async fn control_plane() -> Harness {
    let store_dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(tandem_store::RedbStore::open(&store_dir.path().join("store.redb")).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router(Api::new(store, Duration::from_secs(10))))
            .await
            .unwrap();
    });
    Harness {
        client: Client::new(&server).unwrap(),
        server,
        _store_dir: store_dir,
    }
}

/// A running agent; dropping the sender stops it.
struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningAgent {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(DEADLINE, self.task).await;
        result
            .expect("the agent stops")
            .expect("the agent task")
            .expect("the agent returns Ok");
    }
}

fn start_agent(harness: &Harness, node: &str, pool_dir: &Path, pool_size: u64) -> RunningAgent {
    let mut config = AgentConfig::new(node, pool_dir, pool_size, harness.server.clone());
    config.heartbeat = Duration::from_millis(100);
    config.reconcile_interval = Duration::from_millis(100);
    config.measure_interval = Duration::from_millis(200);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tandem_agent::run(config, async move {
        let _ = stopped.await;
    }));
    RunningAgent {
        stop: Some(stop),
        task,
    }
}

/// Starts an agent whose replica host is already serving what is on disk; returns it with the
/// host's address.
async fn start_node_agent(
    harness: &Harness,
    node: &str,
    pool_dir: &Path,
    pool_size: u64,
) -> (RunningAgent, SocketAddr) {
    let mut config = AgentConfig::new(node, pool_dir, pool_size, harness.server.clone());
    config.heartbeat = Duration::from_millis(100);
    config.reconcile_interval = Duration::from_millis(100);
    config.measure_interval = Duration::from_millis(200);
    let agent = NodeAgent::start(config).await.expect("the agent starts");
    let address = agent.data_address();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    (
        RunningAgent {
            stop: Some(stop),
            task,
        },
        address,
    )
}

/// A session to a replica over raw frames, as a target opens it.
struct Session {
    stream: TcpStream,
    buffer: BytesMut,
    session: SessionId,
    number: u64,
}

impl Session {
    async fn open(address: SocketAddr, generation: u64, replica: u64, geometry: Geometry) -> Self {
        let stream = TcpStream::connect(address).await.unwrap();
        let mut session = Session {
            stream,
            buffer: BytesMut::new(),
            session: SessionId::new(Generation(generation), 1),
            number: 0,
        };
        session
            .send(Message::Hello {
                generation: Generation(generation),
                replica: ReplicaId(replica),
                geometry,
            })
            .await;
        session
    }

    async fn send(&mut self, message: Message) {
        self.number += 1;
        let mut frame = BytesMut::new();
        tandem_wire::encode(
            &Envelope {
                session: self.session,
                number: self.number,
                message,
            },
            &mut frame,
        );
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next message, or None once the host closed the connection.
    async fn recv(&mut self) -> Option<Message> {
        let read = async {
            loop {
                if let Some(envelope) = tandem_wire::decode(&mut self.buffer).unwrap() {
                    return Some(envelope.message);
                }
                match self.stream.read_buf(&mut self.buffer).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .expect("an answer in time")
    }
}

fn pool(name: &str, node: &str) -> CStorPoolInstance {
    let metadata = ObjectMeta::named(name)
        .with_label(LABEL_HOSTNAME, node)
        .with_label(LABEL_CSTOR_POOL_CLUSTER, "cspc-a");
    let mut pool = CStorPoolInstance::new(metadata, Default::default());
    pool.spec.host_name = node.to_string();
    pool
}

fn replica(volume: &str, pool: &str, capacity: &str, replica_id: &str) -> CStorVolumeReplica {
    let mut metadata = ObjectMeta::named(format!("{volume}-{pool}"))
        .with_label(LABEL_CSTOR_POOL_INSTANCE_NAME, pool)
        .with_label(LABEL_PERSISTENT_VOLUME, volume);
    metadata.finalizers.push(FINALIZER.to_string());
    let mut replica = CStorVolumeReplica::new(metadata, Default::default());
    replica.spec.capacity = Quantity::parse(capacity).unwrap();
    replica.spec.replica_id = replica_id.to_string();
    replica
}

async fn create<T: Into<Object>>(client: &Client, object: T) -> Object {
    client.create(&object.into()).await.unwrap()
}

async fn get_pool(client: &Client, name: &str) -> CStorPoolInstance {
    CStorPoolInstance::try_from(client.get(Kind::CStorPoolInstance, NS, name).await.unwrap())
        .unwrap()
}

async fn find_replica(client: &Client, name: &str) -> Option<CStorVolumeReplica> {
    client
        .find(Kind::CStorVolumeReplica, NS, name)
        .await
        .unwrap()
        .map(|object| CStorVolumeReplica::try_from(object).unwrap())
}

/// Polls `check` until it returns Some, or fails the test with `what` at the deadline.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn replica_dir(pool_dir: &Path, volume: &str) -> PathBuf {
    pool_dir.join("replicas").join(volume)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_its_pool_creates_and_removes_replica_storage() {
    let harness = control_plane().await;
    let client = &harness.client;
    let pool_parent = tempfile::tempdir().unwrap();
    let pool_dir = pool_parent.path().join("pool");
    let gib = 1u64 << 30;

    let cspi = create(client, pool("cspc-a-abcd", "n1")).await;
    // Another node's pool and a replica of it: not this agent's business.
    create(client, pool("cspc-a-efgh", "n2")).await;
    create(client, replica("pvc-9", "cspc-a-efgh", "1Gi", "9")).await;
    // A provisioning replica with an id, and a scale-up replica without one.
    create(client, replica("pvc-1", "cspc-a-abcd", "1Gi", "12345")).await;
    let mut scale_up = replica("pvc-2", "cspc-a-abcd", "1G", "");
    scale_up.status.phase = CStorVolumeReplicaPhase::Recreate;
    let scale_up = create(client, scale_up).await;

    let agent = start_agent(&harness, "n1", &pool_dir, 10 * gib);

    let online = wait_for("the pool to be ONLINE with both replicas", || async {
        let pool = get_pool(client, "cspc-a-abcd").await;
        (pool.status.phase == CStorPoolInstancePhase::Online
            && pool.status.provisioned_replicas == 2)
            .then_some(pool)
    })
    .await;
    assert_eq!(online.status.capacity.total.to_string(), "10700M");
    assert!(!online.status.read_only);
    assert_eq!(online.status.healthy_replicas, 0);
    let used = online.status.capacity.used.bytes();
    assert!(used > 0 && used < 10 << 20, "used {used}");
    let free = online.status.capacity.free.bytes();
    let sum = free + used;
    assert!(
        sum.abs_diff(10 * gib) < 10 * gib / 100,
        "free {free} + used {used} is not the total"
    );

    // pool.json names the CSPI.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pool_dir.join("pool.json")).unwrap()).unwrap();
    assert_eq!(record["cspi"], "cspc-a-abcd");
    assert_eq!(record["uid"], cspi.metadata().uid.as_str());
    assert_eq!(record["cspc"], "cspc-a");
    assert_eq!(record["capacity"], 10 * gib);

    for name in ["pvc-1-cspc-a-abcd", "pvc-2-cspc-a-abcd"] {
        let cvr = wait_for("the replica to be Offline", || async {
            find_replica(client, name)
                .await
                .filter(|cvr| cvr.status.phase == CStorVolumeReplicaPhase::Offline)
        })
        .await;
        assert!(
            !cvr.status.capacity.total.is_zero(),
            "{name}: {:?}",
            cvr.status
        );
        assert!(
            cvr.status.capacity.total.bytes() < 1 << 20,
            "{name}: thin-provisioned"
        );
        assert!(!cvr.status.last_transition_time.is_empty());
        assert!(!cvr.status.last_update_time.is_empty());
        assert!(cvr.status.message.is_empty());
    }

    // The storage on disk: a sparse data file of the volume's size and its metadata.
    let first = replica_dir(&pool_dir, "pvc-1");
    assert_eq!(std::fs::metadata(first.join(DATA_FILE)).unwrap().len(), gib);
    let meta = read_meta(&first.join(META_FILE)).unwrap();
    assert_eq!(meta.superblock.replica, ReplicaId(12345));
    assert!(
        meta.superblock.consistent,
        "created with its volume: quorum on"
    );
    assert_eq!(meta.superblock.geometry.size_bytes, gib);
    assert_eq!(meta.superblock.geometry.block_size, 4096);
    assert_eq!(meta.superblock.geometry.region_size, 1 << 20);

    // The scale-up replica: untrusted, "1G" rounded up to whole blocks, and its generated id
    // written back to its spec.
    let second = replica_dir(&pool_dir, "pvc-2");
    let meta = read_meta(&second.join(META_FILE)).unwrap();
    assert!(
        !meta.superblock.consistent,
        "a Recreate replica must be rebuilt: quorum off"
    );
    assert_eq!(meta.superblock.geometry.size_bytes, 1_000_001_536);
    let cvr = find_replica(client, "pvc-2-cspc-a-abcd").await.unwrap();
    assert_eq!(cvr.spec.replica_id, meta.superblock.replica.0.to_string());
    assert_eq!(
        meta.superblock.replica,
        tandem_agent::storage::replica_id_from_uid(&scale_up.metadata().uid)
    );

    // The other node's replica was not touched.
    assert!(!replica_dir(&pool_dir, "pvc-9").exists());
    let other = find_replica(client, "pvc-9-cspc-a-efgh").await.unwrap();
    assert_eq!(other.status.phase, CStorVolumeReplicaPhase::Empty);

    // The heartbeat reached the control plane.
    let nodes = client.nodes().await.unwrap();
    assert!(
        nodes.iter().any(|node| node.node == "n1" && node.ready),
        "{nodes:?}"
    );

    // A second pool naming this node is a duplicate.
    let mut duplicate = pool("cspc-b-wxyz", "n1");
    duplicate
        .metadata
        .labels
        .insert(LABEL_CSTOR_POOL_CLUSTER.to_string(), "cspc-b".to_string());
    create(client, duplicate).await;
    wait_for("the second pool to be ErrorDuplicate", || async {
        let pool = get_pool(client, "cspc-b-wxyz").await;
        (pool.status.phase == CStorPoolInstancePhase::ErrorDuplicate).then_some(())
    })
    .await;
    assert_eq!(
        get_pool(client, "cspc-a-abcd").await.status.phase,
        CStorPoolInstancePhase::Online
    );

    // Storage without a CVR is kept and counted.
    std::fs::create_dir(replica_dir(&pool_dir, "pvc-orphan")).unwrap();
    wait_for("the orphan to be counted", || async {
        (get_pool(client, "cspc-a-abcd")
            .await
            .status
            .provisioned_replicas
            == 3)
            .then_some(())
    })
    .await;

    // Deleting a CVR removes its storage, then its finalizer, and so the object.
    client
        .delete(Kind::CStorVolumeReplica, NS, "pvc-1-cspc-a-abcd")
        .await
        .unwrap();
    wait_for("the storage and the CVR to be gone", || async {
        let gone = find_replica(client, "pvc-1-cspc-a-abcd").await.is_none();
        (gone && !first.exists()).then_some(())
    })
    .await;
    assert!(
        second.join(DATA_FILE).exists(),
        "the other replica is untouched"
    );
    wait_for("the pool to count two replicas", || async {
        (get_pool(client, "cspc-a-abcd")
            .await
            .status
            .provisioned_replicas
            == 2)
            .then_some(())
    })
    .await;
    agent.stop().await;
    assert!(
        replica_dir(&pool_dir, "pvc-orphan").exists(),
        "orphans are never deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_waits_for_its_ports_while_the_previous_one_lets_go() {
    let harness = control_plane().await;
    let pool_dir = tempfile::tempdir().unwrap();
    // The previous agent (still exiting after a kill -9) holds both ports.
    let data = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nbd = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = AgentConfig::new("n1", pool_dir.path(), 1 << 30, harness.server.clone());
    config.data_address = data.local_addr().unwrap();
    config.nbd_address = nbd.local_addr().unwrap();
    let wanted = (config.data_address, config.nbd_address);
    let starting = tokio::spawn(NodeAgent::start(config));
    // Long enough for the new agent to find the ports taken (it retries; it does not give up).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!starting.is_finished(), "the agent waits for its ports");
    drop((data, nbd));
    let agent = tokio::time::timeout(DEADLINE, starting)
        .await
        .expect("the agent starts once its ports are free")
        .unwrap()
        .expect("the agent starts");
    assert_eq!((agent.data_address(), agent.nbd_address()), wanted);
    agent.run(async {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_directory_that_belongs_to_another_pool() {
    let harness = control_plane().await;
    let client = &harness.client;
    let pool_dir = tempfile::tempdir().unwrap();
    let foreign = "{\"cspi\": \"cspc-z-0000\", \"uid\": \"some-other-uid\", \"cspc\": \"cspc-z\", \"capacity\": 1000}\n";
    std::fs::write(pool_dir.path().join("pool.json"), foreign).unwrap();
    create(client, pool("cspc-a-abcd", "n1")).await;
    create(client, replica("pvc-1", "cspc-a-abcd", "1Gi", "1")).await;

    let agent = start_agent(&harness, "n1", pool_dir.path(), 1 << 30);
    wait_for("the pool to be PoolCreationFailed", || async {
        let pool = get_pool(client, "cspc-a-abcd").await;
        (pool.status.phase == CStorPoolInstancePhase::PoolCreationFailed).then_some(())
    })
    .await;
    let about = client
        .get(Kind::CStorPoolInstance, NS, "cspc-a-abcd")
        .await
        .unwrap();
    let event = wait_for("a PoolCreationFailed event", || async {
        let events = client.events_about(&about).await.unwrap();
        events
            .into_iter()
            .find(|event| event.reason == REASON_POOL_CREATION_FAILED)
    })
    .await;
    assert_eq!(event.event_type, EventType::Warning);
    assert!(
        event
            .message
            .contains(&pool_dir.path().display().to_string()),
        "{}",
        event.message
    );
    assert!(event.message.contains("cspc-z-0000"), "{}", event.message);
    agent.stop().await;
    assert_eq!(
        std::fs::read_to_string(pool_dir.path().join("pool.json")).unwrap(),
        foreign
    );
    assert!(
        !pool_dir.path().join("replicas").exists(),
        "nothing was created in it"
    );
    let cvr = find_replica(client, "pvc-1-cspc-a-abcd").await.unwrap();
    assert_eq!(cvr.status.phase, CStorVolumeReplicaPhase::Empty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_pool_creates_no_storage_until_the_limit_is_raised() {
    let harness = control_plane().await;
    let client = &harness.client;
    let pool_dir = tempfile::tempdir().unwrap();
    // 1 MiB of capacity and a 1% limit: pool.json and the directories alone pass it.
    let mut read_only_pool = pool("cspc-a-abcd", "n1");
    read_only_pool.spec.pool_config.ro_threshold_limit = Some(1);
    create(client, read_only_pool).await;
    create(client, replica("pvc-1", "cspc-a-abcd", "1Gi", "1")).await;

    let agent = start_agent(&harness, "n1", pool_dir.path(), 1 << 20);
    wait_for("the pool to be read-only", || async {
        let pool = get_pool(client, "cspc-a-abcd").await;
        (pool.status.phase == CStorPoolInstancePhase::Online && pool.status.read_only).then_some(())
    })
    .await;
    let cvr = wait_for("the replica to be refused", || async {
        find_replica(client, "pvc-1-cspc-a-abcd")
            .await
            .filter(|cvr| cvr.status.phase == CStorVolumeReplicaPhase::Error)
    })
    .await;
    assert!(
        cvr.status.message.contains("pool cspc-a-abcd is read-only"),
        "{}",
        cvr.status.message
    );
    assert!(!replica_dir(pool_dir.path(), "pvc-1").exists());
    let about = client
        .get(Kind::CStorPoolInstance, NS, "cspc-a-abcd")
        .await
        .unwrap();
    wait_for("the read-only Warning", || async {
        let events = client.events_about(&about).await.unwrap();
        events.into_iter().find(|e| {
            e.reason == REASON_READ_ONLY
                && e.event_type == EventType::Warning
                && e.message == MESSAGE_READ_ONLY_SET
        })
    })
    .await;

    // 100 means never read-only.
    let mut raised = get_pool(client, "cspc-a-abcd").await;
    raised.spec.pool_config.ro_threshold_limit = Some(100);
    client
        .update(&Object::CStorPoolInstance(raised))
        .await
        .unwrap();
    wait_for("the pool to be writable", || async {
        (!get_pool(client, "cspc-a-abcd").await.status.read_only).then_some(())
    })
    .await;
    wait_for("the read-only unset event", || async {
        let events = client.events_about(&about).await.unwrap();
        events.into_iter().find(|e| {
            e.reason == REASON_READ_ONLY
                && e.event_type == EventType::Normal
                && e.message == MESSAGE_READ_ONLY_UNSET
        })
    })
    .await;
    let cvr = wait_for("the replica to be created", || async {
        find_replica(client, "pvc-1-cspc-a-abcd")
            .await
            .filter(|cvr| cvr.status.phase == CStorVolumeReplicaPhase::Offline)
    })
    .await;
    assert!(cvr.status.message.is_empty());
    let meta = read_meta(&replica_dir(pool_dir.path(), "pvc-1").join(META_FILE)).unwrap();
    assert_eq!(meta.superblock.replica, ReplicaId(1));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_metadata_is_reported_and_kept() {
    let harness = control_plane().await;
    let client = &harness.client;
    let pool_dir = tempfile::tempdir().unwrap();
    create(client, pool("cspc-a-abcd", "n1")).await;
    create(client, replica("pvc-1", "cspc-a-abcd", "64Mi", "7")).await;
    let agent = start_agent(&harness, "n1", pool_dir.path(), 1 << 30);
    wait_for("the replica to be Offline", || async {
        find_replica(client, "pvc-1-cspc-a-abcd")
            .await
            .filter(|cvr| cvr.status.phase == CStorVolumeReplicaPhase::Offline)
    })
    .await;
    let meta_path = replica_dir(pool_dir.path(), "pvc-1").join(META_FILE);
    let mut bytes = std::fs::read(&meta_path).unwrap();
    bytes[20] ^= 0xff;
    // Replaced in one step: the agent may read it at any moment, and must find either the old
    // file or the corrupt one, never a half-written one.
    let corrupt = meta_path.with_extension("corrupt");
    std::fs::write(&corrupt, &bytes).unwrap();
    std::fs::rename(&corrupt, &meta_path).unwrap();
    let cvr = wait_for("the replica to be Error", || async {
        find_replica(client, "pvc-1-cspc-a-abcd")
            .await
            .filter(|cvr| cvr.status.phase == CStorVolumeReplicaPhase::Error)
    })
    .await;
    assert!(
        cvr.status
            .message
            .contains(&meta_path.display().to_string()),
        "{}",
        cvr.status.message
    );
    assert!(
        cvr.status.message.contains("checksum mismatch"),
        "{}",
        cvr.status.message
    );
    agent.stop().await;
    assert_eq!(
        std::fs::read(&meta_path).unwrap(),
        bytes,
        "never overwritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_replica_data_and_stops_serving_before_removing_storage() {
    let harness = control_plane().await;
    let client = &harness.client;
    let pool_dir = tempfile::tempdir().unwrap();
    create(client, pool("cspc-a-abcd", "n1")).await;
    // 1e8 bytes is not a whole number of 4 KiB blocks: the volume is rounded up, by the same
    // function a target uses.
    create(client, replica("pvc-1", "cspc-a-abcd", "100M", "77")).await;
    let geometry = geometry_for(100_000_000, None).unwrap();
    assert_eq!(geometry.size_bytes, 100_003_840);

    let (agent, address) = start_node_agent(&harness, "n1", pool_dir.path(), 1 << 30).await;
    assert!(address.ip().is_loopback() && address.port() != 0);
    wait_for("the heartbeat to carry the data address", || async {
        let nodes = client.nodes().await.unwrap();
        nodes
            .iter()
            .any(|node| node.node == "n1" && node.address == address.to_string())
            .then_some(())
    })
    .await;
    wait_for("the replica to be Offline", || async {
        find_replica(client, "pvc-1-cspc-a-abcd")
            .await
            .filter(|cvr| cvr.status.phase == CStorVolumeReplicaPhase::Offline)
    })
    .await;

    // A target reaches the new replica at once.
    let mut session = Session::open(address, 1, 77, geometry).await;
    let Some(Message::HelloAck(ack)) = session.recv().await else {
        panic!("expected a HelloAck");
    };
    assert_eq!(ack.replica, ReplicaId(77));
    assert!(ack.consistent);
    session
        .send(Message::Write {
            seq: Seq(1),
            offset: 8192,
            data: Bytes::from(vec![7u8; 4096]),
            committed: Seq(0),
        })
        .await;
    assert_eq!(
        session.recv().await,
        Some(Message::WriteDone {
            seq: Seq(1),
            result: Ok(())
        })
    );
    session
        .send(Message::Flush {
            seq: Seq(2),
            committed: Seq(1),
        })
        .await;
    assert_eq!(
        session.recv().await,
        Some(Message::FlushDone {
            seq: Seq(2),
            result: Ok(())
        })
    );
    agent.stop().await;
    assert_eq!(
        session.recv().await,
        None,
        "the host stopped with the agent"
    );

    // A restarted agent serves what is on disk before it has heard from the control plane.
    let mut config = AgentConfig::new("n1", pool_dir.path(), 1 << 30, harness.server.clone());
    config.heartbeat = Duration::from_millis(100);
    config.reconcile_interval = Duration::from_millis(100);
    let started = NodeAgent::start(config).await.unwrap();
    let mut session = Session::open(started.data_address(), 2, 77, geometry).await;
    let Some(Message::HelloAck(ack)) = session.recv().await else {
        panic!("expected a HelloAck");
    };
    assert_eq!(ack.stamp, Stamp::new(Generation(1), Seq(2)));
    assert_eq!(ack.checkpoint, Seq(1));
    // Stopped at once: the host lets go of the storage before `run` returns.
    started.run(async {}).await.unwrap();
    assert_eq!(session.recv().await, None);

    let (agent, address) = start_node_agent(&harness, "n1", pool_dir.path(), 1 << 30).await;
    let mut session = Session::open(address, 3, 77, geometry).await;
    assert!(matches!(session.recv().await, Some(Message::HelloAck(_))));
    // Deleting the CVR takes the replica off the host, then removes its storage. (The agent
    // may be writing the CVR's status meanwhile: a conflicting delete is tried again.)
    wait_for("the CVR to be deleted", || async {
        match client
            .delete(Kind::CStorVolumeReplica, NS, "pvc-1-cspc-a-abcd")
            .await
        {
            Ok(_) => Some(()),
            Err(error) if error.is_conflict() => None,
            Err(error) => panic!("delete: {error}"),
        }
    })
    .await;
    assert_eq!(session.recv().await, None, "the connection is closed");
    let dir = replica_dir(pool_dir.path(), "pvc-1");
    wait_for("the storage and the CVR to be gone", || async {
        let gone = find_replica(client, "pvc-1-cspc-a-abcd").await.is_none();
        (gone && !dir.exists()).then_some(())
    })
    .await;
    let mut late = Session::open(address, 4, 77, geometry).await;
    assert_eq!(late.recv().await, None, "no longer served");
    agent.stop().await;
}
