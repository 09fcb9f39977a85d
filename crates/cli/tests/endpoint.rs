//! The stable client endpoint end to end: every node of a `tandem up` cluster serves every
//! volume on its NBD port, forwarding to the node that runs the volume's target. Real clients
//! (qemu-io, qemu-img, nbdinfo --map, nbdcopy, fio) see the same volume through every node; a client
//! retrying on a forwarding node's URI gets its I/O back after the target's agent is killed
//! and restarted, with every acknowledged write intact; garbage sent to an endpoint harms
//! nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn tool(name: &str, args: &[&str]) -> String {
    let output = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{name} is not installed ({error}); .ci/run installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{name} {args:?} failed:\n{text}");
    text
}

/// qemu-io commands; a failed pattern check fails the test.
fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let args = qemu_io_args(uri, commands);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = tool("qemu-io", &args);
    assert!(
        !text.contains("Pattern verification failed"),
        "{uri}: {text}"
    );
    assert!(!text.to_lowercase().contains("error"), "{uri}: {text}");
    text
}

/// Node name -> its endpoint URI for `volume`, from `tandem volume uri --node`.
fn endpoints(cluster: &Cluster, volume: &str) -> Vec<(String, String)> {
    let nodes: Vec<String> = cluster.pools().into_iter().map(|(_, node)| node).collect();
    nodes
        .into_iter()
        .map(|node| {
            let uri = cluster.ok(&["volume", "uri", volume, "-n", "openebs", "--node", &node]);
            (node, uri.trim().to_string())
        })
        .collect()
}

/// `host:port` of an `nbd://` or `nbds://host:port/name` URI.
fn address_of(uri: &str) -> String {
    let rest = uri
        .strip_prefix("nbd://")
        .or_else(|| uri.strip_prefix("nbds://"))
        .expect("an nbd:// URI");
    rest.split_once('/').expect("a path").0.to_string()
}

/// Waits until `uri` serves the volume (a forwarder connects within moments of the target
/// serving).
fn wait_until_served(uri: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = Command::new("qemu-io")
            .args(qemu_io_args(uri, &["read 0 4k"]))
            .output()
            .expect("qemu-io is installed");
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        if output.status.success() && text.contains("read 4096/4096 bytes") {
            return;
        }
        assert!(Instant::now() < deadline, "{uri} does not serve: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_node_serves_the_volume_and_real_clients_agree_through_forwarding_nodes() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-e",
        "--size",
        "128Mi",
        "--replicas",
        "2",
    ]);
    let default = cluster.uri("vol-e");
    let target = cluster.target_node("vol-e");
    let endpoints = endpoints(&cluster, "vol-e");
    assert_eq!(endpoints.len(), 3);
    // The default is the first target's node, recorded on the CV.
    let cv = cluster.json(&["get", "cv", "vol-e", "-n", "openebs"]);
    assert_eq!(
        cv["metadata"]["annotations"]["tandem.io/endpoint-node"],
        *target
    );
    let on_target = &endpoints
        .iter()
        .find(|(node, _)| *node == target)
        .unwrap()
        .1;
    assert_eq!(&default, on_target);
    let mut addresses: Vec<String> = endpoints.iter().map(|(_, uri)| address_of(uri)).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 3, "{endpoints:?}");

    // Writes through each node, then every node reads what every other wrote.
    for (i, (_, uri)) in endpoints.iter().enumerate() {
        wait_until_served(uri);
        let pattern = 0x31 + i as u8;
        qemu_io(uri, &[&format!("write -P {pattern:#x} {}M 4M", i * 8)]);
    }
    for (_, uri) in &endpoints {
        let reads: Vec<String> = (0..endpoints.len())
            .map(|i| format!("read -P {:#x} {}M 4M", 0x31 + i as u8, i * 8))
            .collect();
        let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
        let text = qemu_io(uri, &reads);
        assert_eq!(
            text.matches("read 4194304/4194304 bytes").count(),
            3,
            "{text}"
        );
    }

    let (forwarding_node, forwarding) = endpoints
        .iter()
        .find(|(node, _)| *node != target)
        .cloned()
        .unwrap();
    // Block status is the target's, relayed: the same map through either node.
    let direct_map = tool("nbdinfo", &["--map", on_target]);
    let forwarded_map = tool("nbdinfo", &["--map", &forwarding]);
    assert_eq!(forwarded_map, direct_map);
    assert!(forwarded_map.contains("hole,zero"), "{forwarded_map}");
    assert!(forwarded_map.contains("data"), "{forwarded_map}");
    // nbdcopy through the forwarding node copies the same bytes.
    let dir = tempfile::tempdir().unwrap();
    let (copy_direct, copy_forwarded) = (dir.path().join("a.img"), dir.path().join("b.img"));
    tool("nbdcopy", &[on_target, copy_direct.to_str().unwrap()]);
    tool("nbdcopy", &[&forwarding, copy_forwarded.to_str().unwrap()]);
    assert!(
        std::fs::read(&copy_direct).unwrap() == std::fs::read(&copy_forwarded).unwrap(),
        "nbdcopy through {forwarding_node} differs from through the target's node"
    );

    // qemu-img reads the volume through both nodes and finds them identical, and its copy
    // through the forwarding node is nbdcopy's.
    let converted = dir.path().join("c.img");
    let converted_path = converted.to_str().unwrap();
    let (compare, convert): (Vec<String>, Vec<String>) =
        match (qemu_tls_image(on_target), qemu_tls_image(&forwarding)) {
            (Some((object, a)), Some((_, b))) => (
                ["compare", "--object", &object, "--image-opts", &a, &b]
                    .map(String::from)
                    .to_vec(),
                [
                    "convert",
                    "--object",
                    &object,
                    "--image-opts",
                    &b,
                    "-O",
                    "raw",
                    converted_path,
                ]
                .map(String::from)
                .to_vec(),
            ),
            _ => (
                ["compare", "-f", "raw", "-F", "raw", on_target, &forwarding]
                    .map(String::from)
                    .to_vec(),
                [
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "raw",
                    &forwarding,
                    converted_path,
                ]
                .map(String::from)
                .to_vec(),
            ),
        };
    let compare: Vec<&str> = compare.iter().map(String::as_str).collect();
    let compared = tool("qemu-img", &compare);
    assert!(compared.contains("Images are identical"), "{compared}");
    let convert: Vec<&str> = convert.iter().map(String::as_str).collect();
    tool("qemu-img", &convert);
    assert!(std::fs::read(&converted).unwrap() == std::fs::read(&copy_direct).unwrap());

    // fio verifies every block it wrote through the forwarding node.
    let report = dir.path().join("fio.json");
    let (mut fio, fio_uri) = fio_command(None, &forwarding);
    let status = fio
        .current_dir(dir.path())
        .args([
            "--name=forwarded",
            "--ioengine=nbd",
            &format!("--uri={fio_uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=16m",
            "--offset=64m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--fsync=64",
            "--output-format=json",
            &format!("--output={}", report.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("fio is installed (.ci/run installs it)");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
        .unwrap_or(Value::Null);
    assert!(status.success(), "fio failed: {report}");
    assert_eq!(report["jobs"][0]["error"], 0, "{report}");

    // Garbage to the forwarding endpoint ends that connection only.
    let agent_pid = cluster.pid(&format!("nodes/{forwarding_node}/agent.pid"));
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 200][..],
        // Fixed newstyle flags, then an option header announcing 4 GiB of data.
        &[
            0, 0, 0, 1, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 7, 0xff, 0xff,
            0xff, 0xff,
        ][..],
    ] {
        let mut stream = TcpStream::connect(address_of(&forwarding)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).expect("the NBD greeting");
        let _ = stream.write_all(garbage);
        let mut rest = Vec::new();
        // The server closes the connection (or answers and closes); it never hangs.
        let _ = stream.read_to_end(&mut rest);
    }
    assert!(
        std::path::Path::new(&format!("/proc/{agent_pid}")).exists(),
        "the forwarding agent died:\n{}",
        cluster.agent_log_tail(&forwarding_node)
    );
    qemu_io(&forwarding, &["read -P 0x31 0 4M"]);

    // Unknown nodes are refused with the reason.
    let error = cluster.fails(&["volume", "uri", "vol-e", "-n", "openebs", "--node", "nope"]);
    assert!(error.contains("unknown node nope"), "{error}");
    // So is an unknown volume, at once rather than after the wait's timeout.
    let asked = std::time::Instant::now();
    let error = cluster.fails(&["volume", "uri", "nope", "-n", "openebs", "--timeout", "5m"]);
    assert!(error.contains("volume nope not found"), "{error}");
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(60),
        "{error}"
    );
}

#[test]
fn a_client_retrying_on_a_forwarding_uri_gets_io_back_after_the_target_agent_restarts() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-r",
        "--size",
        "128Mi",
        "--replicas",
        "3",
    ]);
    cluster.uri("vol-r");
    let target = cluster.target_node("vol-r");
    let (forwarding_node, forwarding) = endpoints(&cluster, "vol-r")
        .into_iter()
        .find(|(node, _)| *node != target)
        .unwrap();
    wait_until_served(&forwarding);
    qemu_io(
        &forwarding,
        &["write -P 0x55 0 16M", "write -P 0x66 16M 1M", "flush"],
    );

    // A connection through the forwarder is open when the target's agent dies: it is closed
    // promptly (so the client reconnects), not left hanging.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime
        .block_on(tandem_nbd::Client::connect(&forwarding))
        .expect("connect through the forwarding node");
    // And qemu's NBD driver with reconnect-delay is writing through the forwarder: it
    // reconnects to the same address and sends its request in flight again, so its
    // application sees no error at all.
    let (host, port) = address_of(&forwarding)
        .rsplit_once(':')
        .map(|(host, port)| (host.to_string(), port.to_string()))
        .unwrap();
    let mut writer = Command::new("qemu-io");
    let tls = match qemu_tls_image(&forwarding) {
        Some((object, _)) => {
            writer.args(["--object", &object]);
            ",tls-creds=tls0"
        }
        None => "",
    };
    let mut writer = writer
        .arg("--image-opts")
        .arg(format!(
            "driver=nbd,server.type=inet,server.host={host},server.port={port},export=vol-r,\
             reconnect-delay=60{tls}"
        ))
        .args((0..300).flat_map(|i| {
            [
                "-c".to_string(),
                format!("write -P 0x44 {}M 1M", 32 + i % 32),
            ]
        }))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-io is installed");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(writer.stdout.take().unwrap()));
    let first = lines
        .next()
        .expect("qemu-io writes")
        .expect("qemu-io's output");
    assert!(first.starts_with("wrote"), "{first}");
    cluster.kill_9(&format!("nodes/{target}/agent.pid"));
    let killed = Instant::now();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            // A request sent now fails (an error reply, or the connection closing)...
            let _ = client.read(0, 4096).await;
            // ...and the connection ends.
            client.lost().await;
        })
        .await
        .expect("the forwarding node closes its clients' connections once the target is gone")
    });
    let closed_after = killed.elapsed();
    cluster.ok(&["up", "--nodes", "3"]);
    let mut written = 1;
    for line in lines {
        let line = line.expect("qemu-io's output");
        assert!(!line.contains("failed"), "qemu-io saw an error: {line}");
        written += usize::from(line.starts_with("wrote"));
    }
    let status = writer.wait().expect("qemu-io ends");
    let mut stderr = String::new();
    writer
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success() && written == 300,
        "{written} writes, {status}: {stderr}"
    );

    // A client retrying on the same URI gets its I/O back, every acknowledged write intact.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = try_qemu_io(&forwarding, &["read -P 0x55 0 16M", "read -P 0x66 16M 1M"]);
        let text = match result {
            Ok(text) => {
                assert!(text.contains("read 16777216/16777216 bytes"), "{text}");
                break;
            }
            Err(text) => text,
        };
        assert!(
            Instant::now() < deadline,
            "I/O through {forwarding_node} did not come back: {text}\nits agent logged:\n{}\nthe \
             target's agent on {target} logged:\n{}",
            cluster.agent_log_tail(&forwarding_node),
            cluster.agent_log_tail(&target)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    qemu_io(
        &forwarding,
        &[
            "read -P 0x44 32M 32M",
            "write -P 0x77 64M 1M",
            "read -P 0x77 64M 1M",
        ],
    );
    eprintln!("the forwarded connection closed {closed_after:?} after the kill");
}
