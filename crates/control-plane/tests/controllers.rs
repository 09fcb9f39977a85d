//! The controllers against the real API on 127.0.0.1 and a real store file, with this test
//! playing the parts the controllers only read: the node agents (heartbeats, pool status) and
//! the data path (replica phases, the volume's health and known replicas).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tandem_client::{Client, NodeHeartbeat};
use tandem_control_plane::leader::Leader;
use tandem_control_plane::{controllers, router, Api};
use tandem_objects::{
    parse_yaml, CStorPoolCluster, CStorPoolInstance, CStorPoolInstancePhase, CStorVolume,
    CStorVolumeConfig, CStorVolumeConfigPhase, CStorVolumePhase, CStorVolumeReplica,
    CStorVolumeReplicaPhase, Event, EventType, Kind, Object, Quantity,
};
use tandem_store::RedbStore;

const NS: &str = "openebs";
const AGENT_TIMEOUT: Duration = Duration::from_millis(1500);

struct Cluster {
    client: Client,
    /// The nodes whose "agents" are heartbeating.
    alive: Arc<Mutex<BTreeSet<String>>>,
    _dir: tempfile::TempDir,
}

async fn cluster(nodes: &[&str]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let api = Api::new(store, AGENT_TIMEOUT);
    let client = Client::new(&server).unwrap();
    tokio::spawn(controllers::run(
        api.clone(),
        client.clone(),
        Leader::Sole,
        std::future::pending(),
    ));
    tokio::spawn(async move { axum::serve(listener, router(api)).await.unwrap() });
    let alive = Arc::new(Mutex::new(
        nodes
            .iter()
            .map(|node| node.to_string())
            .collect::<BTreeSet<_>>(),
    ));
    let (beating, heart) = (alive.clone(), client.clone());
    tokio::spawn(async move {
        loop {
            let nodes: Vec<String> = beating.lock().unwrap().iter().cloned().collect();
            for node in nodes {
                let _ = heart
                    .heartbeat(&NodeHeartbeat {
                        node,
                        ..NodeHeartbeat::default()
                    })
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Cluster {
        client,
        alive,
        _dir: dir,
    }
}

/// Polls `probe` until it gives a value, for at most 15 seconds.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cspc_yaml(nodes: &[&str]) -> String {
    let mut yaml = String::from(
        "apiVersion: cstor.openebs.io/v1\nkind: CStorPoolCluster\nmetadata:\n  name: cspc-stripe-pool\n\
         spec:\n  pools:\n",
    );
    for node in nodes {
        yaml.push_str(&format!(
            "  - nodeSelector: {{kubernetes.io/hostname: {node}}}\n    dataRaidGroups: \
             [{{blockDevices: [{{blockDeviceName: {node}-pool}}]}}]\n    poolConfig: \
             {{dataRaidGroupType: stripe}}\n"
        ));
    }
    yaml
}

fn cvc_yaml(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\nmetadata:\n  name: {name}\n  \
         labels: {{openebs.io/cstor-pool-cluster: cspc-stripe-pool}}\nspec:\n  capacity: {{storage: 5Gi}}\n  \
         provision: {{capacity: {{storage: 5Gi}}, replicaCount: {replicas}}}\n"
    )
}

impl Cluster {
    async fn apply(&self, yaml: &str) {
        self.client
            .create(&parse_yaml(yaml).unwrap())
            .await
            .unwrap();
    }

    async fn pools(&self) -> Vec<CStorPoolInstance> {
        let mut pools: Vec<CStorPoolInstance> = self
            .client
            .list_typed(Kind::CStorPoolInstance, Some(NS), None)
            .await
            .unwrap();
        pools.sort_by(|a, b| a.spec.host_name.cmp(&b.spec.host_name));
        pools
    }

    /// Creates the pool cluster and waits for one pool per node; returns them in node order.
    async fn pool_cluster(&self, nodes: &[&str]) -> Vec<CStorPoolInstance> {
        self.apply(&cspc_yaml(nodes)).await;
        eventually("one pool per node", || async {
            let pools = self.pools().await;
            (pools.len() == nodes.len()).then_some(pools)
        })
        .await
    }

    /// Reports a pool's status as its agent would.
    async fn report_pool(&self, name: &str, phase: CStorPoolInstancePhase, read_only: bool) {
        let object = self
            .client
            .get(Kind::CStorPoolInstance, NS, name)
            .await
            .unwrap();
        let mut pool = CStorPoolInstance::try_from(object).unwrap();
        pool.status.phase = phase;
        pool.status.read_only = read_only;
        pool.status.capacity.total = Quantity::parse("10G").unwrap();
        self.client
            .update_status(&Object::CStorPoolInstance(pool))
            .await
            .unwrap();
    }

    async fn cvc(&self, name: &str) -> CStorVolumeConfig {
        let object = self
            .client
            .get(Kind::CStorVolumeConfig, NS, name)
            .await
            .unwrap();
        CStorVolumeConfig::try_from(object).unwrap()
    }

    async fn cv(&self, name: &str) -> CStorVolume {
        let object = self.client.get(Kind::CStorVolume, NS, name).await.unwrap();
        CStorVolume::try_from(object).unwrap()
    }

    async fn replicas(&self, volume: &str) -> Vec<CStorVolumeReplica> {
        let selector = format!("openebs.io/persistent-volume={volume}");
        self.client
            .list_typed(Kind::CStorVolumeReplica, Some(NS), Some(&selector))
            .await
            .unwrap()
    }

    async fn events(&self, name: &str) -> Vec<Event> {
        let cvc = self
            .client
            .get(Kind::CStorVolumeConfig, NS, name)
            .await
            .unwrap();
        self.client.events_about(&cvc).await.unwrap()
    }

    async fn bound(&self, name: &str) -> CStorVolumeConfig {
        eventually(
            "the CVC to be Bound with its placement in the spec",
            || async {
                let cvc = self.cvc(name).await;
                (cvc.status.phase == CStorVolumeConfigPhase::Bound
                    && !cvc.spec.policy.replica_pool_info.is_empty())
                .then_some(cvc)
            },
        )
        .await
    }

    /// Plays the data path: every replica of `volume` reports `phase`.
    async fn report_replicas(&self, volume: &str, phase: CStorVolumeReplicaPhase) {
        for mut replica in self.replicas(volume).await {
            replica.status.phase = phase;
            self.client
                .update_status(&Object::CStorVolumeReplica(replica))
                .await
                .unwrap();
        }
    }

    /// Plays the target: the volume is `phase` and trusts the replicas in `known`.
    async fn report_volume(
        &self,
        volume: &str,
        phase: CStorVolumePhase,
        known: &[&CStorVolumeReplica],
    ) {
        let mut cv = self.cv(volume).await;
        cv.status.phase = phase;
        cv.status.replica_details.known_replicas = known
            .iter()
            .map(|replica| (replica.spec.replica_id.clone(), "1".to_string()))
            .collect();
        self.client
            .update_status(&Object::CStorVolume(cv))
            .await
            .unwrap();
    }

    async fn set_pools(
        &self,
        volume: &str,
        pools: &[&str],
    ) -> Result<Object, tandem_client::ClientError> {
        let info: Vec<_> = pools.iter().map(|pool| json!({"poolName": pool})).collect();
        self.client
            .patch(
                Kind::CStorVolumeConfig,
                NS,
                volume,
                &json!({"spec": {"policy": {"replicaPoolInfo": info}}}),
            )
            .await
    }
}

#[tokio::test]
async fn a_pool_cluster_gets_one_named_pool_per_node_and_counts_them() {
    let cluster = cluster(&["n1", "n2", "n3"]).await;
    let pools = cluster.pool_cluster(&["n1", "n2", "n3"]).await;
    for pool in &pools {
        let suffix = pool.name().strip_prefix("cspc-stripe-pool-").unwrap();
        assert_eq!(suffix.len(), 4, "{}", pool.name());
        assert!(suffix
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
        assert_eq!(
            pool.metadata.label("kubernetes.io/hostname"),
            Some(pool.spec.host_name.as_str())
        );
        assert_eq!(pool.pool_cluster_name(), Some("cspc-stripe-pool"));
        assert_eq!(pool.spec.pool_config.ro_threshold_limit, Some(85));
    }
    cluster
        .report_pool(pools[0].name(), CStorPoolInstancePhase::Online, false)
        .await;
    cluster
        .report_pool(pools[1].name(), CStorPoolInstancePhase::Online, false)
        .await;
    eventually("the counts", || async {
        let object = cluster
            .client
            .get(Kind::CStorPoolCluster, NS, "cspc-stripe-pool")
            .await
            .unwrap();
        let cspc = CStorPoolCluster::try_from(object).unwrap();
        let status = &cspc.status;
        (status.desired_instances == 3
            && status.provisioned_instances == 3
            && status.healthy_instances == 2)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_silent_agent_leaves_its_pool_offline() {
    let cluster = cluster(&["n1", "n2"]).await;
    let pools = cluster.pool_cluster(&["n1", "n2"]).await;
    for pool in &pools {
        cluster
            .report_pool(pool.name(), CStorPoolInstancePhase::Online, false)
            .await;
    }
    cluster.alive.lock().unwrap().remove("n2");
    let offline = eventually("n2's pool to go OFFLINE", || async {
        let pools = cluster.pools().await;
        (pools[1].status.phase == CStorPoolInstancePhase::Offline).then_some(pools)
    })
    .await;
    assert_eq!(offline[0].status.phase, CStorPoolInstancePhase::Online);
    let object = Object::CStorPoolInstance(offline[1].clone());
    let events = cluster.client.events_about(&object).await.unwrap();
    assert!(
        events.iter().any(|event| event.reason == "PoolOffline"
            && event.event_type == EventType::Warning
            && event
                .message
                .contains("the agent on node n2 has not reported")),
        "{events:?}"
    );
}

#[tokio::test]
async fn provisioning_skips_offline_and_read_only_pools_and_says_when_too_few_are_left() {
    let cluster = cluster(&["n1", "n2", "n3", "n4"]).await;
    let pools = cluster.pool_cluster(&["n1", "n2", "n3", "n4"]).await;
    cluster
        .report_pool(pools[0].name(), CStorPoolInstancePhase::Online, false)
        .await;
    cluster
        .report_pool(pools[1].name(), CStorPoolInstancePhase::Online, true)
        .await;
    cluster
        .report_pool(pools[2].name(), CStorPoolInstancePhase::Offline, false)
        .await;
    cluster
        .report_pool(pools[3].name(), CStorPoolInstancePhase::Online, false)
        .await;

    cluster.apply(&cvc_yaml("pvc-two", 2)).await;
    let cvc = cluster.bound("pvc-two").await;
    let mut placed = cvc.status.pool_info.clone();
    placed.sort();
    let mut expected = vec![pools[0].name().to_string(), pools[3].name().to_string()];
    expected.sort();
    assert_eq!(placed, expected);
    let spec: Vec<&str> = cvc.desired_pool_names();
    assert_eq!(spec.len(), 2);
    let replicas = cluster.replicas("pvc-two").await;
    let mut names: Vec<String> = replicas.iter().map(|r| r.name().to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        expected
            .iter()
            .map(|pool| format!("pvc-two-{pool}"))
            .collect::<Vec<_>>()
    );
    for replica in &replicas {
        assert!(replica.spec.replica_id.parse::<u64>().is_ok());
        assert_eq!(
            replica.metadata.finalizers,
            ["cstorvolumereplica.openebs.io/finalizer"]
        );
    }
    let cv = cluster.cv("pvc-two").await;
    assert_eq!(
        (
            cv.spec.replication_factor,
            cv.spec.consistency_factor,
            cv.spec.desired_replication_factor
        ),
        (2, 2, 2)
    );
    assert!(cluster
        .events("pvc-two")
        .await
        .iter()
        .any(|event| event.reason == "Synced"
            && event.message == "cstorvolumeconfig created successfully"));

    cluster.apply(&cvc_yaml("pvc-three", 3)).await;
    let warning = eventually("a Provisioning warning", || async {
        cluster
            .events("pvc-three")
            .await
            .into_iter()
            .find(|event| event.reason == "Provisioning")
    })
    .await;
    assert_eq!(warning.event_type, EventType::Warning);
    assert!(
        warning.message.starts_with(
            "not enough pools are available of provided CSPC: \"cspc-stripe-pool\", usable pool count: 2 pending replica count: 3"
        ),
        "{}",
        warning.message
    );
    assert!(
        warning
            .message
            .contains(&format!("{} is read-only", pools[1].name())),
        "{}",
        warning.message
    );
    assert!(
        warning
            .message
            .contains(&format!("{} is OFFLINE", pools[2].name())),
        "{}",
        warning.message
    );
    assert_eq!(
        cluster.cvc("pvc-three").await.status.phase,
        CStorVolumeConfigPhase::Pending
    );
    assert!(
        cluster.replicas("pvc-three").await.is_empty(),
        "no partial placement"
    );
}

#[tokio::test]
async fn scaling_up_then_down_follows_cstor_and_waits_for_health() {
    let cluster = cluster(&["n1", "n2", "n3"]).await;
    let pools = cluster.pool_cluster(&["n1", "n2", "n3"]).await;
    for pool in &pools {
        cluster
            .report_pool(pool.name(), CStorPoolInstancePhase::Online, false)
            .await;
    }
    cluster.apply(&cvc_yaml("pvc-1", 2)).await;
    let cvc = cluster.bound("pvc-1").await;
    let first: Vec<String> = cvc.status.pool_info.clone();
    let third = pools
        .iter()
        .map(|pool| pool.name().to_string())
        .find(|pool| !first.contains(pool))
        .unwrap();
    cluster
        .report_replicas("pvc-1", CStorVolumeReplicaPhase::Healthy)
        .await;

    // Scale up: the new replica is created for reconstruction (Recreate), the volume may have 3.
    let mut three: Vec<&str> = first.iter().map(String::as_str).collect();
    three.push(&third);
    cluster.set_pools("pvc-1", &three).await.unwrap();
    let new_replica = eventually("the new replica", || async {
        cluster
            .replicas("pvc-1")
            .await
            .into_iter()
            .find(|replica| replica.name() == format!("pvc-1-{third}"))
    })
    .await;
    assert_eq!(new_replica.status.phase, CStorVolumeReplicaPhase::Recreate);
    let scaling = eventually("status.poolInfo to include the new pool", || async {
        let cvc = cluster.cvc("pvc-1").await;
        (cvc.status.pool_info.len() == 3).then_some(cvc)
    })
    .await;
    assert!(scaling
        .status
        .conditions
        .iter()
        .any(|c| c.condition_type == "ScalingVolumeReplicas"));
    assert_eq!(cluster.cv("pvc-1").await.spec.desired_replication_factor, 3);
    assert!(
        !cluster
            .events("pvc-1")
            .await
            .iter()
            .any(|e| e.message.starts_with("successfully scaled")),
        "no success before the new replica is Healthy"
    );
    // No other change while the new replica is not Healthy.
    let refused = cluster.set_pools("pvc-1", &three[1..]).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the last replica change is not finished"),
        "{refused}"
    );

    cluster
        .report_replicas("pvc-1", CStorVolumeReplicaPhase::Healthy)
        .await;
    eventually("the scale-up to finish", || async {
        let done = cluster.cvc("pvc-1").await.status.conditions.is_empty();
        let said = cluster
            .events("pvc-1")
            .await
            .iter()
            .any(|e| e.message == "successfully scaled volume replicas to 3");
        (done && said).then_some(())
    })
    .await;

    // Scale down: only while Healthy, and the replica goes once the target let go of it.
    let replicas = cluster.replicas("pvc-1").await;
    let all: Vec<&CStorVolumeReplica> = replicas.iter().collect();
    cluster
        .report_volume("pvc-1", CStorVolumePhase::Degraded, &all)
        .await;
    let refused = cluster.set_pools("pvc-1", &three[1..]).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("is allowed only while CStorVolume pvc-1 is Healthy"),
        "{refused}"
    );

    cluster
        .report_volume("pvc-1", CStorVolumePhase::Healthy, &all)
        .await;
    cluster.set_pools("pvc-1", &three[1..]).await.unwrap();
    let leaving = format!("pvc-1-{}", three[0]);
    eventually("the scale-down to wait for the target", || async {
        cluster
            .events("pvc-1")
            .await
            .iter()
            .any(|e| e.message == "Scaling down volume replicas from 3 to 2 is in progress")
            .then_some(())
    })
    .await;
    let cv = cluster.cv("pvc-1").await;
    assert_eq!(cv.spec.desired_replication_factor, 2);
    assert!(cluster
        .replicas("pvc-1")
        .await
        .iter()
        .all(|r| r.metadata.deletion_timestamp.is_empty()));

    // The target lets go: its status now trusts only the remaining two.
    let remaining: Vec<&CStorVolumeReplica> = all
        .iter()
        .copied()
        .filter(|replica| replica.name() != leaving)
        .collect();
    cluster
        .report_volume("pvc-1", CStorVolumePhase::Healthy, &remaining)
        .await;
    let marked = eventually("the replica to be marked for deletion", || async {
        cluster.replicas("pvc-1").await.into_iter().find(|replica| {
            replica.name() == leaving && !replica.metadata.deletion_timestamp.is_empty()
        })
    })
    .await;
    eventually("success and the new placement", || async {
        let cvc = cluster.cvc("pvc-1").await;
        let said = cluster
            .events("pvc-1")
            .await
            .iter()
            .any(|e| e.message == "successfully scaled volume replicas to 2");
        (said && cvc.status.pool_info.len() == 2 && cvc.status.conditions.is_empty()).then_some(())
    })
    .await;
    // The agent destroys the data and releases the finalizer; then the object is gone.
    let mut released = marked;
    released.metadata.finalizers.clear();
    cluster
        .client
        .update(&Object::CStorVolumeReplica(released))
        .await
        .unwrap();
    assert!(cluster
        .client
        .find(Kind::CStorVolumeReplica, NS, &leaving)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn pools_holding_replicas_cannot_be_removed_and_deleted_volumes_are_collected() {
    let cluster = cluster(&["n1", "n2"]).await;
    let pools = cluster.pool_cluster(&["n1", "n2"]).await;
    for pool in &pools {
        cluster
            .report_pool(pool.name(), CStorPoolInstancePhase::Online, false)
            .await;
    }
    cluster.apply(&cvc_yaml("pvc-1", 1)).await;
    let cvc = cluster.bound("pvc-1").await;
    let holder = cvc.status.pool_info[0].clone();
    let node = pools
        .iter()
        .find(|pool| pool.name() == holder)
        .unwrap()
        .spec
        .host_name
        .clone();
    let kept: Vec<&str> = ["n1", "n2"].into_iter().filter(|n| *n != node).collect();

    let mut cspc = CStorPoolCluster::try_from(
        cluster
            .client
            .get(Kind::CStorPoolCluster, NS, "cspc-stripe-pool")
            .await
            .unwrap(),
    )
    .unwrap();
    let edited = CStorPoolCluster::try_from(parse_yaml(&cspc_yaml(&kept)).unwrap()).unwrap();
    cspc.spec = edited.spec;
    let refused = cluster
        .client
        .update(&Object::CStorPoolCluster(cspc))
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!("invalid cspc specification: volume still exists on pool {holder}")
    );
    let refused = cluster
        .client
        .delete(Kind::CStorPoolCluster, NS, "cspc-stripe-pool")
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains(&format!("volume still exists on pool {holder}")),
        "{refused}"
    );

    // Deleting the CVC takes the replica (through its finalizer) and then the CV.
    cluster
        .client
        .delete(Kind::CStorVolumeConfig, NS, "pvc-1")
        .await
        .unwrap();
    let marked = eventually("the replica to be marked for deletion", || async {
        cluster
            .replicas("pvc-1")
            .await
            .into_iter()
            .find(|replica| !replica.metadata.deletion_timestamp.is_empty())
    })
    .await;
    let mut released = marked;
    released.metadata.finalizers.clear();
    cluster
        .client
        .update(&Object::CStorVolumeReplica(released))
        .await
        .unwrap();
    eventually("the volume to be collected", || async {
        cluster
            .client
            .find(Kind::CStorVolume, NS, "pvc-1")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}
