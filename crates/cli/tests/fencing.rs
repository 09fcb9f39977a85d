//! An old target that wakes up after a failover serves nothing stale: its node's agent is paused
//! (SIGSTOP) past its lease, another node takes the target over and the application overwrites
//! data there; when the old agent resumes (SIGCONT), a client still connected to the old target
//! gets an error or the new data, never the old, and the old target stops.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Sends `signal` to the process in `pid_file`; a paused process is resumed when dropped, so a
/// failing test leaves nothing stopped behind.
struct Paused {
    pid: String,
}

impl Paused {
    fn stop(cluster: &Cluster, pid_file: &str) -> Paused {
        let pid = cluster.pid(pid_file);
        signal("STOP", &pid);
        Paused { pid }
    }

    fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal("CONT", &self.pid);
    }
}

/// Runs qemu-io commands through the endpoint of the node the target runs on now, until they
/// all succeed (the volume is failing over meanwhile).
fn qemu_io_eventually(cluster: &Cluster, volume: &str, commands: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let node = cluster.target_node(volume);
        let uri = cluster
            .ok(&["volume", "uri", volume, "-n", "openebs", "--node", &node])
            .trim()
            .to_string();
        let Err(text) = try_qemu_io(&uri, commands) else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "{commands:?} on {uri} never succeeded:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_paused_target_wakes_up_fenced_and_serves_nothing_stale() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-p",
        "--size",
        "64Mi",
        "--replicas",
        "3",
    ]);
    let uri = cluster.uri("vol-p");
    if let Err(text) = try_qemu_io(&uri, &["write -P 0xaa 0 1M"]) {
        panic!("{text}");
    }
    let old_node = cluster.target_node("vol-p");

    // A client connected to the old target, which it keeps across the pause.
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let held = runtime
        .block_on(tandem_nbd::Client::connect(&uri))
        .expect("connect to the target");
    let before = runtime.block_on(held.read(0, 4096)).expect("read");
    assert!(before.iter().all(|byte| *byte == 0xaa));

    let paused = Paused::stop(&cluster, &format!("nodes/{old_node}/agent.pid"));
    cluster.wait_for(
        "another node to take the target over",
        &["get", "cv", "vol-p", "-n", "openebs", "-o", "json"],
        |out| {
            let cv: serde_json::Value = serde_json::from_str(out).unwrap_or_default();
            let node = &cv["metadata"]["annotations"]["tandem.io/target-node"];
            node.as_str().is_some_and(|node| node != old_node)
        },
    );
    qemu_io_eventually(&cluster, "vol-p", &["write -P 0xbb 0 1M"]);
    paused.resume();

    // The old target sees on waking that its read lease ran out, cannot renew it (the other
    // replicas answer the new target only), and is fenced: the held client gets an error or
    // (through whatever answers its connection) the new data, never the old.
    let answer = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(40), held.read(0, 4096)).await
    });
    match answer {
        Ok(Ok(data)) => assert!(
            data.iter().all(|byte| *byte == 0xbb),
            "the old target served stale data: {:x?}",
            &data[..16]
        ),
        Ok(Err(_)) => {}
        Err(_) => panic!("the old target never answered the held client"),
    }
    // The old node's agent stops its target; its replica rejoins the new one.
    cluster.wait_for(
        "the volume to be Healthy on the new target",
        &["get", "cv", "vol-p", "-n", "openebs"],
        |out| out.contains("Healthy"),
    );
    qemu_io_eventually(&cluster, "vol-p", &["read -P 0xbb 0 1M"]);
}

/// qemu-io with its commands coming one by one on its standard input: it connects once, at
/// the start, and keeps that connection.
struct HeldClient {
    child: std::process::Child,
    input: Option<std::process::ChildStdin>,
    output: std::sync::mpsc::Receiver<String>,
    seen: String,
}

impl HeldClient {
    fn connect(mut command: Command, uri: &str) -> HeldClient {
        use std::io::BufRead;
        let mut child = command
            .args(qemu_image(uri))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("qemu-io is installed (.ci/run installs it)");
        let stdout = child.stdout.take().expect("its output");
        let (lines, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        HeldClient {
            input: child.stdin.take(),
            child,
            output,
            seen: String::new(),
        }
    }

    /// Sends one command; its output up to the next prompt (bounded).
    fn run(&mut self, command: &str) -> String {
        use std::io::Write;
        let input = self.input.as_mut().expect("qemu-io's input");
        writeln!(input, "{command}").expect("send a command to qemu-io");
        input.flush().expect("flush");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut text = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                    // The answer ends with its "ops; ... sec" summary or a failure line.
                    if line.contains(" ops; ") || line.contains("failed") || line.contains("rror") {
                        self.seen.push_str(&text);
                        return text;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    self.seen.push_str(&text);
                    return text; // qemu-io ended: its connection is gone.
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "qemu-io did not answer {command:?} in 60 s: {}{text}",
                        self.seen
                    )
                }
            }
        }
    }
}

impl Drop for HeldClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The target's node is cut off the network (its link down) with its own replica: the volume
/// fails over and is overwritten elsewhere; when the link heals, a client connected to the old
/// target all along gets an error or the new data, never the old.
#[test]
fn a_target_cut_off_and_healed_serves_nothing_stale() {
    let Some(cluster) = Cluster::up_netns(3, "1G") else {
        return;
    };
    cluster.ok(&[
        "volume",
        "create",
        "vol-l",
        "--size",
        "64Mi",
        "--replicas",
        "3",
    ]);
    let old_node = cluster.target_node("vol-l");
    let node_uri = |node: &str| {
        cluster
            .ok(&["volume", "uri", "vol-l", "-n", "openebs", "--node", node])
            .trim()
            .to_string()
    };
    let uri = node_uri(&old_node);
    let mut held = HeldClient::connect(cluster.client("qemu-io"), &uri);
    let wrote = held.run("write -P 0xaa 0 1M");
    assert!(wrote.contains("wrote 1048576/1048576"), "{wrote}");

    cluster.cut_link(&old_node);
    cluster.wait_for(
        "another node to take the target over",
        &["get", "cv", "vol-l", "-n", "openebs", "-o", "json"],
        |out| {
            let cv: serde_json::Value = serde_json::from_str(out).unwrap_or_default();
            let node = &cv["metadata"]["annotations"]["tandem.io/target-node"];
            node.as_str().is_some_and(|node| node != old_node)
        },
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let new_node = cluster.target_node("vol-l");
        let mut qemu = cluster.client("timeout");
        qemu.args(["--kill-after=5", "30", "qemu-io"])
            .args(qemu_io_args(&node_uri(&new_node), &["write -P 0xbb 0 1M"]));
        let output = qemu.output().expect("qemu-io");
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        if output.status.success() && text.contains("wrote 1048576/1048576") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the overwrite never succeeded: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.heal_link(&old_node);

    let answer = held.run("read -P 0xbb 0 4k");
    eprintln!("the held client, after the link healed: {}", answer.trim());
    assert!(
        !answer.contains("Pattern verification failed"),
        "the old target served stale data after the link healed: {answer}"
    );
    cluster.wait_for(
        "the volume to be Healthy on the new target",
        &["get", "cv", "vol-l", "-n", "openebs"],
        |out| out.contains("Healthy"),
    );
}
