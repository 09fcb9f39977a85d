//! The API over TLS on a real listener: holders of the cluster CA's certificates get in and are
//! named; a client without a certificate is answered 401; another CA's certificate, an expired
//! one, or a client that never finishes its handshake gets a closed connection; and a flood of
//! silent connections beyond the limit is closed at once without stopping the others.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tandem_client::Credentials;
use tandem_control_plane::{router, Api};
use tandem_https::{Limits, Peer, TlsListener};
use tandem_objects::{Kind, Object, Quantity};
use tandem_pki::{
    client_config, server_config, Authority, ClientCertificates, Credential, Identity,
};
use tandem_store::RedbStore;
use tokio::io::AsyncReadExt;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const DAY: Duration = Duration::from_secs(24 * 3600);
const PATH: &str = "/apis/cstor.openebs.io/v1/namespaces/openebs/cstorpoolinstances";

struct Server {
    base: String,
    ca: Authority,
    _dir: tempfile::TempDir,
}

async fn server(limits: Limits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
    let ca = Authority::create("test").unwrap();
    let credential = ca
        .issue(&Identity::ControlPlane("cp1".into()), &[LOOPBACK], &[], DAY)
        .unwrap();
    let config =
        server_config(ca.certificate(), &credential, ClientCertificates::Optional).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = TlsListener::new(listener, Arc::new(config), limits).unwrap();
    let base = format!("https://{}", listener_address(&listener));
    let api = Api::new(store, Duration::from_secs(10));
    tokio::spawn(async move {
        axum::serve(
            listener,
            router(api).into_make_service_with_connect_info::<Peer>(),
        )
        .await
        .unwrap();
    });
    Server {
        base,
        ca,
        _dir: dir,
    }
}

fn listener_address(listener: &TlsListener) -> std::net::SocketAddr {
    axum::serve::Listener::local_addr(listener).unwrap().address
}

fn client(ca: &str, credential: Option<&Credential>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(client_config(ca, credential).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> Result<(StatusCode, Value), String> {
    let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn holders_of_the_clusters_certificates_get_in_and_others_do_not() {
    let server = server(Limits::default()).await;
    let url = format!("{}{PATH}", server.base);
    let ca = server.ca.certificate();

    for identity in [
        Identity::Admin("admin".into()),
        Identity::Node("node1".into()),
    ] {
        let credential = server.ca.issue(&identity, &[], &[], DAY).unwrap();
        let (status, list) = get(&client(ca, Some(&credential)), &url).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{identity}: {list}");
        assert_eq!(list["kind"], "CStorPoolInstanceList");
    }

    // Tandem's own client, as the CLI, the agents and the controllers use it.
    let admin = server
        .ca
        .issue(&Identity::Admin("admin".into()), &[], &[], DAY)
        .unwrap();
    let credentials = Credentials::new(ca, &admin).unwrap();
    let tandem = tandem_client::Client::with_credentials(&server.base, Some(&credentials)).unwrap();
    let pools = tandem
        .list(Kind::CStorPoolInstance, Some("openebs"), None)
        .await
        .unwrap();
    assert!(pools.items.is_empty());
    let without = tandem_client::Client::new(&server.base).err().unwrap();
    assert!(without.to_string().contains("cluster's CA"), "{without}");

    let (status, body) = get(&client(ca, None), &url).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Unauthorized");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no client certificate")),
        "{body}"
    );

    let now = std::time::SystemTime::now();
    let expired = server
        .ca
        .issue_between(
            &Identity::Admin("admin".into()),
            &[],
            &[],
            now - 2 * DAY,
            now - DAY,
        )
        .unwrap();
    let refused = get(&client(ca, Some(&expired)), &url).await;
    assert!(refused.is_err(), "an expired certificate: {refused:?}");

    let other = Authority::create("other").unwrap();
    let foreign = other
        .issue(&Identity::Admin("admin".into()), &[], &[], DAY)
        .unwrap();
    let refused = get(&client(ca, Some(&foreign)), &url).await;
    assert!(refused.is_err(), "another CA's certificate: {refused:?}");

    // A client that trusts another CA does not talk to this server at all.
    let refused = get(&client(other.certificate(), Some(&admin)), &url).await;
    assert!(refused.is_err(), "a server of another CA: {refused:?}");

    // Plain HTTP to the TLS port is no request at all.
    let plain = reqwest::Client::new()
        .get(url.replace("https://", "http://"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| !r.status().is_success()),
        "{plain:?}"
    );
}

/// Reads from a connection until the server closes it; how long that took.
async fn until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept a silent connection open past {within:?}"),
        }
    }
}

#[tokio::test]
async fn silent_clients_are_dropped_in_time_and_beyond_the_limit_at_once() {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(500),
        handshakes_max: 2,
        ..Limits::default()
    };
    let server = server(limits).await;
    let address = server.base.trim_start_matches("https://").to_string();
    let mut silent = Vec::new();
    for _ in 0..limits.handshakes_max {
        silent.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    // Both handshake slots are held: the next connection is closed without waiting.
    let mut beyond = tokio::net::TcpStream::connect(&address).await.unwrap();
    let closed = until_closed(&mut beyond, Duration::from_secs(5)).await;
    assert!(
        closed < limits.handshake_timeout,
        "closed after {closed:?}, not at once"
    );
    for stream in &mut silent {
        let closed = until_closed(stream, Duration::from_secs(5)).await;
        assert!(closed <= Duration::from_secs(2), "{closed:?}");
    }
    // The slots are free again.
    let admin = server
        .ca
        .issue(&Identity::Admin("admin".into()), &[], &[], DAY)
        .unwrap();
    let (status, _) = get(
        &client(server.ca.certificate(), Some(&admin)),
        &format!("{}{PATH}", server.base),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// A TCP connection to `server` from the loopback address `from`.
async fn connect_from(from: [u8; 4], server: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    socket.connect(server.parse().unwrap()).await.unwrap()
}

/// One address cannot take every handshake slot or hold more connections than its share: past
/// its limits its connections are closed at once, while another address is served.
#[tokio::test]
async fn one_peer_cannot_take_every_slot() {
    let limits = Limits {
        handshakes_per_peer: 2,
        ..Limits::default()
    };
    let server = server(limits).await;
    let address = server.base.trim_start_matches("https://").to_string();
    let mut silent = Vec::new();
    for _ in 0..limits.handshakes_per_peer {
        silent.push(connect_from([127, 0, 0, 2], &address).await);
    }
    let mut beyond = connect_from([127, 0, 0, 2], &address).await;
    let closed = until_closed(&mut beyond, Duration::from_secs(5)).await;
    assert!(
        closed < Duration::from_secs(1),
        "closed after {closed:?}, not at once"
    );

    // Another address is served meanwhile.
    let admin = server
        .ca
        .issue(&Identity::Admin("admin".into()), &[], &[], DAY)
        .unwrap();
    let url = format!("{}{PATH}", server.base);
    let (status, _) = get(&client(server.ca.certificate(), Some(&admin)), &url)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// An address holding its share of open connections gets no more; another still does.
#[tokio::test]
async fn one_peer_cannot_hold_more_connections_than_its_share() {
    let limits = Limits {
        connections_per_peer: 2,
        ..Limits::default()
    };
    let server = server(limits).await;
    let address = server.base.trim_start_matches("https://").to_string();
    let admin = server
        .ca
        .issue(&Identity::Admin("admin".into()), &[], &[], DAY)
        .unwrap();
    let url = format!("{}{PATH}", server.base);
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .use_preconfigured_tls(client_config(server.ca.certificate(), Some(&admin)).unwrap())
            .local_address(IpAddr::from(ip))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    // Two clients whose connections stay open (kept alive) after a request each.
    let held = [from([127, 0, 0, 3]), from([127, 0, 0, 3])];
    for client in &held {
        let (status, _) = get(client, &url).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let mut third = connect_from([127, 0, 0, 3], &address).await;
    let closed = until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(
        closed < Duration::from_secs(1),
        "closed after {closed:?}, not at once"
    );
    let (status, _) = get(&from([127, 0, 0, 4]), &url).await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// A node's agent may write what its node owns and nothing else; each refusal is a 403 that
/// names the node and the object, and changes nothing. Administrators may do anything.
#[tokio::test]
async fn a_node_writes_only_what_its_node_owns() {
    let server = server(Limits::default()).await;
    let ca = server.ca.certificate();
    let tandem = |identity: Identity| {
        let credential = server.ca.issue(&identity, &[], &[], DAY).unwrap();
        let credentials = Credentials::new(ca, &credential).unwrap();
        tandem_client::Client::with_credentials(&server.base, Some(&credentials)).unwrap()
    };
    let admin = tandem(Identity::Admin("admin".into()));
    let node1 = tandem(Identity::Node("node1".into()));
    let node2 = tandem(Identity::Node("node2".into()));
    let object = |yaml: &str| tandem_objects::parse_yaml(yaml).unwrap();
    let forbidden = |result: Result<Object, tandem_client::ClientError>, words: &[&str]| {
        let error = result.expect_err("a write beyond the node's own");
        let text = error.to_string();
        assert!(text.contains("forbidden"), "{text}");
        for word in words {
            assert!(text.contains(word), "{word:?} not in {text}");
        }
    };

    // Pools on node1 and node2, a replica on each, a volume whose target runs on node1.
    for (pool, node) in [("pool-1", "node1"), ("pool-2", "node2")] {
        admin
            .create(&object(&format!(
                "apiVersion: cstor.openebs.io/v1\nkind: CStorPoolInstance\nmetadata:\n  name: \
                 {pool}\n  namespace: openebs\n  labels:\n    kubernetes.io/hostname: {node}\n\
                 spec:\n  hostName: {node}\n"
            )))
            .await
            .unwrap();
        admin
            .create(&object(&format!(
                "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeReplica\nmetadata:\n  name: \
                 pvc-1-{pool}\n  namespace: openebs\n  labels:\n    \
                 openebs.io/persistent-volume: pvc-1\n  annotations:\n    \
                 cstorpoolinstance.openebs.io/hostname: {node}\nspec:\n  capacity: 5Gi\n"
            )))
            .await
            .unwrap();
    }
    admin
        .create(&object(
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolume\nmetadata:\n  name: pvc-1\n  \
             namespace: openebs\n  annotations:\n    tandem.io/target-node: node1\nspec:\n  \
             capacity: 5Gi\n  replicationFactor: 2\n  consistencyFactor: 2\n",
        ))
        .await
        .unwrap();
    let get = async |kind: Kind, name: &str| admin.get(kind, "openebs", name).await.unwrap();

    // Its own: the status of its pool and replica, the replica's id, the volume's membership,
    // its heartbeat, its events.
    let Object::CStorPoolInstance(mut pool) = get(Kind::CStorPoolInstance, "pool-1").await else {
        panic!("a pool")
    };
    pool.status.read_only = true;
    node1
        .update_status(&Object::CStorPoolInstance(pool))
        .await
        .unwrap();
    let Object::CStorVolumeReplica(mut replica) =
        get(Kind::CStorVolumeReplica, "pvc-1-pool-1").await
    else {
        panic!("a replica")
    };
    replica.spec.replica_id = "42".into();
    let replica = node1
        .update(&Object::CStorVolumeReplica(replica))
        .await
        .unwrap();
    let Object::CStorVolume(mut volume) = get(Kind::CStorVolume, "pvc-1").await else {
        panic!("a volume")
    };
    volume.spec.replication_factor = 3;
    volume
        .spec
        .replica_details
        .known_replicas
        .insert("42".into(), "1".into());
    let volume = node1.update(&Object::CStorVolume(volume)).await.unwrap();
    let beat = |node: &str| tandem_client::NodeHeartbeat {
        node: node.into(),
        ..Default::default()
    };
    node1.heartbeat(&beat("node1")).await.unwrap();
    let event = |host: &str| {
        object(&format!(
            "apiVersion: v1\nkind: Event\nmetadata:\n  name: pvc-1.{host}\n  namespace: \
             openebs\ninvolvedObject:\n  kind: CStorVolume\n  name: pvc-1\nreason: Test\n\
             source:\n  component: agent\n  host: {host}\n"
        ))
    };
    node1.create(&event("node1")).await.unwrap();

    // As the volume's target: the volume's status and every replica's, wherever it is.
    let volume_now = get(Kind::CStorVolume, "pvc-1").await;
    node1.update_status(&volume_now).await.unwrap();
    let replica_elsewhere = get(Kind::CStorVolumeReplica, "pvc-1-pool-2").await;
    node1.update_status(&replica_elsewhere).await.unwrap();
    forbidden(
        node2
            .update_status(&get(Kind::CStorVolume, "pvc-1").await)
            .await,
        &["node node2", "its target is to run on node node1"],
    );

    // Not its own, or not its to write.
    let Object::CStorPoolInstance(mut other_pool) = get(Kind::CStorPoolInstance, "pool-2").await
    else {
        panic!("a pool")
    };
    other_pool.status.read_only = true;
    forbidden(
        node1
            .update_status(&Object::CStorPoolInstance(other_pool))
            .await,
        &[
            "cstorpoolinstances.cstor.openebs.io \"pool-2\"",
            "node node1",
            "it is on node node2",
        ],
    );
    let Object::CStorVolumeReplica(mut other_replica) =
        get(Kind::CStorVolumeReplica, "pvc-1-pool-2").await
    else {
        panic!("a replica")
    };
    other_replica.spec.replica_id = "43".into();
    forbidden(
        node1
            .update(&Object::CStorVolumeReplica(other_replica))
            .await,
        &["pvc-1-pool-2", "its pool is on node node2"],
    );
    let Object::CStorVolumeReplica(mut own) = replica else {
        panic!("a replica")
    };
    own.spec.capacity = Quantity::parse("500Gi").unwrap();
    forbidden(
        node1.update(&Object::CStorVolumeReplica(own)).await,
        &["spec.replicaid"],
    );
    let Object::CStorVolume(mut volume) = volume else {
        panic!("a volume")
    };
    volume.spec.capacity = Quantity::parse("500Gi").unwrap();
    forbidden(
        node1.update(&Object::CStorVolume(volume)).await,
        &["cstorvolumes.cstor.openebs.io \"pvc-1\"", "membership"],
    );
    forbidden(
        node1
            .create(&object(
                "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\nmetadata:\n  name: \
                 pvc-2\n  namespace: openebs\nspec:\n  capacity:\n    storage: 1Gi\n",
            ))
            .await,
        &["create"],
    );
    forbidden(node1.create(&event("node2")).await, &["node2"]);
    forbidden(
        node1
            .delete(Kind::CStorVolumeReplica, "openebs", "pvc-1-pool-1")
            .await,
        &["delete"],
    );
    let refused = node1.heartbeat(&beat("node2")).await.unwrap_err();
    assert!(refused.to_string().contains("node2"), "{refused}");

    // Nothing of it landed.
    let Object::CStorVolumeReplica(replica) = get(Kind::CStorVolumeReplica, "pvc-1-pool-1").await
    else {
        panic!("a replica")
    };
    assert_eq!(replica.spec.capacity.to_string(), "5Gi");
    assert!(replica.metadata.deletion_timestamp.is_empty());
    let Object::CStorVolume(volume) = get(Kind::CStorVolume, "pvc-1").await else {
        panic!("a volume")
    };
    assert_eq!(volume.spec.capacity.to_string(), "5Gi");
    assert_eq!(volume.spec.replication_factor, 3);
    let nodes: Vec<String> = admin
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|status| status.node)
        .collect();
    assert_eq!(nodes, ["node1"]);
    assert!(admin
        .get(Kind::CStorVolumeConfig, "openebs", "pvc-2")
        .await
        .is_err());
}
