//! [`tandem_nbd::Client`] against the crate's own [`tandem_nbd::Server`] with file-backed
//! exports, against hand-written misbehaving servers (lost connections, unknown cookies, a
//! server without `NBD_OPT_GO`), and cross-checked with qemu-io: what the client writes,
//! qemu-io reads back with `-P`, and the other way round.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use tandem_nbd::client::{ClientError, Op};
use tandem_nbd::proto;
use tandem_nbd::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 253) as u8))
        .collect()
}

fn file_bytes(t: &TestServer, name: &str, offset: u64, len: usize) -> Vec<u8> {
    let data = std::fs::read(t.path(name)).expect("read the export's file");
    data[offset as usize..offset as usize + len].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_writes_flushes_and_trims_reach_the_file() {
    let t = TestServer::start().await;
    let probe = t.add_file("disk", 16 * MIB);
    let client = Client::connect(&t.uri("disk")).await.expect("connect");
    assert_eq!(client.size(), 16 * MIB);
    assert!(client.can_flush() && client.can_fua() && client.can_trim());
    assert!(!client.is_read_only());
    let sizes = client.block_sizes().expect("NBD_INFO_BLOCK_SIZE");
    assert_eq!((sizes.minimum, sizes.preferred), (1, 4096));
    assert_eq!(client.uri().export, "disk");

    let a = pattern(1, 64 * 1024);
    let b = pattern(2, 4096);
    client.write(0, &a, false).await.expect("write");
    client
        .write(5 * MIB + 512, &b, true)
        .await
        .expect("FUA write");
    client.flush().await.expect("flush");
    assert!(probe.flushes.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        &client.read(0, a.len() as u32).await.expect("read")[..],
        &a[..]
    );
    assert_eq!(
        &client.read(5 * MIB + 512, 4096).await.expect("read")[..],
        &b[..]
    );
    assert_eq!(file_bytes(&t, "disk", 0, a.len()), a);
    assert_eq!(file_bytes(&t, "disk", 5 * MIB + 512, b.len()), b);

    // The last byte of the export can be written; one past it is refused before sending.
    client
        .write(16 * MIB - 1, &[7], false)
        .await
        .expect("last byte");
    let error = client.read(16 * MIB - 1, 2).await.unwrap_err();
    assert!(
        matches!(error, ClientError::InvalidRequest { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("beyond the end"), "{error}");

    client.trim(0, 64 * 1024).await.expect("trim");
    let reads_before = probe.reads.load(Ordering::Relaxed);
    let zeroes = client.read(0, 4096).await.expect("read after trim");
    assert_eq!(zeroes.len(), 4096);
    assert_eq!(probe.reads.load(Ordering::Relaxed), reads_before + 1);

    client.disconnect().await.expect("disconnect");
    wait_until("the server closes the connection", || {
        t.server.open_connections() == 0
    })
    .await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_replies_are_matched_by_cookie() {
    let t = TestServer::start().await;
    let probe = t.add_file("disk", 8 * MIB);
    let client = Arc::new(Client::connect(&t.uri("disk")).await.expect("connect"));
    client
        .write(MIB, &pattern(9, 4096), false)
        .await
        .expect("write");

    // A read the device holds back, then others that overtake it.
    probe.hold_reads_at.store(MIB, Ordering::SeqCst);
    let held = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.read(MIB, 4096).await }
    });
    wait_until("the held read reaches the device", || {
        probe.reads_in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    for i in 0..8u64 {
        let data = pattern(i as u8, 4096);
        client
            .write(2 * MIB + i * 4096, &data, i % 2 == 0)
            .await
            .expect("write overtakes the held read");
        let back = client.read(2 * MIB + i * 4096, 4096).await.expect("read");
        assert_eq!(&back[..], &data[..]);
    }
    assert!(!held.is_finished(), "the held read is still in flight");
    probe.release.notify_one();
    let data = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("held read answered")
        .expect("task")
        .expect("read");
    assert_eq!(&data[..], &pattern(9, 4096)[..]);
    assert!(probe.max_reads_in_flight.load(Ordering::SeqCst) >= 2);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_share_one_connection() {
    let t = TestServer::start().await;
    t.add_file("disk", 32 * MIB);
    let client = Arc::new(Client::connect(&t.uri("disk")).await.expect("connect"));
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let client = Arc::clone(&client);
        tasks.push(tokio::spawn(async move {
            for round in 0..20u64 {
                let offset = task * 4 * MIB + (round % 4) * 64 * 1024;
                let data = pattern((task * 31 + round) as u8, 64 * 1024);
                client.write(offset, &data, round % 5 == 0).await?;
                let back = client.read(offset, data.len() as u32).await?;
                assert_eq!(&back[..], &data[..], "task {task} round {round}");
                if round % 7 == 0 {
                    client.flush().await?;
                }
            }
            Ok::<_, ClientError>(())
        }));
    }
    for task in tasks {
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("in time")
            .expect("task")
            .expect("I/O");
    }
    let client = Arc::into_inner(client).expect("the only reference");
    client.disconnect().await.expect("disconnect");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_leaves_the_connection_usable() {
    let t = TestServer::start().await;
    let probe = t.add_file("disk", 8 * MIB);
    let client = Client::connect(&t.uri("disk")).await.expect("connect");
    probe.hold_reads_at.store(0, Ordering::SeqCst);
    let gave_up = tokio::time::timeout(Duration::from_millis(100), client.read(0, 4096)).await;
    assert!(gave_up.is_err(), "the held read timed out");
    // The abandoned request's reply arrives later and is dropped; others go on.
    client
        .write(MIB, &pattern(3, 4096), false)
        .await
        .expect("write");
    probe.release.notify_one();
    assert_eq!(
        &client.read(MIB, 4096).await.expect("read")[..],
        &pattern(3, 4096)[..]
    );
    probe.hold_reads_at.store(u64::MAX, Ordering::SeqCst);
    assert_eq!(client.read(0, 512).await.expect("read").len(), 512);
    client.disconnect().await.expect("disconnect");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_name_the_request_and_the_errno() {
    let t = TestServer::start().await;
    let probe = t.add_file("disk", 8 * MIB);
    let client = Client::connect(&t.uri("disk")).await.expect("connect");
    probe.fail_reads.store(true, Ordering::SeqCst);
    let error = client.read(4096, 512).await.unwrap_err();
    assert_eq!(error.errno(), Some(proto::EIO));
    assert_eq!(
        error.to_string(),
        "NBD read of 512 bytes at offset 4096 failed: the server answered EIO (5)"
    );
    assert!(!error.is_connection_lost());
    probe.fail_reads.store(false, Ordering::SeqCst);
    // The connection goes on after an error reply.
    client.write(0, &[1; 512], false).await.expect("write");
    assert_eq!(&client.read(0, 512).await.expect("read")[..], &[1; 512]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_handshake_failures_say_what_failed() {
    let t = TestServer::start().await;
    t.add_file("disk", MIB);
    let error = Client::connect(&t.uri("nope")).await.unwrap_err();
    assert!(matches!(error, ClientError::Handshake { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("no export named \"nope\"") && text.contains("NBD_REP_ERR_UNKNOWN"),
        "{text}"
    );

    let unused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let error = Client::connect(&format!("nbd://{unused}/disk"))
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot connect to the NBD server at {unused}")),
        "{error}"
    );

    let error = Client::connect("http://127.0.0.1/x").await.unwrap_err();
    assert!(matches!(error, ClientError::InvalidUri { .. }), "{error}");

    // Something that is not an NBD server.
    let (addr, _server) = fake_server(|mut socket| async move {
        let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let error = Client::connect(&format!("nbd://{addr}/disk"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not an NBD server"), "{error}");

    // A server that never finishes the handshake.
    let (addr, _server) = fake_server(|socket| async move {
        let _silent = socket;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let options = tandem_nbd::ClientOptions {
        handshake_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let error = Client::connect_with(&format!("nbd://{addr}/disk"), &options)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no answer within"), "{error}");
    t.shutdown().await;
}

// ---- Hand-written servers ---------------------------------------------------------------------

/// Accepts one connection on 127.0.0.1 and runs `serve` on it.
async fn fake_server<F, Fut>(serve: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        serve(socket).await;
    });
    (addr, task)
}

/// The server side of a handshake: greeting, flags, one option. Answers `NBD_OPT_GO` with an
/// export of `size` bytes, or refuses it as unsupported and takes `NBD_OPT_EXPORT_NAME`.
async fn fake_handshake(socket: &mut TcpStream, size: u64, knows_go: bool) {
    let flags = proto::FLAG_HAS_FLAGS | proto::FLAG_SEND_FLUSH | proto::FLAG_SEND_FUA;
    let mut out = BytesMut::new();
    proto::encode_greeting(&mut out);
    socket.write_all(&out).await.expect("greeting");
    let mut client_flags = [0u8; 4];
    socket.read_exact(&mut client_flags).await.expect("flags");
    let no_zeroes = proto::decode_client_flags(&client_flags)
        .expect("valid flags")
        .no_zeroes;
    loop {
        let mut header = [0u8; proto::OPTION_HEADER_LEN];
        socket.read_exact(&mut header).await.expect("option");
        let header = proto::decode_option_header(&header).expect("option header");
        let mut data = vec![0u8; header.length as usize];
        socket.read_exact(&mut data).await.expect("option data");
        let mut out = BytesMut::new();
        match header.option {
            proto::OPT_GO if knows_go => {
                proto::encode_rep_info(
                    &mut out,
                    proto::OPT_GO,
                    &proto::Info::Export { size, flags },
                );
                proto::encode_option_reply(&mut out, proto::OPT_GO, proto::REP_ACK, &[]);
                socket.write_all(&out).await.expect("GO reply");
                return;
            }
            proto::OPT_EXPORT_NAME => {
                proto::encode_export_name_reply(&mut out, size, flags, no_zeroes);
                socket.write_all(&out).await.expect("export name reply");
                return;
            }
            other => {
                proto::encode_option_reply(&mut out, other, proto::REP_ERR_UNSUP, &[]);
                socket.write_all(&out).await.expect("unsupported");
            }
        }
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<proto::RequestHeader> {
    let mut header = [0u8; proto::REQUEST_HEADER_LEN];
    socket.read_exact(&mut header).await.ok()?;
    let header = proto::decode_request_header(&header).expect("request header");
    let mut payload = vec![0u8; header.payload_len().expect("payload") as usize];
    socket.read_exact(&mut payload).await.ok()?;
    Some(header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_name_is_the_fallback_when_go_is_unknown() {
    let (addr, server) = fake_server(|mut socket| async move {
        fake_handshake(&mut socket, 1 << 20, false).await;
        let request = read_request(&mut socket).await.expect("a read");
        assert_eq!(request.kind, proto::CMD_READ);
        let mut out = BytesMut::new();
        proto::encode_simple_reply(&mut out, 0, request.handle);
        out.extend_from_slice(&vec![0xab; request.length as usize]);
        socket.write_all(&out).await.expect("reply");
        let disc = read_request(&mut socket).await.expect("disconnect");
        assert_eq!(disc.kind, proto::CMD_DISC);
    })
    .await;
    let client = Client::connect(&format!("nbd://{addr}/old"))
        .await
        .expect("connect");
    assert_eq!(client.size(), 1 << 20);
    assert!(client.can_fua() && !client.can_trim());
    assert_eq!(client.block_sizes(), None);
    assert_eq!(&client.read(512, 16).await.expect("read")[..], &[0xab; 16]);
    // Trim was not advertised: refused without asking.
    assert!(matches!(
        client.trim(0, 512).await,
        Err(ClientError::InvalidRequest { .. })
    ));
    client.disconnect().await.expect("disconnect");
    server.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_fails_requests_in_flight_and_after() {
    let (addr, _server) = fake_server(|mut socket| async move {
        fake_handshake(&mut socket, 1 << 20, true).await;
        // Take one request and hang up without answering.
        let _ = read_request(&mut socket).await;
    })
    .await;
    let client = Client::connect(&format!("nbd://{addr}/disk"))
        .await
        .expect("connect");
    let error = tokio::time::timeout(DEADLINE, client.write(0, &[1; 512], true))
        .await
        .expect("answered")
        .unwrap_err();
    assert!(error.is_connection_lost(), "{error}");
    assert!(
        matches!(
            error,
            ClientError::Disconnected {
                op: Op::Write { fua: true, .. },
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("the server closed the connection"),
        "{error}"
    );
    let later = client.flush().await.unwrap_err();
    assert!(
        matches!(later, ClientError::Disconnected { op: Op::Flush, .. }),
        "{later}"
    );
    assert!(client.disconnect().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_for_an_unknown_cookie_is_a_protocol_error() {
    let (addr, _server) = fake_server(|mut socket| async move {
        fake_handshake(&mut socket, 1 << 20, true).await;
        let request = read_request(&mut socket).await.expect("request");
        let mut out = BytesMut::new();
        proto::encode_simple_reply(&mut out, 0, request.handle + 1000);
        socket.write_all(&out).await.expect("reply");
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let client = Client::connect(&format!("nbd://{addr}/disk"))
        .await
        .expect("connect");
    let error = tokio::time::timeout(DEADLINE, client.flush())
        .await
        .expect("answered")
        .unwrap_err();
    assert!(matches!(error, ClientError::Protocol { .. }), "{error}");
    assert!(error.to_string().contains("not in flight"), "{error}");
    assert!(client.read(0, 512).await.unwrap_err().is_connection_lost());
}

// ---- qemu-io cross-checks ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_reads_what_the_client_wrote_and_the_other_way_round() {
    if !ensure_tool("qemu-io", "qemu-utils") {
        return;
    }
    let t = TestServer::start().await;
    t.add_file("disk", 64 * MIB);
    let uri = t.uri("disk");
    let client = Client::connect(&uri).await.expect("connect");
    for i in 0..16u64 {
        client
            .write(i * MIB, &vec![0x5a; MIB as usize], i % 4 == 0)
            .await
            .expect("write");
    }
    client.flush().await.expect("flush");
    client.disconnect().await.expect("disconnect");
    let out = run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x5a 0 16M",
            "-c",
            "read -P 0 16M 1M",
            &uri,
        ],
    )
    .await;
    assert!(!out.contains("Pattern verification failed"), "{out}");

    run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x33 32M 4M", &uri],
    )
    .await;
    let client = Client::connect(&uri).await.expect("connect again");
    let data = client.read(32 * MIB, 4 * MIB as u32).await.expect("read");
    assert!(data.iter().all(|&byte| byte == 0x33));
    let data = client.read(16 * MIB - 4096, 8192).await.expect("read");
    assert!(data[..4096].iter().all(|&byte| byte == 0x5a));
    assert!(data[4096..].iter().all(|&byte| byte == 0));
    client.disconnect().await.expect("disconnect");
    t.shutdown().await;
}
