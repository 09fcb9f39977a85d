//! The CA, its credentials and real TLS handshakes between rustls ends in memory.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};

use super::*;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn admin(ca: &Authority) -> Credential {
    ca.issue(&Identity::Admin("admin".into()), &[], &[], DAY)
        .unwrap()
}

fn control_plane(ca: &Authority) -> Credential {
    ca.issue(
        &Identity::ControlPlane("cp1".into()),
        &[LOOPBACK],
        &["localhost".into()],
        DAY,
    )
    .unwrap()
}

/// Runs a TLS handshake between the two ends in memory; the identity the server saw, if any.
fn handshake(
    client: ClientConfig,
    server: ServerConfig,
    name: &str,
) -> Result<Option<Identity>, String> {
    let (_, server) = connect(client, server, name)?;
    match server.peer_certificates() {
        Some([first, ..]) => identity_of(first).map(Some).map_err(|e| e.to_string()),
        _ => Ok(None),
    }
}

/// Runs a TLS handshake between the two ends in memory; both ends once it is over.
fn connect(
    client: ClientConfig,
    server: ServerConfig,
    name: &str,
) -> Result<(ClientConnection, ServerConnection), String> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut server = ServerConnection::new(Arc::new(server)).unwrap();
    for _ in 0..20 {
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).unwrap();
        }
        let mut from_client = bytes.as_slice();
        while !from_client.is_empty() {
            server.read_tls(&mut from_client).unwrap();
        }
        server
            .process_new_packets()
            .map_err(|error| format!("server: {error}"))?;
        let mut bytes = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut bytes).unwrap();
        }
        let mut from_server = bytes.as_slice();
        while !from_server.is_empty() {
            client.read_tls(&mut from_server).unwrap();
        }
        client
            .process_new_packets()
            .map_err(|error| format!("client: {error}"))?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok((client, server));
        }
    }
    Err("the handshake did not finish".into())
}

#[test]
fn given_issued_credentials_when_read_back_then_each_names_its_identity() {
    let ca = Authority::create("test").unwrap();
    for identity in [
        Identity::Admin("alice".into()),
        Identity::ControlPlane("cp2".into()),
        Identity::Node("node3".into()),
    ] {
        let credential = ca.issue(&identity, &[LOOPBACK], &[], DAY).unwrap();
        assert_eq!(credential.identity().unwrap(), identity);
    }
    // The CA's own certificate is no identity.
    let ca_only = Credential {
        certificate: ca.certificate().to_string(),
        key: String::new(),
    };
    assert!(matches!(ca_only.identity(), Err(PkiError::NoIdentity(_))));
    assert!(!format!("{:?}", admin(&ca)).contains("PRIVATE KEY"));
}

#[test]
fn given_a_saved_ca_when_loaded_then_what_it_issues_verifies_against_the_saved_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("test").unwrap();
    ca.save(dir.path()).unwrap();
    let server = control_plane(&ca);
    let (certificate, key) = Credential::paths(&dir.path().join("control-planes"), "cp1");
    server.save(&certificate, &key).unwrap();
    for path in [
        dir.path().join("ca.crt"),
        dir.path().join("ca.key"),
        certificate.clone(),
        key.clone(),
    ] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }

    let loaded = Authority::load(dir.path()).unwrap();
    assert_eq!(loaded.certificate(), ca.certificate());
    let client = loaded
        .issue(&Identity::Node("node1".into()), &[], &[], DAY)
        .unwrap();
    let server = Credential::load(&certificate, &key).unwrap();
    let seen = handshake(
        client_config(ca.certificate(), Some(&client)).unwrap(),
        server_config(ca.certificate(), &server, ClientCertificates::Required).unwrap(),
        "127.0.0.1",
    );
    assert_eq!(seen, Ok(Some(Identity::Node("node1".into()))));
}

#[test]
fn given_missing_or_damaged_files_when_loaded_then_the_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let error = Authority::load(dir.path()).err().unwrap().to_string();
    assert!(error.contains("ca.crt"), "{error}");
    let (certificate, key) = Credential::paths(dir.path(), "x");
    std::fs::write(&certificate, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let error = Credential::load(&certificate, &key)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("x.crt"), "{error}");
}

#[test]
fn given_a_server_requiring_certificates_when_clients_connect_then_only_the_clusters_get_in() {
    let ca = Authority::create("test").unwrap();
    let other = Authority::create("other").unwrap();
    let server = control_plane(&ca);
    let required =
        || server_config(ca.certificate(), &server, ClientCertificates::Required).unwrap();

    let ok = handshake(
        client_config(ca.certificate(), Some(&admin(&ca))).unwrap(),
        required(),
        "127.0.0.1",
    );
    assert_eq!(ok, Ok(Some(Identity::Admin("admin".into()))));
    let by_name = handshake(
        client_config(ca.certificate(), Some(&admin(&ca))).unwrap(),
        required(),
        "localhost",
    );
    assert!(by_name.is_ok(), "{by_name:?}");

    let none = handshake(
        client_config(ca.certificate(), None).unwrap(),
        required(),
        "127.0.0.1",
    );
    assert!(none.is_err(), "no certificate: {none:?}");

    let foreign = handshake(
        client_config(ca.certificate(), Some(&admin(&other))).unwrap(),
        required(),
        "127.0.0.1",
    );
    assert!(foreign.is_err(), "another CA's certificate: {foreign:?}");

    let now = SystemTime::now();
    let expired = ca
        .issue_between(
            &Identity::Admin("admin".into()),
            &[],
            &[],
            now - 2 * DAY,
            now - DAY,
        )
        .unwrap();
    let refused = handshake(
        client_config(ca.certificate(), Some(&expired)).unwrap(),
        required(),
        "127.0.0.1",
    );
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("xpired")),
        "an expired certificate: {refused:?}"
    );
}

#[test]
fn given_an_optional_client_certificate_when_none_is_shown_then_the_server_lets_it_in_unnamed() {
    let ca = Authority::create("test").unwrap();
    let other = Authority::create("other").unwrap();
    let server = control_plane(&ca);
    let optional =
        || server_config(ca.certificate(), &server, ClientCertificates::Optional).unwrap();
    assert_eq!(
        handshake(
            client_config(ca.certificate(), None).unwrap(),
            optional(),
            "127.0.0.1"
        ),
        Ok(None)
    );
    let foreign = handshake(
        client_config(ca.certificate(), Some(&admin(&other))).unwrap(),
        optional(),
        "127.0.0.1",
    );
    assert!(foreign.is_err(), "another CA's certificate: {foreign:?}");
}

#[test]
fn given_a_client_when_the_server_is_not_the_clusters_or_not_the_named_host_then_it_refuses() {
    let ca = Authority::create("test").unwrap();
    let other = Authority::create("other").unwrap();
    let impostor = control_plane(&other);
    let refused = handshake(
        client_config(ca.certificate(), Some(&admin(&ca))).unwrap(),
        server_config(other.certificate(), &impostor, ClientCertificates::Optional).unwrap(),
        "127.0.0.1",
    );
    assert!(refused.is_err(), "a server of another CA: {refused:?}");

    let server = control_plane(&ca);
    let wrong_host = handshake(
        client_config(ca.certificate(), Some(&admin(&ca))).unwrap(),
        server_config(ca.certificate(), &server, ClientCertificates::Optional).unwrap(),
        "127.0.0.2",
    );
    assert!(
        wrong_host.is_err(),
        "an address the certificate does not name: {wrong_host:?}"
    );
}

#[test]
fn given_a_client_preferring_aes_256_when_it_connects_then_the_server_chooses_aes_128() {
    let ca = Authority::create("test").unwrap();
    let server = server_config(
        ca.certificate(),
        &control_plane(&ca),
        ClientCertificates::Required,
    )
    .unwrap();
    // ring's own order, as GnuTLS clients (libnbd, qemu) ask: AES-256-GCM first.
    let ring = Arc::new(rustls::crypto::ring::default_provider());
    assert_eq!(
        ring.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    let admin = admin(&ca);
    let client = ClientConfig::builder_with_provider(ring)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca.certificate()).unwrap())
        .with_client_auth_cert(admin.chain().unwrap(), admin.private_key().unwrap())
        .unwrap();
    let (client, server) = connect(client, server, "localhost").unwrap();
    for suite in [
        client.negotiated_cipher_suite(),
        server.negotiated_cipher_suite(),
    ] {
        let suite = suite.expect("negotiated").suite();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}
