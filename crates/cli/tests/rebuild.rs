//! Rebuild pace and history: a volume's `tandem.io/rebuild-rate` holds its rebuild back, a
//! change of it applies to the rebuild under way, a bad value is refused naming the annotation
//! (on volumes and pool clusters alike), and the CV's and the CVR's statuses, and `describe`,
//! keep what each rebuild did.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Sets (or, with `null`, removes) annotation `key` on `kind`/`name`.
fn annotate(cluster: &Cluster, kind: &str, name: &str, key: &str, value: &str) -> Output {
    let patch = format!(r#"{{"metadata":{{"annotations":{{"{key}":{value}}}}}}}"#);
    cluster.run(&[
        "patch", kind, name, "-n", "openebs", "--type", "merge", "-p", &patch,
    ])
}

#[test]
fn a_rebuild_follows_the_volumes_pace_and_is_kept_in_its_history() {
    let cluster = Cluster::up(3, "1G");
    cluster.ok(&[
        "volume",
        "create",
        "vol-p",
        "--size",
        "128Mi",
        "--replicas",
        "2",
    ]);

    // Bad values are refused, naming the annotation, and change nothing.
    for (kind, name) in [("cvc", "vol-p"), ("cspc", "cspc-stripe-pool")] {
        let refused = annotate(&cluster, kind, name, "tandem.io/rebuild-rate", r#""fast""#);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{kind} {name}: accepted");
        assert!(
            stderr.contains("tandem.io/rebuild-rate") && stderr.contains("\"fast\""),
            "{stderr}"
        );
    }
    let refused = annotate(
        &cluster,
        "cvc",
        "vol-p",
        "tandem.io/rebuild-segments",
        r#""0""#,
    );
    assert!(!refused.status.success());

    // 64 MiB to copy, at 1 MiB/s: more than a minute unless the pace changes.
    let uri = cluster.uri("vol-p");
    try_qemu_io(&uri, &["write -P 0x6b 0 64M"]).expect("write");
    for (key, value) in [
        ("tandem.io/rebuild-rate", r#""1Mi""#),
        ("tandem.io/rebuild-segments", r#""2""#),
    ] {
        let output = annotate(&cluster, "cvc", "vol-p", key, value);
        assert!(output.status.success(), "{output:?}");
    }
    let node = free_node(&cluster, "vol-p");
    let pool = cluster.pool_on(&node);
    let (_, mut pools) = pool_info(&cluster.cvc("vol-p"));
    pools.push(pool.clone());
    let refs: Vec<&str> = pools.iter().map(String::as_str).collect();
    assert!(cluster.patch_pools("vol-p", &refs).status.success());
    let replica = format!("vol-p-{pool}");

    // The rebuild runs at the volume's pace (past its first regions: the budget lets a
    // copy start with two regions at once).
    let rebuild = |cvr: &Value| cvr["status"]["rebuild"].clone();
    cluster.wait_for(
        "the rebuild to copy 6 MiB",
        &["get", "cvr", &replica, "-n", "openebs", "-o", "json"],
        |out| {
            serde_json::from_str::<Value>(out)
                .is_ok_and(|cvr| rebuild(&cvr)["bytesDone"].as_u64().unwrap_or(0) >= 6 << 20)
        },
    );
    let progress = rebuild(&cluster.cvr(&replica));
    let rate = progress["bytesPerSecond"].as_u64().unwrap_or(0);
    assert!(
        rate <= 2 << 20,
        "capped at 1 MiB/s, measured {rate} B/s: {progress}"
    );

    // Lifted, it applies to the rebuild under way: done long before a minute.
    let output = annotate(&cluster, "cvc", "vol-p", "tandem.io/rebuild-rate", "null");
    assert!(output.status.success(), "{output:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.cvr(&replica)["status"]["phase"] != "Healthy" {
        assert!(
            Instant::now() < deadline,
            "the rebuild kept its old pace: {}",
            rebuild(&cluster.cvr(&replica))
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Both statuses keep it: from which replica, how much, full, completed.
    let history = cluster.cvr(&replica)["status"]["resyncHistory"].clone();
    let last = history
        .as_array()
        .and_then(|records| records.last())
        .unwrap_or_else(|| panic!("no history: {history}"));
    assert_eq!(last["outcome"], "Completed", "{history}");
    assert_eq!(last["full"], true, "{history}");
    assert!(last["bytes"].as_u64().unwrap_or(0) >= 64 << 20, "{history}");
    assert!(text(&last["started"]) <= text(&last["ended"]), "{history}");
    let volume_history = cluster.cv("vol-p")["status"]["resyncHistory"].clone();
    let id = text(&cluster.cvr(&replica)["spec"]["replicaid"]);
    assert!(
        volume_history.as_array().is_some_and(|records| records
            .iter()
            .any(|record| { text(&record["replica"]) == id && record["outcome"] == "Completed" })),
        "{volume_history}"
    );
    let described = cluster.ok(&["describe", "cvr", &replica, "-n", "openebs"]);
    assert!(
        described.contains("Resync History:") && described.contains("Completed"),
        "{described}"
    );
    try_qemu_io(&uri, &["read -P 0x6b 0 64M"]).expect("read back");
}
