//! Thin provisioning with limits, end to end on a `tandem up` cluster: what a pool has promised
//! (`get cspi -o wide`), placement and admission refusing what would pass a pool cluster's
//! over-provisioning limit (with the numbers), a moved replica that stays thin, thick volumes
//! that reserve their space, and capacity annotations that are read or refused.

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;

/// The bytes a replica's data file takes on disk.
fn allocated(cluster: &Cluster, node: &str, volume: &str) -> u64 {
    let data = (cluster.data_dir())
        .join("nodes")
        .join(node)
        .join("pool/replicas")
        .join(volume)
        .join("data");
    std::fs::metadata(&data)
        .unwrap_or_else(|error| panic!("{}: {error}", data.display()))
        .blocks()
        * 512
}

fn create(cluster: &Cluster, name: &str, size: &str, replicas: &str) {
    cluster.ok(&[
        "volume",
        "create",
        name,
        "--size",
        size,
        "--replicas",
        replicas,
    ]);
}

#[test]
fn pools_promise_no_more_than_their_limit_and_say_how_much_they_have_promised() {
    let cluster = Cluster::up(3, "2G");
    // 2G pools allow 200 %: 3.7 GiB of replicas each. Waiting would not change that: the
    // command says so at once (not "is not Bound after 1m"), and the volume stays Pending.
    let refused = cluster.run(&[
        "volume",
        "create",
        "huge",
        "--size",
        "100Ti",
        "--replicas",
        "2",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("volume huge cannot be placed")
            && stderr.contains("cannot take a 100 TiB replica: 0 B of its 1.9 GiB are provisioned")
            && stderr.contains("allows 200% (3.7 GiB)")
            && stderr.contains("It stays Pending"),
        "{stderr}"
    );
    let pending = cluster.ok(&["get", "cvc", "huge", "-n", "openebs"]);
    assert!(pending.contains("Pending"), "{pending}");
    cluster.ok(&["delete", "cvc", "huge", "-n", "openebs"]);

    create(&cluster, "a", "1Gi", "2");
    let a_pools = bound_pools(&cluster, "a");
    let table = cluster.wait_for(
        "the pools to report what they promised",
        &["get", "cspi", "-n", "openebs", "-o", "wide"],
        |out| out.lines().filter(|line| line.contains(" 1Gi ")).count() == 2,
    );
    let header = rows(&table)[0].clone();
    assert!(header.contains(&"PROVISIONED".to_string()), "{table}");
    let plain = cluster.ok(&["get", "cspi", "-n", "openebs"]);
    assert!(
        !plain.contains("PROVISIONED"),
        "the default columns stay cStor's: {plain}"
    );

    // Every pool 1.5 GiB more; then a 1-replica volume fits only on the third pool.
    create(&cluster, "b", "1536Mi", "3");
    create(&cluster, "c", "1536Mi", "1");
    let c_pool = bound_pools(&cluster, "c").remove(0);
    assert!(!a_pools.contains(&c_pool), "{a_pools:?} {c_pool}");
    let refused = cluster.fails(&[
        "volume",
        "migrate",
        "a",
        "--from",
        &a_pools[0],
        "--to",
        &c_pool,
        "-n",
        "openebs",
    ]);
    assert!(
        refused.contains(&format!(
            "pool {c_pool} cannot take a 1 GiB replica: 3 GiB of its 1.9 GiB are provisioned, \
             and its pool cluster allows 200% (3.7 GiB)"
        )),
        "{refused}"
    );

    // Room again: the replica moves, and stays thin although its volume was trimmed whole
    // (as mkfs does) and a rebuild copies every region ever changed.
    cluster.ok(&["volume", "delete", "c", "-n", "openebs"]);
    let uri = cluster.uri("a");
    try_qemu_io(&uri, &["discard 0 1G", "write -P 0x5a 0 4M"]).expect("qemu-io writes");
    cluster.wait_for(
        "c's replica to be gone",
        &["get", "cvr", "-n", "openebs"],
        |out| !out.contains("c-cspc"),
    );
    cluster.ok(&[
        "volume",
        "migrate",
        "a",
        "--from",
        &a_pools[0],
        "--to",
        &c_pool,
        "-n",
        "openebs",
        "--wait",
    ]);
    let node = (cluster.pools().into_iter())
        .find(|(pool, _)| *pool == c_pool)
        .map(|(_, node)| node)
        .expect("the pool's node");
    let taken = allocated(&cluster, &node, "a");
    assert!(taken < 64 << 20, "the moved replica takes {taken} bytes");
    try_qemu_io(
        &cluster.uri("a"),
        &["read -P 0x5a 0 4M", "read -P 0 4M 60M"],
    )
    .expect("the data reads back");

    // A thick volume reserves its space at once, and stays thick.
    cluster.ok(&[
        "volume",
        "create",
        "t",
        "--size",
        "256Mi",
        "--replicas",
        "1",
        "--thick",
    ]);
    let t_node = cluster.replica_nodes("t").remove(0);
    assert!(allocated(&cluster, &t_node, "t") >= 256 << 20);
    let thin = r#"{"metadata":{"annotations":{"tandem.io/provisioning":"thin"}}}"#;
    let refused = cluster.fails(&[
        "patch", "cvc", "t", "-n", "openebs", "--type", "merge", "-p", thin,
    ]);
    assert!(
        refused.contains("cannot change after it is created"),
        "{refused}"
    );

    // Capacity annotations are read, or refused naming what is wrong.
    let cspc = rows(&cluster.ok(&["get", "cspc", "-n", "openebs"]))[1][0].clone();
    let bad = r#"{"metadata":{"annotations":{"tandem.io/over-provisioning-percentage":"lots"}}}"#;
    let refused = cluster.fails(&[
        "patch", "cspc", &cspc, "-n", "openebs", "--type", "merge", "-p", bad,
    ]);
    assert!(
        refused.contains("tandem.io/over-provisioning-percentage: \"lots\" is not a percentage"),
        "{refused}"
    );
    cluster.allow_over_provisioning("500");
    create(&cluster, "d", "3Gi", "2");
}
