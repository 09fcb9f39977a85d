//! Mutual TLS on replica links, over real sockets and real files: a target writes and reads
//! through replica hosts that require cluster certificates; processes without one (plain TCP,
//! another CA, an expired certificate, no certificate, an admin's or the control plane's) cannot
//! open a session; a target refuses a host whose certificate names another node.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tandem_core::{
    Envelope, Generation, Message, ReplicaId, Seq, SessionId, TargetOptions, VolumeStatus,
};
use tandem_dataplane::replica::storage::geometry_for;
use tandem_dataplane::replica::HostOptions;
use tandem_dataplane::security::LinkSecurity;
use tandem_dataplane::target::ReplicaEndpoint;
use tandem_pki::rustls::pki_types::ServerName;
use tandem_pki::{Authority, Credential, Identity};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use common::*;

const DAY: Duration = Duration::from_secs(24 * 3600);
const DEADLINE: Duration = Duration::from_secs(20);

fn name(index: usize) -> String {
    format!("node{index}")
}

/// A node's certificate, as the agent's wiring issues them: its name as a DNS name.
fn node_credential(authority: &Authority, node: &str) -> Credential {
    authority
        .issue(&Identity::Node(node.into()), &[], &[node.to_string()], DAY)
        .unwrap()
}

fn mutual_tls(authority: &Authority, credential: &Credential) -> LinkSecurity {
    LinkSecurity::mutual_tls(authority.certificate(), credential).unwrap()
}

async fn tls_node(security: LinkSecurity) -> Node {
    node_with(HostOptions {
        security,
        ..HostOptions::default()
    })
    .await
}

/// Node 0 under mutual TLS with `options` (its security replaced), hosting replica 1, and its
/// host's address.
async fn bounded_node(authority: &Authority, options: HostOptions) -> (Node, SocketAddr) {
    let node = node_with(HostOptions {
        security: mutual_tls(authority, &node_credential(authority, &name(0))),
        ..options
    })
    .await;
    replica_on(&node, 1, true).await;
    let address = node.host.local_addr();
    (node, address)
}

fn endpoint(node: &Node, name: &str) -> ReplicaEndpoint {
    ReplicaEndpoint::new(node.host.local_addr(), name)
}

/// Connects over TLS as a client presenting `credential` (if any), trusting `ca`.
async fn tls_client(
    address: SocketAddr,
    ca: &str,
    credential: Option<&Credential>,
    server: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_client_from("127.0.0.1", address, ca, credential, server).await
}

/// [`tls_client`] from the loopback address `from` (each its own peer).
async fn tls_client_from(
    from: &str,
    address: SocketAddr,
    ca: &str,
    credential: Option<&Credential>,
    server: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = tandem_pki::client_config(ca, credential).unwrap();
    let stream = connect_from(from, address).await?;
    let name = ServerName::try_from(server.to_string()).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
}

async fn connect_from(from: &str, address: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((from.parse::<std::net::IpAddr>().unwrap(), 0).into())?;
    socket.connect(address).await
}

fn frame(number: u64, message: Message) -> BytesMut {
    let mut frame = BytesMut::new();
    tandem_wire::encode(
        &Envelope {
            session: SessionId::new(Generation(1), 1),
            number,
            message,
        },
        &mut frame,
    );
    frame
}

/// Plays a target on `stream`: says Hello to replica 1, then (if `write`) writes 4 KiB of 0xee
/// at offset 0 without waiting; the first frame the host answers, or `None` if it closes the
/// connection (or fails it) first.
async fn try_session(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    write: bool,
) -> Option<Envelope> {
    let mut frames = frame(
        1,
        Message::Hello {
            generation: Generation(1),
            replica: ReplicaId(1),
            geometry: geometry_for(SIZE, None).unwrap(),
        },
    );
    if write {
        frames.extend_from_slice(&frame(
            2,
            Message::Write {
                seq: Seq(1),
                offset: 0,
                data: Bytes::from(vec![0xee; 4096]),
                committed: Seq(0),
            },
        ));
    }
    // A refused peer may find the connection closed while writing: that is the answer too.
    let sent = async {
        stream.write_all(&frames).await?;
        stream.flush().await
    };
    if sent.await.is_err() {
        return None;
    }
    let mut buffer = BytesMut::new();
    let answer = async {
        loop {
            match tandem_wire::decode(&mut buffer) {
                Ok(Some(envelope)) => return Some(envelope),
                Ok(None) => {}
                Err(error) => panic!("the host sent a malformed frame: {error}"),
            }
            match stream.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, answer)
        .await
        .expect("the host answers or closes in time")
}

fn assert_untouched(node: &Node) {
    let status = node.host.status(ReplicaId(1)).expect("hosted");
    assert_eq!(status.target, None, "no session was opened");
    assert_eq!(file_bytes(&data_file(node), 0, 4096), vec![0; 4096]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_writes_and_reads_back_over_mutual_tls() {
    let authority = Authority::create("test cluster").unwrap();
    let nodes = [
        tls_node(mutual_tls(
            &authority,
            &node_credential(&authority, &name(0)),
        ))
        .await,
        tls_node(mutual_tls(
            &authority,
            &node_credential(&authority, &name(1)),
        ))
        .await,
    ];
    let mut initial = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        initial.push(replica_on(node, index as u64 + 1, true).await);
    }
    // The target runs in another node's agent, with that node's credentials.
    let security = mutual_tls(&authority, &node_credential(&authority, "node9"));
    let endpoints = vec![endpoint(&nodes[0], &name(0)), endpoint(&nodes[1], &name(1))];
    let store = Arc::new(Recorded::default());
    let handle = start_target(
        endpoints,
        &initial,
        store,
        (security, None),
        TargetOptions::default(),
    );
    eventually("the volume to be Healthy over TLS", || {
        handle.status().status == VolumeStatus::Healthy
    })
    .await;

    let data: Vec<u8> = (0..1 << 20).map(|index: u32| (index % 251) as u8).collect();
    handle
        .write(1 << 20, Bytes::from(data.clone()), false)
        .await
        .unwrap();
    handle.flush().await.unwrap();
    assert_eq!(handle.read(1 << 20, 1 << 20).await.unwrap(), data);
    for node in &nodes {
        assert_eq!(file_bytes(&data_file(node), 1 << 20, 1 << 20), data);
        let status = node.host.statuses();
        assert!(status.iter().all(|s| s.target == Some(Generation(1))));
    }
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_reaches_its_own_nodes_replicas_in_memory() {
    let authority = Authority::create("test cluster").unwrap();
    let credentials = [0, 1].map(|index| node_credential(&authority, &name(index)));
    let nodes = [
        tls_node(mutual_tls(&authority, &credentials[0])).await,
        tls_node(mutual_tls(&authority, &credentials[1])).await,
    ];
    let mut initial = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        initial.push(replica_on(node, index as u64 + 1, true).await);
    }
    // The target runs in node0's agent: node0's replica is in its own process, node1's is not.
    let (proxy, dialled) = counting_proxy(nodes[0].host.local_addr()).await;
    let endpoints = vec![
        ReplicaEndpoint::new(proxy, name(0)),
        endpoint(&nodes[1], &name(1)),
    ];
    let links = (
        mutual_tls(&authority, &credentials[0]),
        Some(nodes[0].host.local(name(0))),
    );
    let store = Arc::new(Recorded::default());
    let handle = start_target(endpoints, &initial, store, links, TargetOptions::default());
    eventually("the volume to be Healthy", || {
        handle.status().status == VolumeStatus::Healthy
    })
    .await;
    let data: Vec<u8> = (0..256 << 10)
        .map(|index: u32| (index % 253) as u8)
        .collect();
    handle
        .write(0, Bytes::from(data.clone()), true)
        .await
        .unwrap();
    assert_eq!(handle.read(0, 256 << 10).await.unwrap(), data);
    for node in &nodes {
        assert_eq!(file_bytes(&data_file(node), 0, 256 << 10), data);
    }
    assert_eq!(
        dialled.load(Ordering::SeqCst),
        0,
        "node0's replica was reached in memory, not at its address"
    );
    handle.stop().await;

    // Once the host has stopped, the way in is closed and a target is told so.
    let local = nodes[0].host.local(name(0));
    let [node0, _node1] = nodes;
    node0.host.shutdown().await;
    assert!(local.connect().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_without_a_cluster_certificate_cannot_open_a_session() {
    let authority = Authority::create("test cluster").unwrap();
    let ca = authority.certificate();
    let node = tls_node(mutual_tls(
        &authority,
        &node_credential(&authority, &name(0)),
    ))
    .await;
    replica_on(&node, 1, true).await;
    let address = node.host.local_addr();

    // Plain TCP speaking the wire format.
    let plain = TcpStream::connect(address).await.unwrap();
    assert_eq!(try_session(plain, true).await, None);
    assert_untouched(&node);

    // A certificate of another CA (the client trusts the cluster's, to get that far).
    let other = Authority::create("another cluster").unwrap();
    let foreign = node_credential(&other, &name(0));
    if let Ok(stream) = tls_client(address, ca, Some(&foreign), &name(0)).await {
        assert_eq!(try_session(stream, true).await, None);
    }
    assert_untouched(&node);

    // An expired certificate of the cluster's CA.
    let now = SystemTime::now();
    let expired = authority
        .issue_between(
            &Identity::Node(name(0)),
            &[],
            &[name(0)],
            now - 2 * DAY,
            now - DAY,
        )
        .unwrap();
    if let Ok(stream) = tls_client(address, ca, Some(&expired), &name(0)).await {
        assert_eq!(try_session(stream, true).await, None);
    }
    assert_untouched(&node);

    // No certificate at all.
    if let Ok(stream) = tls_client(address, ca, None, &name(0)).await {
        assert_eq!(try_session(stream, true).await, None);
    }
    assert_untouched(&node);

    // The same client with a node's certificate is let in: the refusals were the host's.
    let member = node_credential(&authority, "node9");
    let stream = tls_client(address, ca, Some(&member), &name(0))
        .await
        .unwrap();
    let answer = try_session(stream, false).await.expect("an answer");
    assert!(matches!(answer.message, Message::HelloAck(_)), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_control_plane_identities_are_refused_by_the_host() {
    let authority = Authority::create("test cluster").unwrap();
    let ca = authority.certificate();
    let node = tls_node(mutual_tls(
        &authority,
        &node_credential(&authority, &name(0)),
    ))
    .await;
    replica_on(&node, 1, true).await;
    let address = node.host.local_addr();
    for identity in [
        Identity::Admin("alice".into()),
        Identity::ControlPlane("control-plane".into()),
    ] {
        let credential = authority.issue(&identity, &[], &[], DAY).unwrap();
        if let Ok(stream) = tls_client(address, ca, Some(&credential), &name(0)).await {
            assert_eq!(try_session(stream, true).await, None, "{identity}");
        }
        assert_untouched(&node);
    }
}

/// Forwards connections to `to`, counting them.
async fn counting_proxy(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (address, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_refuses_a_host_presenting_another_nodes_certificate() {
    let authority = Authority::create("test cluster").unwrap();
    let node0 = node_credential(&authority, &name(0));
    let nodes = [
        tls_node(mutual_tls(&authority, &node0)).await,
        tls_node(mutual_tls(
            &authority,
            &node_credential(&authority, &name(1)),
        ))
        .await,
        // node2's replica host presents node0's certificate.
        tls_node(mutual_tls(&authority, &node0)).await,
    ];
    let mut initial = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        initial.push(replica_on(node, index as u64 + 1, true).await);
    }
    let (impostor, dialled) = counting_proxy(nodes[2].host.local_addr()).await;
    let security = mutual_tls(&authority, &node_credential(&authority, "node9"));
    let endpoints = vec![
        endpoint(&nodes[0], &name(0)),
        endpoint(&nodes[1], &name(1)),
        ReplicaEndpoint::new(impostor, name(2)),
    ];
    let store = Arc::new(Recorded::default());
    let handle = start_target(
        endpoints,
        &initial,
        store,
        (security, None),
        TargetOptions::default(),
    );
    eventually("the target to dial node2 again after a refusal", || {
        dialled.load(Ordering::SeqCst) >= 2
    })
    .await;
    eventually("the volume to serve from node0 and node1", || {
        handle.status().status == VolumeStatus::Degraded
    })
    .await;
    let data = Bytes::from(vec![0x77; 4096]);
    handle.write(0, data.clone(), true).await.unwrap();
    assert_eq!(handle.read(0, 4096).await.unwrap(), data);
    assert_eq!(file_bytes(&data_file(&nodes[0]), 0, 4096), data);
    // No session on node2, and the write did not land there.
    let status = nodes[2].host.status(ReplicaId(3)).expect("hosted");
    assert_eq!(status.target, None);
    assert_eq!(file_bytes(&data_file(&nodes[2]), 0, 4096), vec![0; 4096]);

    // Expecting the node the certificate names, the same host is let in and resynced.
    handle
        .set_endpoint(ReplicaId(3), Some(ReplicaEndpoint::new(impostor, name(0))))
        .await;
    eventually("the volume to be Healthy", || {
        handle.status().status == VolumeStatus::Healthy
    })
    .await;
    assert_eq!(file_bytes(&data_file(&nodes[2]), 0, 4096), data);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_hold_up_no_handshake_and_are_closed_in_time() {
    let authority = Authority::create("test cluster").unwrap();
    let (_node, address) = bounded_node(
        &authority,
        HostOptions {
            handshake_timeout: Duration::from_millis(500),
            ..HostOptions::default()
        },
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(address).await.unwrap());
    }
    let member = node_credential(&authority, "node9");
    let stream = tls_client(address, authority.certificate(), Some(&member), &name(0))
        .await
        .unwrap();
    let answer = try_session(stream, false).await.expect("an answer");
    assert!(matches!(answer.message, Message::HelloAck(_)), "{answer:?}");
    for mut stream in silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(DEADLINE, stream.read(&mut byte))
            .await
            .expect("the host closes a silent peer in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_limit_are_closed_at_once() {
    let authority = Authority::create("test cluster").unwrap();
    let ca = authority.certificate();
    let (_node, address) = bounded_node(
        &authority,
        HostOptions {
            handshakes_max: 1,
            handshake_timeout: Duration::from_secs(60),
            ..HostOptions::default()
        },
    )
    .await;
    let member = node_credential(&authority, "node9");

    // A silent peer takes the only handshake slot (connections are accepted in order).
    let silent = TcpStream::connect(address).await.unwrap();
    if let Ok(stream) = tls_client(address, ca, Some(&member), &name(0)).await {
        assert_eq!(try_session(stream, false).await, None);
    }
    // Once it leaves, a node is let in again.
    drop(silent);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(stream) = tls_client(address, ca, Some(&member), &name(0)).await {
            if let Some(answer) = try_session(stream, false).await {
                assert!(matches!(answer.message, Message::HelloAck(_)), "{answer:?}");
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the handshake slot to be freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_handshake() {
    let authority = Authority::create("test cluster").unwrap();
    let ca = authority.certificate();
    let (_node, address) = bounded_node(
        &authority,
        HostOptions {
            handshakes_per_peer: 2,
            handshake_timeout: Duration::from_secs(60),
            ..HostOptions::default()
        },
    )
    .await;
    let member = node_credential(&authority, "node9");

    // Two silent connections from 127.0.0.2 take its share; a third from there is closed...
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(connect_from("127.0.0.2", address).await.unwrap());
    }
    if let Ok(stream) = tls_client_from("127.0.0.2", address, ca, Some(&member), &name(0)).await {
        assert_eq!(try_session(stream, false).await, None);
    }
    // ... while a node at another address is let in.
    let stream = tls_client(address, ca, Some(&member), &name(0))
        .await
        .unwrap();
    let answer = try_session(stream, false).await.expect("an answer");
    assert!(matches!(answer.message, Message::HelloAck(_)), "{answer:?}");
    drop(silent);
}
