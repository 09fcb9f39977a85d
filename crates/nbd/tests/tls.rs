//! NBD over TLS as the protocol defines it, with clients nobody here wrote: `nbdinfo`,
//! `nbdcopy` (libnbd, `nbds://...?tls-certificates=DIR`) and `qemu-io` (`tls-creds-x509`) read
//! and write through a server that requires TLS; a plain client is told TLS is required and
//! reads nothing; another CA's certificate, an expired one, none at all, an identity the server
//! does not allow, and a server certificate for another name are all refused; any bytes after
//! STARTTLS end only that connection (a property test).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{ensure_tool, run, run_ok, TestServer};
use tandem_nbd::proto;
use tandem_nbd::{Client, ClientOptions, ServerConfig, TlsRequired};
use tandem_pki::{server_config, Authority, ClientCertificates, Credential, Identity};

const DAY: Duration = Duration::from_secs(24 * 3600);
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn admins_only(identity: &Identity) -> bool {
    matches!(identity, Identity::Admin(_))
}

/// A server requiring TLS with a certificate of `ca` for 127.0.0.1, letting in administrators.
async fn tls_server(ca: &Authority) -> TestServer {
    tls_server_with(ca, ServerConfig::default().handshake_timeout).await
}

/// [`tls_server`] whose handshakes must finish within `handshake_timeout`.
async fn tls_server_with(ca: &Authority, handshake_timeout: Duration) -> TestServer {
    let credential = ca
        .issue(&Identity::Node("node1".into()), &[LOOPBACK], &[], DAY)
        .unwrap();
    let config =
        server_config(ca.certificate(), &credential, ClientCertificates::Required).unwrap();
    TestServer::start_with(ServerConfig {
        tls: Some(TlsRequired {
            config: Arc::new(config),
            allow: admins_only,
        }),
        handshake_timeout,
        ..ServerConfig::default()
    })
    .await
}

/// Writes a client credential directory as GnuTLS clients read it.
fn client_dir(dir: &Path, ca: &str, credential: &Credential) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca).unwrap();
    std::fs::write(dir.join("client-cert.pem"), &credential.certificate).unwrap();
    std::fs::write(dir.join("client-key.pem"), &credential.key).unwrap();
}

fn nbds(server: &TestServer, export: &str, dir: &Path) -> String {
    format!(
        "nbds://{}/{export}?tls-certificates={}",
        server.addr,
        dir.display()
    )
}

#[tokio::test]
async fn real_clients_read_and_write_over_tls_and_others_are_refused() {
    let ca = Authority::create("test").unwrap();
    let server = tls_server(&ca).await;
    let probe = server.add_file("disk", 8 << 20);
    let dirs = tempfile::tempdir().unwrap();
    let admin = ca
        .issue(&Identity::Admin("admin".into()), &[], &[], DAY)
        .unwrap();
    let admin_dir = dirs.path().join("admin");
    client_dir(&admin_dir, ca.certificate(), &admin);

    // Tandem's own client, from the URI alone.
    let uri = nbds(&server, "disk", &admin_dir);
    let client = Client::connect(&uri).await.unwrap();
    client.write(0, &[0x5a; 65536], false).await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(&client.read(0, 4096).await.unwrap()[..], &[0x5a; 4096][..]);
    client.disconnect().await.unwrap();

    if ensure_tool("nbdinfo", "libnbd-bin") {
        let size = run_ok("nbdinfo", &["--size", &uri]).await;
        assert_eq!(size.trim(), (8 << 20).to_string());
    }
    if ensure_tool("nbdcopy", "libnbd-bin") {
        let copy = dirs.path().join("copy.img");
        run_ok("nbdcopy", &[&uri, copy.to_str().unwrap()]).await;
        let copied = std::fs::read(&copy).unwrap();
        assert_eq!(&copied[..65536], &[0x5a; 65536][..]);
    }
    if ensure_tool("qemu-io", "qemu-utils") {
        let object = format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            admin_dir.display()
        );
        let image = format!(
            "driver=nbd,host=127.0.0.1,port={},export=disk,tls-creds=tls0",
            server.addr.port()
        );
        let out = run_ok(
            "qemu-io",
            &[
                "--object",
                &object,
                "--image-opts",
                &image,
                "-c",
                "write -P 0xc3 1M 64k",
                "-c",
                "read -P 0xc3 1M 64k",
                "-c",
                "read -P 0x5a 0 64k",
            ],
        )
        .await;
        assert!(!out.contains("fail"), "{out}");
    }
    let written = probe.writes.load(std::sync::atomic::Ordering::SeqCst);

    // A plain client: told TLS is required, reads nothing.
    let plain = Client::connect(&server.uri("disk")).await.unwrap_err();
    assert!(plain.to_string().contains("requires TLS"), "{plain}");
    if ensure_tool("nbdinfo", "libnbd-bin") {
        let out = run("nbdinfo", &["--size", &server.uri("disk")]).await;
        assert!(!out.status.success());
    }

    // Credentials the server must refuse.
    let other = Authority::create("other").unwrap();
    let now = std::time::SystemTime::now();
    let cases = [
        (
            "another CA's certificate",
            other
                .issue(&Identity::Admin("admin".into()), &[], &[], DAY)
                .unwrap(),
            ca.certificate().to_string(),
        ),
        (
            "an expired certificate",
            ca.issue_between(
                &Identity::Admin("admin".into()),
                &[],
                &[],
                now - 2 * DAY,
                now - DAY,
            )
            .unwrap(),
            ca.certificate().to_string(),
        ),
        (
            "a node's certificate (not allowed here)",
            ca.issue(&Identity::Node("node2".into()), &[], &[], DAY)
                .unwrap(),
            ca.certificate().to_string(),
        ),
        (
            "trusting another CA than the server's",
            admin.clone(),
            other.certificate().to_string(),
        ),
    ];
    for (what, credential, trusted) in cases {
        let dir = dirs.path().join(what.replace(' ', "-"));
        client_dir(&dir, &trusted, &credential);
        let refused = Client::connect(&nbds(&server, "disk", &dir)).await;
        assert!(refused.is_err(), "{what} was let in");
        if ensure_tool("nbdinfo", "libnbd-bin") {
            let out = run("nbdinfo", &["--size", &nbds(&server, "disk", &dir)]).await;
            assert!(!out.status.success(), "{what}: nbdinfo got in");
        }
    }
    // The refusal of an identity says so.
    let node_dir = dirs.path().join("a-node's-certificate-(not-allowed-here)");
    let refused = Client::connect(&nbds(&server, "disk", &node_dir))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("node node2 may not open exports"),
        "{refused}"
    );

    // No client certificate at all: the handshake fails.
    let anonymous = tandem_pki::client_config(ca.certificate(), None).unwrap();
    let options = ClientOptions {
        tls: Some(Arc::new(anonymous)),
        ..ClientOptions::default()
    };
    let refused = Client::connect_with(&format!("nbds://{}/disk", server.addr), &options).await;
    assert!(
        refused.is_err(),
        "a client without a certificate was let in"
    );

    assert_eq!(
        probe.writes.load(std::sync::atomic::Ordering::SeqCst),
        written,
        "a refused client wrote"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_certificate_for_another_name_is_refused() {
    let ca = Authority::create("test").unwrap();
    let credential = ca
        .issue(
            &Identity::Node("node1".into()),
            &[IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9))],
            &["node1".into()],
            DAY,
        )
        .unwrap();
    let config =
        server_config(ca.certificate(), &credential, ClientCertificates::Required).unwrap();
    let server = TestServer::start_with(ServerConfig {
        tls: Some(TlsRequired {
            config: Arc::new(config),
            allow: admins_only,
        }),
        ..ServerConfig::default()
    })
    .await;
    server.add_file("disk", 1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let admin = ca
        .issue(&Identity::Admin("admin".into()), &[], &[], DAY)
        .unwrap();
    client_dir(dir.path(), ca.certificate(), &admin);
    let refused = Client::connect(&nbds(&server, "disk", dir.path()))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("TLS handshake"), "{refused}");
    server.shutdown().await;
}

/// The option haggling of a server that requires TLS, byte by byte: before STARTTLS every
/// option but ABORT is answered NBD_REP_ERR_TLS_REQD, STARTTLS with data is invalid, and
/// NBD_OPT_EXPORT_NAME closes the connection.
#[tokio::test]
async fn before_starttls_only_starttls_and_abort_are_served() {
    let ca = Authority::create("test").unwrap();
    let server = tls_server(&ca).await;
    server.add_file("disk", 1 << 20);
    let mut raw = common::RawClient::start(server.addr, proto::FLAG_C_FIXED_NEWSTYLE).await;
    raw.raw_option(proto::OPT_LIST, &[]).await;
    let (option, reply, _) = raw.option_reply().await;
    assert_eq!((option, reply), (proto::OPT_LIST, proto::REP_ERR_TLS_REQD));
    raw.option(&proto::ClientOption::Go(proto::InfoRequest {
        name: "disk".into(),
        requests: vec![],
    }))
    .await;
    let (_, reply, _) = raw.option_reply().await;
    assert_eq!(reply, proto::REP_ERR_TLS_REQD);
    raw.raw_option(proto::OPT_STARTTLS, &[1]).await;
    let (_, reply, _) = raw.option_reply().await;
    assert_eq!(reply, proto::REP_ERR_INVALID);
    raw.raw_option(proto::OPT_EXPORT_NAME, b"disk").await;
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut raw.stream, &mut byte),
    )
    .await
    .expect("the server closes the connection");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    server.shutdown().await;
}

/// Completes the greeting, STARTTLS and the TLS handshake as `credential`; the TLS stream, ready
/// for option haggling.
async fn inside_tls(
    server: &TestServer,
    ca: &Authority,
    credential: &Credential,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut raw = common::RawClient::start(server.addr, proto::FLAG_C_FIXED_NEWSTYLE).await;
    raw.raw_option(proto::OPT_STARTTLS, &[]).await;
    let (_, reply, _) = raw.option_reply().await;
    assert_eq!(reply, proto::REP_ACK);
    let config = tandem_pki::client_config(ca.certificate(), Some(credential)).unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, raw.stream)
        .await
        .unwrap()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever a client sends once inside TLS (option headers with any code and length, any
    /// data, a second STARTTLS, garbage), the server answers or closes that connection within
    /// its handshake timeout, never panics, and serves the next client.
    #[test]
    fn any_bytes_after_starttls_end_only_that_connection(
        options in proptest::collection::vec(
            (proptest::prop_oneof![
                proptest::strategy::Just(proto::OPT_STARTTLS),
                proptest::strategy::Just(proto::OPT_GO),
                proptest::strategy::Just(proto::OPT_INFO),
                proptest::strategy::Just(proto::OPT_LIST),
                proptest::strategy::Just(proto::OPT_EXPORT_NAME),
                proptest::strategy::Just(proto::OPT_SET_META_CONTEXT),
                0u32..16,
            ], proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0u32..80),
            0..6,
        ),
        garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let ca = Authority::create("test").unwrap();
            let server = tls_server_with(&ca, Duration::from_secs(2)).await;
            server.add_file("disk", 1 << 20);
            let admin = ca.issue(&Identity::Admin("admin".into()), &[], &[], DAY).unwrap();
            let mut stream = inside_tls(&server, &ca, &admin).await;
            let mut bytes = Vec::new();
            for (code, data, declared) in &options {
                bytes.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
                bytes.extend_from_slice(&code.to_be_bytes());
                // The declared length may disagree with the data sent.
                let length = if *declared < 64 { data.len() as u32 } else { *declared };
                bytes.extend_from_slice(&length.to_be_bytes());
                bytes.extend_from_slice(data);
            }
            bytes.extend_from_slice(&garbage);
            let _ = stream.write_all(&bytes).await;
            let _ = stream.flush().await;
            // The server answers what it can and closes, or waits for more and gives up at its
            // handshake timeout: either way the connection ends.
            let mut sink = vec![0u8; 4096];
            let ended = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            assert!(ended.is_ok(), "the connection stayed open past the handshake timeout");
            // The next client is served.
            let dir = tempfile::tempdir().unwrap();
            client_dir(dir.path(), ca.certificate(), &admin);
            let client = Client::connect(&nbds(&server, "disk", dir.path())).await.unwrap();
            client.disconnect().await.unwrap();
            server.shutdown().await;
        });
    }
}
