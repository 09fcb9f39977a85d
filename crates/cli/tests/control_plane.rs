//! `tandem control-plane` as a real process: objects survive kill -9 and a restart; a
//! `tandem agent` on every interface reports the address it advertises.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tandem::wait::{wait_for, Deadline, Probe, TimedOut};

mod common;
use common::api_client;

/// Starts the control plane on a free port; returns the process and its API address.
fn start(data_dir: &Path) -> (Child, String) {
    start_on(data_dir, "127.0.0.1:0")
}

/// Starts the control plane listening on `listen`; returns the process and the address it says
/// it listens on.
fn start_on(data_dir: &Path, listen: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["control-plane", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tandem control-plane");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the address line");
    let address = line
        .trim()
        .strip_prefix("control plane listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (child, address)
}

/// An Event: an object the controllers never change or delete, so what is read back after the
/// restart is exactly what was written (a CStorVolume without its CVC would be collected by the
/// volume controller's garbage collection before or after the kill, at random).
const EVENT: &str = "apiVersion: v1
kind: Event
metadata:
  name: pvc-1.durable
  namespace: openebs
type: Normal
reason: Durable
message: written before kill -9
involvedObject:
  kind: CStorVolume
  name: pvc-1
  namespace: openebs
";

#[tokio::test]
async fn nothing_is_lost_when_the_control_plane_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, address) = start(dir.path());
    // The first start made the cluster's CA and an admin credential.
    let client = api_client(dir.path());
    let url = format!("{address}/api/v1/namespaces/openebs/events");
    let created = client.post(&url).body(EVENT).send().await.unwrap();
    assert_eq!(created.status(), 201);
    first.kill().expect("kill -9");
    first.wait().unwrap();

    let (mut second, address) = start(dir.path());
    let url = format!("{address}/api/v1/namespaces/openebs/events");
    let list: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    let event = list["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|item| item["metadata"]["name"] == "pvc-1.durable")
        })
        .unwrap_or_else(|| panic!("the event is gone after kill -9: {list}"));
    assert_eq!(event["message"], "written before kill -9", "{event}");
    assert_eq!(event["metadata"]["resourceVersion"], "1");
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn an_unusable_address_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["control-plane", "--listen", "203.0.113.1:1", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listen on 203.0.113.1:1"), "{stderr}");
}

/// The node status the control plane has for `node`, once it has one.
async fn node_status(client: &reqwest::Client, address: &str, node: &str) -> Option<Value> {
    let nodes: Value = client
        .get(format!("{address}/tandem/v1/nodes"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    nodes
        .as_array()?
        .iter()
        .find(|status| status["node"] == node)
        .cloned()
}

/// An agent that listens on every interface reports the address it was told to advertise,
/// with the ports it listens on; without one it refuses to start, naming what is missing.
#[tokio::test]
async fn an_agent_on_every_interface_reports_its_advertised_address() {
    let dir = tempfile::tempdir().unwrap();
    let (mut control_plane, address) = start(dir.path());
    let client = api_client(dir.path());
    // The node's credential, as an operator adding a node issues it.
    let issued = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["credential", "issue", "node", "n1", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run tandem credential issue");
    assert!(issued.status.success(), "{issued:?}");
    let pki = dir.path().join("pki");
    let agent = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
        command
            .args([
                "agent",
                "--node",
                "n1",
                "--pool-size",
                "64Mi",
                "--server",
                &address,
            ])
            .args(["--data-address", "0.0.0.0:0", "--nbd-address", "0.0.0.0:0"])
            .args(["--metrics-address", "0.0.0.0:0"])
            .arg("--pool-dir")
            .arg(dir.path().join("pool"))
            .arg("--ca")
            .arg(pki.join("ca.crt"))
            .arg("--certificate")
            .arg(pki.join("nodes/n1.crt"))
            .arg("--key")
            .arg(pki.join("nodes/n1.key"))
            .args(extra);
        command
    };

    let refused = agent(&[]).output().expect("run tandem agent");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("listens on every interface") && stderr.contains("--advertise-address"),
        "{stderr}"
    );

    let mut node = agent(&["--advertise-address", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tandem agent");
    let status = wait_for(
        Deadline::after(Duration::from_secs(30)).polling_every(Duration::from_millis(100)),
        "node n1 has not reported to the control plane",
        async || -> Result<Probe<Value>, TimedOut> {
            Ok(match node_status(&client, &address, "n1").await {
                Some(status) => Probe::Done(status),
                None => Probe::Waiting("no heartbeat yet".into()),
            })
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    for field in ["address", "nbdAddress", "metricsAddress"] {
        let reported = status[field].as_str().unwrap_or_default();
        let port = reported
            .strip_prefix("127.0.0.1:")
            .and_then(|port| port.parse::<u16>().ok());
        assert!(port.is_some_and(|port| port != 0), "{field} {reported:?}");
    }
    // What is reported is where the node really listens.
    let nbd_address = status["nbdAddress"].as_str().unwrap();
    assert!(
        std::net::TcpStream::connect(nbd_address).is_ok(),
        "{nbd_address}"
    );

    node.kill().unwrap();
    node.wait().unwrap();
    control_plane.kill().unwrap();
    control_plane.wait().unwrap();
}

/// A control plane listening on every interface records an address this host's CLI reaches
/// (loopback, its port), not `0.0.0.0`.
#[test]
fn a_control_plane_on_every_interface_records_a_loopback_address_for_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, address) = start_on(dir.path(), "0.0.0.0:0");
    let port = address.rsplit(':').next().expect("a port").to_string();
    // The address file is written just after that line.
    let file = dir.path().join("control-plane/address");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let recorded = loop {
        match std::fs::read_to_string(&file) {
            Ok(text) if text.ends_with('\n') => break text,
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("no address file: {other:?}"),
        }
    };
    assert_eq!(recorded.trim(), format!("https://127.0.0.1:{port}"));
    let listed = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["get", "cspc", "-n", "openebs"])
        .env("TANDEM_DATA_DIR", dir.path())
        .env_remove("TANDEM_SERVER")
        .output()
        .expect("run tandem get");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
}

/// An HTTPS client trusting the cluster in `data_dir`'s CA and showing `credential`, if any.
fn client_showing(data_dir: &Path, credential: Option<&tandem_pki::Credential>) -> reqwest::Client {
    let ca = std::fs::read_to_string(data_dir.join("pki/ca.crt")).expect("the cluster's CA");
    let config = tandem_pki::client_config(&ca, credential).expect("a TLS client set-up");
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .expect("an HTTPS client")
}

/// A standalone control plane serves HTTPS only, with the CA and credentials it made at its
/// first start (files 0600); every request must show a certificate of that CA. Without one:
/// 401, and nothing is written; another CA's certificate, an expired one, or plain HTTP: no
/// connection. The admin credential gets in.
#[tokio::test]
async fn the_api_is_https_only_and_every_caller_must_show_a_certificate_of_the_cluster() {
    use std::os::unix::fs::PermissionsExt;
    use tandem_pki::{Authority, Identity};

    let dir = tempfile::tempdir().unwrap();
    let (mut control_plane, address) = start(dir.path());
    assert!(address.starts_with("https://127.0.0.1:"), "{address}");
    for file in [
        "ca.crt",
        "ca.key",
        "users/admin.crt",
        "users/admin.key",
        "control-planes/control-plane.crt",
        "control-planes/control-plane.key",
    ] {
        let mode = std::fs::metadata(dir.path().join("pki").join(file))
            .unwrap_or_else(|error| panic!("pki/{file}: {error}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "pki/{file}");
    }
    let url = format!("{address}/api/v1/namespaces/openebs/events");

    let anonymous = client_showing(dir.path(), None);
    let refused = anonymous.post(&url).body(EVENT).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let status: Value = refused.json().await.unwrap();
    assert_eq!(status["kind"], "Status", "{status}");
    assert!(
        text(&status["message"]).contains("showed no client certificate"),
        "{status}"
    );

    let day = Duration::from_secs(24 * 3600);
    let stranger = Authority::create("another")
        .unwrap()
        .issue(&Identity::Admin("admin".into()), &[], &[], day)
        .unwrap();
    let now = std::time::SystemTime::now();
    let expired = Authority::load(&dir.path().join("pki"))
        .unwrap()
        .issue_between(
            &Identity::Admin("admin".into()),
            &[],
            &[],
            now - 2 * day,
            now - day,
        )
        .unwrap();
    for (what, credential) in [("another CA's", stranger), ("an expired", expired)] {
        let result = client_showing(dir.path(), Some(&credential))
            .post(&url)
            .body(EVENT)
            .send()
            .await;
        assert!(
            result.is_err(),
            "{what} certificate was let in: {:?}",
            result.map(|response| response.status())
        );
    }
    let plain = reqwest::Client::new()
        .get(url.replacen("https://", "http://", 1))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");

    let admin = api_client(dir.path());
    let list: Value = admin.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
    let created = admin.post(&url).body(EVENT).send().await.unwrap();
    assert_eq!(created.status(), 201);

    control_plane.kill().unwrap();
    control_plane.wait().unwrap();
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

/// Plain HTTP only when asked for, and only on loopback.
#[test]
fn insecure_is_refused_off_loopback_and_serves_plain_http_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["control-plane", "--insecure", "--listen", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--insecure") && stderr.contains("loopback"),
        "{stderr}"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["control-plane", "--insecure", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("control plane listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(!dir.path().join("pki").exists(), "--insecure made a CA");
    child.kill().unwrap();
    child.wait().unwrap();
}
