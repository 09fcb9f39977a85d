//! [`tandem_nbd::RemoteDevice`]: an export of one server served as an export of another (the
//! agent's forwarder), checked with this crate's client (structured replies, block status,
//! write zeroes) and real clients (qemu-io, nbdinfo --map, nbdcopy), a lost upstream, and a
//! server that sends malformed reply chunks.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tandem_block::{BlockDevice, IoError};
use tandem_nbd::{proto, Client, ClientOptions, RemoteDevice, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const MIB: u64 = 1 << 20;

/// A server whose exports are [`RemoteDevice`]s.
struct Forwarder {
    server: Arc<Server<RemoteDevice>>,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Forwarder {
    async fn start() -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = Arc::new(Server::new(ServerConfig::default()));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(Arc::clone(&server).serve(listener, async move {
            let _ = stopped.await;
        }));
        Forwarder {
            server,
            addr,
            _stop: stop,
        }
    }

    async fn forward(&self, name: &str, upstream: &str) -> Arc<RemoteDevice> {
        let device = Arc::new(
            RemoteDevice::connect(upstream, &ClientOptions::default())
                .await
                .expect("connect upstream"),
        );
        self.server
            .add_export(name, Arc::clone(&device))
            .expect("add export");
        device
    }

    fn uri(&self, name: &str) -> String {
        format!("nbd://{}/{}", self.addr, name)
    }
}

fn structured() -> ClientOptions {
    ClientOptions {
        structured_replies: true,
        ..ClientOptions::default()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_client_reads_holes_and_data_and_asks_for_block_status() {
    let t = TestServer::start().await;
    let path = t.path("map");
    sparse_pattern_file(&path, 16 * MIB, &[(4 * MIB, MIB as usize, 1)]);
    t.add(
        "map",
        Probe::new(tandem_block::FileDevice::open(&path, false).expect("open")),
    );
    let client = Client::connect_with(&t.uri("map"), &structured())
        .await
        .expect("connect");
    assert!(client.structured_replies() && client.can_block_status());
    assert!(client.can_write_zeroes());
    // A hole comes back as a hole chunk, data as a data chunk; a read across both is whole.
    let read = client.read(4 * MIB - 4096, 8192).await.expect("read");
    assert_eq!(&read[..4096], &[0u8; 4096][..]);
    assert_eq!(&read[4096..], &pattern(1, 4096)[..]);
    assert_eq!(
        client.read(0, 4096).await.expect("read a hole")[..],
        [0u8; 4096][..]
    );
    let extents = client
        .block_status(0, (8 * MIB) as u32)
        .await
        .expect("status");
    assert_eq!(
        extents,
        vec![
            ((4 * MIB) as u32, proto::STATE_HOLE | proto::STATE_ZERO),
            (MIB as u32, 0),
            ((3 * MIB) as u32, proto::STATE_HOLE | proto::STATE_ZERO)
        ]
    );
    client
        .write_zeroes(4 * MIB, 4096, true, false)
        .await
        .expect("write zeroes");
    assert_eq!(
        client.read(4 * MIB, 4096).await.expect("read")[..],
        [0u8; 4096][..]
    );
    // Errors still come back per request, as error chunks.
    let error = client.read(16 * MIB - 512, 1024).await.unwrap_err();
    assert!(error.to_string().contains("beyond the end"), "{error}");
    client.disconnect().await.expect("disconnect");
    // A plain client is unchanged: simple replies only.
    let plain = Client::connect(&t.uri("map")).await.expect("connect");
    assert!(!plain.structured_replies() && !plain.can_block_status());
    assert!(plain.block_status(0, 4096).await.is_err());
    assert_eq!(
        &plain.read(4 * MIB + 4096, 4096).await.expect("read")[..],
        &pattern(1, 8192)[4096..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_export_looks_and_behaves_like_the_upstream_one() {
    let t = TestServer::start().await;
    let path = t.path("disk");
    sparse_pattern_file(&path, 16 * MIB, &[(4 * MIB, MIB as usize, 7)]);
    t.add(
        "disk",
        Probe::new(tandem_block::FileDevice::open(&path, false).expect("open")),
    );
    let f = Forwarder::start().await;
    let device = f.forward("disk", &t.uri("disk")).await;
    let info = device.info();
    assert_eq!(info.size, 16 * MIB);
    assert!(info.can_flush && info.can_fua && info.can_trim && info.can_write_zeroes);
    assert!(info.can_block_status && info.can_multi_conn);

    // Many requests in flight on one upstream connection, matched by cookie.
    let client = Arc::new(Client::connect(&f.uri("disk")).await.expect("connect"));
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..64u64 {
        let client = Arc::clone(&client);
        writes.spawn(async move {
            let data = pattern(i as u8, 4096);
            client.write(8 * MIB + i * 4096, &data, false).await
        });
    }
    while let Some(done) = writes.join_next().await {
        done.expect("task").expect("write through the forwarder");
    }
    client.flush().await.expect("flush");
    let direct = Client::connect(&t.uri("disk")).await.expect("connect");
    for i in 0..64u64 {
        let read = direct.read(8 * MIB + i * 4096, 4096).await.expect("read");
        assert_eq!(&read[..], &pattern(i as u8, 4096)[..], "block {i}");
    }

    if ensure_tool("nbdinfo", "libnbd-bin") {
        let direct_map = run_ok("nbdinfo", &["--map", &t.uri("disk")]).await;
        let forwarded_map = run_ok("nbdinfo", &["--map", &f.uri("disk")]).await;
        assert_eq!(forwarded_map, direct_map);
        assert!(forwarded_map.contains("hole,zero"), "{forwarded_map}");
    }
    if ensure_tool("qemu-io", "qemu-utils") {
        let uri = f.uri("disk");
        run_ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0x5a 1M 64k",
                "-c",
                "read -P 0x5a 1M 64k",
                &uri,
            ],
        )
        .await;
        run_ok(
            "qemu-io",
            &["-f", "raw", "-c", "read -P 0x5a 1M 64k", &t.uri("disk")],
        )
        .await;
        run_ok(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -z 1M 4k",
                "-c",
                "read -P 0 1M 4k",
                &uri,
            ],
        )
        .await;
    }
    if ensure_tool("nbdcopy", "libnbd-bin") {
        let copy = t.dir.path().join("copy.img");
        run_ok("nbdcopy", &[&f.uri("disk"), copy.to_str().unwrap()]).await;
        assert_eq!(
            std::fs::read(&copy).expect("copy"),
            std::fs::read(&path).expect("original")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_upstream_goes_away_requests_in_flight_are_dropped_with_the_connection() {
    let t = TestServer::start().await;
    let probe = t.add_file("disk", 4 * MIB);
    let f = Forwarder::start().await;
    let device = f.forward("disk", &t.uri("disk")).await;
    device
        .write(0, pattern(3, 4096).into(), true)
        .await
        .expect("write");
    assert!(!device.is_lost());
    // A read through the forwarder is in flight (held upstream) when the upstream goes.
    probe
        .hold_reads_at
        .store(MIB, std::sync::atomic::Ordering::SeqCst);
    let client = Arc::new(Client::connect(&f.uri("disk")).await.expect("connect"));
    let in_flight = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.read(MIB, 4096).await }
    });
    wait_until("the read to reach the upstream device", || {
        probe
            .reads_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1
    })
    .await;
    t.server.abort_export_if("disk", |_| true);
    tokio::time::timeout(DEADLINE, device.lost())
        .await
        .expect("the device notices that the upstream closed");
    assert!(device.is_lost());
    assert!(
        device.lost_reason().contains("closed"),
        "{}",
        device.lost_reason()
    );
    // The owner aborts the forwarded export: the client's connection closes and its request
    // is left unanswered (a reconnecting client sends it again), not failed with an error.
    f.server
        .abort_export_if("disk", |d| Arc::ptr_eq(d, &device));
    let error = tokio::time::timeout(Duration::from_secs(3), in_flight)
        .await
        .expect("the connection closes well within the device's hold")
        .expect("task")
        .unwrap_err();
    assert!(error.is_connection_lost(), "{error}");
    assert_eq!(error.errno(), None, "{error}");
    assert!(f.server.export("disk").is_none());
    // Without an owner aborting it, a lost device answers once its hold is over.
    let started = tokio::time::Instant::now();
    assert_eq!(device.read(0, 4096).await, Err(IoError::Shutdown));
    assert!(started.elapsed() >= tandem_nbd::DEFAULT_LOST_HOLD);
    probe.release.notify_waiters();
}

/// A server that negotiates structured replies, then answers the first request with `reply`.
async fn misbehaving_server(reply: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut out = bytes::BytesMut::new();
        proto::encode_greeting(&mut out);
        stream.write_all(&out).await.expect("greeting");
        let mut flags = [0u8; 4];
        stream.read_exact(&mut flags).await.expect("flags");
        loop {
            let mut header = [0u8; 16];
            stream.read_exact(&mut header).await.expect("option");
            let header = proto::decode_option_header(&header).expect("option header");
            let mut data = vec![0u8; header.length as usize];
            stream.read_exact(&mut data).await.expect("option data");
            let mut out = bytes::BytesMut::new();
            match header.option {
                proto::OPT_SET_META_CONTEXT => {
                    proto::encode_rep_meta_context(&mut out, header.option, 1, "base:allocation");
                    proto::encode_option_reply(&mut out, header.option, proto::REP_ACK, &[]);
                }
                proto::OPT_GO => {
                    let flags = proto::FLAG_HAS_FLAGS | proto::FLAG_SEND_FLUSH;
                    let info = proto::Info::Export { size: MIB, flags };
                    proto::encode_rep_info(&mut out, header.option, &info);
                    proto::encode_option_reply(&mut out, header.option, proto::REP_ACK, &[]);
                    stream.write_all(&out).await.expect("reply");
                    break;
                }
                option => proto::encode_option_reply(&mut out, option, proto::REP_ACK, &[]),
            }
            stream.write_all(&out).await.expect("reply");
        }
        let mut request = [0u8; proto::REQUEST_HEADER_LEN];
        stream.read_exact(&mut request).await.expect("request");
        let _ = stream.write_all(&reply).await;
        // Hold the connection open: the client must end it.
        let _ = stream.read(&mut [0u8; 1]).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reply_chunks_end_the_connection_without_a_panic() {
    let chunk = |flags: u16, kind: u16, handle: u64, payload: &[u8]| {
        let mut out = bytes::BytesMut::new();
        proto::encode_chunk_header(&mut out, flags, kind, handle, payload.len() as u32);
        out.extend_from_slice(payload);
        out.to_vec()
    };
    let done = proto::REPLY_FLAG_DONE;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "not in flight",
            chunk(done, proto::REPLY_TYPE_NONE, 99, &[]),
        ),
        (
            "outside its request",
            chunk(
                done,
                proto::REPLY_TYPE_OFFSET_DATA,
                1,
                &[0, 0, 0, 0, 0, 1, 0, 0, 1],
            ),
        ),
        (
            "malformed",
            chunk(done, proto::REPLY_TYPE_OFFSET_HOLE, 1, &[0; 5]),
        ),
        (
            "does not fit",
            chunk(done, proto::REPLY_TYPE_BLOCK_STATUS, 1, &[0; 12]),
        ),
        ("exceeds", {
            let mut out = bytes::BytesMut::new();
            proto::encode_chunk_header(&mut out, done, 1, 1, u32::MAX);
            out.to_vec()
        }),
        ("bad reply magic", vec![0xff; 20]),
    ];
    for (expected, reply) in cases {
        let addr = misbehaving_server(reply).await;
        let client = Client::connect_with(&format!("nbd://{addr}/x"), &structured())
            .await
            .expect("connect");
        let error = tokio::time::timeout(Duration::from_secs(10), client.read(0, 512))
            .await
            .expect("an answer, not a hang")
            .unwrap_err();
        assert!(error.is_connection_lost(), "{expected}: {error}");
        assert!(error.to_string().contains(expected), "{expected}: {error}");
        tokio::time::timeout(Duration::from_secs(10), client.lost())
            .await
            .expect("the connection is marked lost");
    }
}
