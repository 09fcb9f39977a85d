//! The real `kubectl` against a cluster's control plane, through `tandem kubeconfig`: discovery
//! (`api-resources`, short names), `get` with label selectors and `-o yaml`, `describe` with the
//! events. Skipped, with a line saying so, where kubectl is not installed (CI has it).

mod common;

use std::process::Command;

use common::*;

fn kubectl_installed() -> bool {
    let found = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        eprintln!("skipped: kubectl is not installed");
    }
    found
}

/// `kubectl ARGS` with the cluster's kubeconfig; its standard output, which must say it worked.
fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_real_kubectl_discovers_lists_selects_and_describes() {
    if !kubectl_installed() {
        return;
    }
    let cluster = Cluster::up(3, "1G");
    let kubeconfig = cluster.data_dir().join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.ok(&["kubeconfig"])).expect("write the kubeconfig");
    cluster.ok(&[
        "volume",
        "create",
        "pvc-k",
        "--size",
        "64Mi",
        "--replicas",
        "2",
    ]);

    let resources = kubectl(&kubeconfig, &["api-resources"]);
    for short in ["cspc", "cspi", "cvc", "cv", "cvr"] {
        assert!(
            resources.lines().any(|line| line
                .split_whitespace()
                .nth(1)
                .is_some_and(|column| column == short)),
            "{short} missing:\n{resources}"
        );
    }
    let clusters = kubectl(&kubeconfig, &["get", "cspc"]);
    assert!(clusters.contains("cspc-stripe-pool"), "{clusters}");
    let pools = kubectl(
        &kubeconfig,
        &[
            "get",
            "cspi",
            "-l",
            "openebs.io/cstor-pool-cluster=cspc-stripe-pool",
            "-o",
            "name",
        ],
    );
    assert_eq!(pools.lines().count(), 3, "{pools}");
    assert!(
        kubectl(&kubeconfig, &["get", "cspi", "-l", "no=such", "-o", "name"])
            .trim()
            .is_empty()
    );
    let yaml = kubectl(&kubeconfig, &["get", "cvc", "pvc-k", "-o", "yaml"]);
    assert!(yaml.contains("kind: CStorVolumeConfig"), "{yaml}");
    assert!(yaml.contains("replicaPoolInfo"), "{yaml}");
    let replicas = kubectl(&kubeconfig, &["get", "cvr", "-o", "name"]);
    assert_eq!(replicas.lines().count(), 2, "{replicas}");
    let described = kubectl(&kubeconfig, &["describe", "cvc", "pvc-k"]);
    assert!(
        described.contains("Events:")
            && described.contains("cstorvolumeconfig created successfully"),
        "{described}"
    );
}
