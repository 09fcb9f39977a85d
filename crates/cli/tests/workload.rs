//! `tandem workload`, the verifying application as a command, against a server nobody here
//! wrote (nbdkit's memory plugin): it writes, reads everything back and says so; given several
//! addresses it carries on through the one that answers.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nbdkit serving 64 MiB of memory on a free port; killed when dropped.
struct Nbdkit {
    child: Child,
    uri: String,
    _dir: tempfile::TempDir,
}

impl Nbdkit {
    /// Starts nbdkit on a port that was free a moment ago. Another test may take the same port
    /// in between, and then a probe would reach *its* server (and fail once that one stops), so
    /// readiness is nbdkit's own PID file, which it writes only once it listens; an nbdkit that
    /// lost the port exits, and another port is tried.
    fn start() -> Nbdkit {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let pid_file = dir.path().join(format!("nbdkit-{port}.pid"));
            let mut child = Command::new("nbdkit")
                .args(["--foreground", "--exit-with-parent", "-i", "127.0.0.1"])
                .args(["-p", &port.to_string()])
                .arg("-P")
                .arg(&pid_file)
                .args(["memory", "64M"])
                .stdout(Stdio::null())
                .spawn()
                .expect("nbdkit is installed (.ci/run installs it)");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if pid_file.exists() {
                    return Nbdkit {
                        child,
                        uri: format!("nbd://127.0.0.1:{port}"),
                        _dir: dir,
                    };
                }
                if child.try_wait().expect("nbdkit's status").is_some() {
                    break; // the port was taken after all: try another
                }
                assert!(Instant::now() < deadline, "nbdkit did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nbdkit could not listen on any of 5 free ports");
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workload(args: &[&str]) -> (bool, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("workload")
        .args(args)
        .args(["--duration", "1s", "--blocks", "32", "--json"])
        .env("TANDEM_LOG", "warn")
        .output()
        .expect("run tandem");
    let summary = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "not JSON ({error}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), summary)
}

#[test]
fn the_application_writes_and_reads_everything_back() {
    let server = Nbdkit::start();
    let (ok, summary) = workload(&[&server.uri]);
    assert!(ok, "{summary}");
    assert_eq!(summary["blocksGood"], 32, "{summary}");
    assert_eq!(summary["ioErrors"], 0, "{summary}");
    assert!(summary["writes"].as_u64().unwrap() >= 32, "{summary}");
    assert!(summary["flushes"].as_u64().unwrap() > 0, "{summary}");
}

#[test]
fn with_an_address_that_does_not_answer_it_carries_on_through_the_next() {
    let server = Nbdkit::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let dead = format!("nbd://{dead}");
    let (ok, summary) = workload(&[&dead, &server.uri]);
    assert!(ok, "{summary}");
    assert_eq!(summary["blocksGood"], 32, "{summary}");
    assert!(summary["ioErrors"].as_u64().unwrap() >= 1, "{summary}");
}

#[test]
fn with_no_server_at_all_it_fails_and_says_so() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let (ok, summary) = workload(&[&format!("nbd://{dead}")]);
    assert!(!ok, "{summary}");
    assert_eq!(summary["blocksUnreadable"], 32, "{summary}");
}
