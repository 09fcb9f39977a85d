//! New pool clusters and volume configs: cStor's CSPC webhook messages, Tandem's limits, and
//! what a new CVC must say.

use tandem_objects::*;

fn cspc(body: &str) -> CStorPoolCluster {
    let yaml = format!(
        "apiVersion: cstor.openebs.io/v1\nkind: CStorPoolCluster\nmetadata:\n  name: cspc-a\nspec:\n{body}"
    );
    CStorPoolCluster::try_from(parse_yaml(&yaml).unwrap()).unwrap()
}

fn pool_entry(node: &str, device: &str, raid: &str) -> String {
    format!(
        "  - nodeSelector: {{kubernetes.io/hostname: {node}}}\n    dataRaidGroups: \
         [{{blockDevices: [{{blockDeviceName: {device}}}]}}]\n    poolConfig: \
         {{dataRaidGroupType: {raid}}}\n"
    )
}

fn refusal(cspc: &CStorPoolCluster) -> String {
    validate_cspc(cspc).unwrap_err().to_string()
}

#[test]
fn pool_clusters() {
    let good = cspc(&format!(
        "  pools:\n{}{}",
        pool_entry("n1", "d1", "stripe"),
        pool_entry("n2", "d2", "stripe")
    ));
    assert_eq!(validate_cspc(&good), Ok(()));
    assert_eq!(
        refusal(&cspc("  pools: []\n")),
        "pools in cspc should have at least one item"
    );
    assert_eq!(
        refusal(&cspc(&format!(
            "  pools:\n{}{}",
            pool_entry("n1", "d1", "stripe"),
            pool_entry("n1", "d2", "stripe")
        ))),
        "invalid cspc: duplicate node n1 entry"
    );
    assert_eq!(
        refusal(&cspc(&format!(
            "  pools:\n{}{}",
            pool_entry("n1", "d1", "stripe"),
            pool_entry("n2", "d1", "stripe")
        ))),
        "invalid cspc: cspc {cspc-a} has duplicate blockdevices entries [d1]"
    );
    assert_eq!(
        refusal(&cspc(&format!(
            "  pools:\n{}",
            pool_entry("n1", "d1", "raid7")
        ))),
        "unsupported dataRaidGroupType 'raid7' specified"
    );
    assert!(refusal(&cspc(&format!(
        "  pools:\n{}",
        pool_entry("n1", "d1", "mirror")
    )))
    .starts_with(
        "unsupported dataRaidGroupType 'mirror' specified: a Tandem pool is one directory"
    ));
    let no_raid_type = cspc(
        "  pools:\n  - nodeSelector: {kubernetes.io/hostname: n1}\n    dataRaidGroups: [{blockDevices: [{blockDeviceName: d1}]}]\n",
    );
    assert_eq!(refusal(&no_raid_type), "missing dataRaidGroupType");
    let no_node = cspc(
        "  pools:\n  - nodeSelector: {zone: a}\n    dataRaidGroups: [{blockDevices: [{blockDeviceName: d1}]}]\n    poolConfig: {dataRaidGroupType: stripe}\n",
    );
    assert_eq!(
        refusal(&no_node),
        "invalid cspc cspc-a: spec.pools[0].nodeSelector must name its node with kubernetes.io/hostname"
    );
    let threshold = cspc(
        "  pools:\n  - nodeSelector: {kubernetes.io/hostname: n1}\n    dataRaidGroups: [{blockDevices: [{blockDeviceName: d1}]}]\n    poolConfig: {dataRaidGroupType: stripe, roThresholdLimit: 0}\n",
    );
    assert!(refusal(&threshold).contains("roThresholdLimit is 0; it is a percentage from 1 to 100"));
    let compression = cspc(
        "  pools:\n  - nodeSelector: {kubernetes.io/hostname: n1}\n    dataRaidGroups: [{blockDevices: [{blockDeviceName: d1}]}]\n    poolConfig: {dataRaidGroupType: stripe, compression: zstd}\n",
    );
    assert_eq!(
        refusal(&compression),
        "unsupported compression 'zstd' specified"
    );
    let no_devices = cspc(
        "  pools:\n  - nodeSelector: {kubernetes.io/hostname: n1}\n    dataRaidGroups: [{blockDevices: []}]\n    poolConfig: {dataRaidGroupType: stripe}\n",
    );
    assert_eq!(
        refusal(&no_devices),
        "stripe raid group should have atleast one disk"
    );
}

fn cvc(labels: &str, replicas: u32, pools: &str) -> CStorVolumeConfig {
    let yaml = format!(
        "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\nmetadata:\n  name: pvc-1\n{labels}\
         spec:\n  capacity: {{storage: 5Gi}}\n  provision: {{capacity: {{storage: 5Gi}}, replicaCount: {replicas}}}\n{pools}"
    );
    CStorVolumeConfig::try_from(parse_yaml(&yaml).unwrap()).unwrap()
}

#[test]
fn new_volume_configs() {
    let label = "  labels: {openebs.io/cstor-pool-cluster: cspc-a}\n";
    assert_eq!(validate_new_cvc(&cvc(label, 2, "")), Ok(()));
    let message = |cvc: CStorVolumeConfig| validate_new_cvc(&cvc).unwrap_err().to_string();
    assert!(message(cvc("", 2, ""))
        .starts_with("cvc pvc-1: missing label openebs.io/cstor-pool-cluster"));
    assert_eq!(
        message(cvc(label, 0, "")),
        "cvc pvc-1: spec.provision.replicaCount is 0; a volume has 1 to 5 replicas"
    );
    assert_eq!(
        message(cvc(label, 6, "")),
        "cvc pvc-1: spec.provision.replicaCount is 6; a volume has 1 to 5 replicas"
    );
    assert_eq!(
        message(cvc(
            label,
            2,
            "  policy: {replicaPoolInfo: [{poolName: p1}]}\n"
        )),
        "failed to distribute cvrs: incorrect number of pool names in cvc policy: expected 2 got 1"
    );
}
