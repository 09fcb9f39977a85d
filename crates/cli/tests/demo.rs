//! `tandem demo` end to end: the whole walk-through on a local cluster in a temporary
//! directory, with a small volume, run as a user runs it (the `tandem` binary); `tandem down`
//! afterwards, whatever happens. It runs on loopback and on network namespaces (`--netns`).

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn tandem(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env("TANDEM_DATA_DIR", data_dir)
        .env_remove("TANDEM_SERVER")
        .env("TANDEM_LOG", "warn")
        .output()
        .expect("run tandem")
}

fn text(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Stops the cluster in the directory when dropped (also when the test fails).
struct Down(tempfile::TempDir);

impl Drop for Down {
    fn drop(&mut self) {
        let output = tandem(self.0.path(), &["down"]);
        if !output.status.success() {
            eprintln!("tandem down failed: {}", text(&output));
        }
    }
}

#[test]
fn the_demo_moves_a_replica_under_load_and_loses_nothing() {
    the_demo_moves_a_replica_under_load_and_loses_nothing_on(None);
}

#[test]
fn the_demo_moves_a_replica_under_load_and_loses_nothing_on_netns() {
    if common::netns_possible() {
        the_demo_moves_a_replica_under_load_and_loses_nothing_on(Some(common::unique_prefix()));
    }
}

/// The demo twice, the second time on the running cluster; on network namespaces named after
/// `netns` if given (the second run finds them recorded).
fn the_demo_moves_a_replica_under_load_and_loses_nothing_on(netns: Option<String>) {
    let cluster = Down(tempfile::tempdir().expect("a temporary directory"));
    let dir = cluster.0.path();
    let demo = |extra: &[&str]| {
        let mut args = vec!["demo", "--size", "32Mi", "--port", "0", "--timeout", "2m"];
        if let Some(prefix) = &netns {
            args.extend(["--netns", prefix]);
        }
        args.extend_from_slice(extra);
        let output = tandem(dir, &args);
        let all = text(&output);
        assert!(output.status.success(), "the demo failed:\n{all}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let first = demo(&[]);
    for expected in [
        "== Step 1",
        "cspc-stripe-pool   3                  3                      3",
        "is Bound: 2 replicas",
        "successfully scaled volume replicas to 3",
        "copied from replica",
        "successfully scaled volume replicas to 2",
        "freed)",
        "read back 512 blocks (32 MiB) on a new connection: 512 as last written, 0 wrong, 0 \
         unreadable",
        "I/O errors         0",
        "no data lost",
        "The cluster is still running",
    ] {
        assert!(
            first.contains(expected),
            "{expected:?} missing in:\n{first}"
        );
    }

    // The cluster stays up with the volume: 2 Healthy replicas, on other nodes than at first.
    let volume = first
        .split_whitespace()
        .find(|word| word.starts_with("pvc-"))
        .expect("the volume's name");
    let replicas = tandem(
        dir,
        &[
            "get",
            "cvr",
            "-n",
            "openebs",
            "-l",
            &format!("openebs.io/persistent-volume={volume}"),
            "--no-headers",
        ],
    );
    let listed = String::from_utf8_lossy(&replicas.stdout).into_owned();
    assert_eq!(listed.lines().count(), 2, "{}", text(&replicas));
    assert!(
        listed.lines().all(|line| line.contains("Healthy")),
        "{listed}"
    );

    // Again on the running cluster (reused, not restarted), deleting its volume at the end.
    let second = demo(&["--cleanup"]);
    assert!(second.contains("control plane already running"), "{second}");
    assert!(second.contains("no data lost"), "{second}");
    assert!(second.contains("\" deleted"), "{second}");
}

#[test]
fn the_demo_needs_three_nodes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = tandem(dir.path(), &["demo", "--nodes", "2"]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the demo needs at least 3 nodes"),
        "{}",
        text(&output)
    );
    // Nothing was started.
    assert!(!dir.path().join("cluster.json").exists());
}
