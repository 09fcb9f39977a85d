//! Reading objects from YAML and JSON (the seed's CVC, located errors, `---` streams) and writing
//! them back (round trips, clean output).

use std::collections::BTreeMap;

use tandem_objects::*;

const SEED_CVC: &str = include_str!("../fixtures/seed-cvc.yaml");
/// The seed's CVC exactly as the walk-through writes it (minus its "…" lines): `name` at the top.
const SEED_CVC_AS_WRITTEN: &str = include_str!("../fixtures/seed-cvc-as-written.yaml");
const VOLUME: &str = "pvc-d1b26676-5035-4e5b-b564-68869b023306";

/// Parses `yaml` as one object; expects either success or exactly `expected_error` as printed.
fn check(yaml: &str, expected_error: Option<&str>) {
    let actual = parse_yaml(yaml)
        .map(|_| ())
        .map_err(|error| error.to_string());
    let expected = match expected_error {
        None => Ok(()),
        Some(message) => Err(message.to_string()),
    };
    assert_eq!(actual, expected, "parsing:\n{yaml}");
}

#[test]
fn the_seed_cvc_parses() {
    let object = parse_yaml(SEED_CVC).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(object.kind(), Kind::CStorVolumeConfig);
    let cvc = CStorVolumeConfig::try_from(object).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(cvc.name(), VOLUME);
    assert_eq!(cvc.metadata.namespace, "openebs");
    assert_eq!(cvc.spec.capacity.storage, Quantity::from_bytes(5 << 30));
    assert_eq!(cvc.spec.capacity.storage.to_string(), "5Gi");
    assert_eq!(
        cvc.desired_pool_names(),
        ["cspc-stripe-pool-6qkw", "cspc-stripe-pool-pn9p"]
    );
    assert_eq!(cvc.status.phase, CStorVolumeConfigPhase::Bound);
    assert_eq!(
        cvc.current_pool_names(),
        ["cspc-stripe-pool-6qkw", "cspc-stripe-pool-pn9p"]
    );
    assert!(!cvc.is_scaling_in_progress());
}

#[test]
fn the_seed_cvc_as_written_gets_a_pointer_to_metadata_name() {
    check(
        SEED_CVC_AS_WRITTEN,
        Some("line 3, column 7: CStorVolumeConfig: `name` must be under `metadata` (metadata.name), not at the top level"),
    );
}

#[test]
fn the_seed_cvc_prints_back_as_written() {
    let object = parse_yaml(SEED_CVC).unwrap_or_else(|error| panic!("{error}"));
    let expected = "\
apiVersion: cstor.openebs.io/v1
kind: CStorVolumeConfig
metadata:
  name: pvc-d1b26676-5035-4e5b-b564-68869b023306
  namespace: openebs
spec:
  capacity:
    storage: 5Gi
  policy:
    replicaPoolInfo:
    - poolName: cspc-stripe-pool-6qkw
    - poolName: cspc-stripe-pool-pn9p
status:
  phase: Bound
  poolInfo:
  - cspc-stripe-pool-6qkw
  - cspc-stripe-pool-pn9p
";
    assert_eq!(object.to_yaml(), expected);
}

const KNOWN_KINDS: &str = "known kinds: cspc (CStorPoolCluster), cspi (CStorPoolInstance), \
                           cvc (CStorVolumeConfig), cv (CStorVolume), cvr (CStorVolumeReplica), ev (Event)";

#[test]
fn header_errors_name_the_problem_and_its_place() {
    let unknown_kind = format!("line 2, column 7: unknown kind \"CStorPool\"; {KNOWN_KINDS}");
    let lower_case_kind = format!(
        "line 2, column 7: unknown kind \"cstorvolumeconfig\" (did you mean \"CStorVolumeConfig\"? \
         `kind` is case-sensitive); {KNOWN_KINDS}"
    );
    let numeric_kind = format!("line 2, column 7: unknown kind \"7\"; {KNOWN_KINDS}");
    let missing_kind = format!("line 1, column 1: the object has no `kind`; {KNOWN_KINDS}");
    let table: &[(&str, Option<&str>)] = &[
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorPool\nmetadata:\n  name: a\n",
            Some(&unknown_kind),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: cstorvolumeconfig\nmetadata:\n  name: a\n",
            Some(&lower_case_kind),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: 7\nmetadata:\n  name: a\n",
            Some(&numeric_kind),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nmetadata:\n  name: a\n",
            Some(&missing_kind),
        ),
        (
            "apiVersion: openebs.io/v1alpha1\nkind: CStorVolumeConfig\nmetadata:\n  name: a\n",
            Some("line 1, column 13: CStorVolumeConfig has apiVersion \"openebs.io/v1alpha1\", but it must be \"cstor.openebs.io/v1\""),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: Event\nmetadata:\n  name: a\n",
            Some("line 1, column 13: Event has apiVersion \"cstor.openebs.io/v1\", but it must be \"v1\""),
        ),
        (
            "kind: CStorVolume\nmetadata:\n  name: a\n",
            Some("line 1, column 1: CStorVolume has no `apiVersion`; it must be \"cstor.openebs.io/v1\""),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolume\nmetadata:\n  namespace: openebs\n",
            Some("line 4, column 3: CStorVolume has no metadata.name"),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolume\nmetadata:\n  name: \"\"\n",
            Some("line 4, column 3: CStorVolume has no metadata.name"),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolume\nspec: {}\n",
            Some("line 1, column 1: CStorVolume has no metadata.name"),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolume\nmetadata:\n  name: Pool_A\n",
            Some("line 4, column 9: CStorVolume metadata.name: \"Pool_A\" is not valid: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolume\nmetadata:\n  name: a\n  namespace: open.ebs\n",
            Some("line 5, column 14: CStorVolume metadata.namespace: \"open.ebs\" is not valid: use lower-case letters, digits, '-', starting and ending with a letter or digit"),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolume\nmetadata:\n  name: a\n  namespace: \"\"\n",
            Some("line 5, column 14: CStorVolume metadata.namespace: must not be empty"),
        ),
        (
            "- apiVersion: cstor.openebs.io/v1\n- kind: CStorVolume\n",
            Some("line 1, column 1: an object must be a mapping with apiVersion, kind, metadata and spec, not a list"),
        ),
        ("just words\n", Some("line 1, column 1: an object must be a mapping with apiVersion, kind, metadata and spec, not a string")),
        ("", Some("the input holds no object")),
        ("# only a comment\n---\n", Some("the input holds no object")),
        (
            "apiVersion: v1\nkind: Event\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Event\nmetadata:\n  name: b\n",
            Some("expected one object, but the input holds 2 documents separated by ---; read it as a stream to get them all"),
        ),
    ];
    for (yaml, expected) in table {
        check(yaml, *expected);
    }
}

/// A CVC document whose `spec` is `spec_yaml` (indented by two), so each case shows one field.
fn cvc_with_spec(spec_yaml: &str) -> String {
    format!(
        "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\nmetadata:\n  name: a\nspec:\n{spec_yaml}"
    )
}

#[test]
fn field_errors_name_the_path_line_and_column() {
    let table: &[(&str, Option<&str>)] = &[
        ("  provision:\n    replicaCount: 2\n", None),
        (
            "  provision:\n    replicaCount: two\n",
            Some("line 7, column 19: invalid CStorVolumeConfig: spec.provision.replicaCount: invalid type: string \"two\", expected u32"),
        ),
        (
            "  provision:\n    replicaCount: -1\n",
            Some("line 7, column 19: invalid CStorVolumeConfig: spec.provision.replicaCount: invalid type: integer `-1`, expected u32"),
        ),
        (
            "  policy:\n    replicaPoolinfo:\n    - poolName: cspc-stripe-pool-psz5\n",
            Some("line 7, column 5: invalid CStorVolumeConfig: spec.policy: unknown field `replicaPoolinfo`, expected one of `provision`, `target`, `replica`, `replicaPoolInfo`"),
        ),
        (
            "  policy:\n    replicaPoolInfo:\n    - pool: cspc-stripe-pool-psz5\n",
            Some("line 8, column 7: invalid CStorVolumeConfig: spec.policy.replicaPoolInfo[0]: unknown field `pool`, expected `poolName`"),
        ),
        (
            "  policy:\n    replicaPoolInfo: cspc-stripe-pool-psz5\n",
            Some("line 7, column 22: invalid CStorVolumeConfig: spec.policy.replicaPoolInfo: invalid type: string \"cspc-stripe-pool-psz5\", expected a sequence"),
        ),
        (
            "  capacity:\n    storage: 5GB\n",
            Some("line 7, column 14: invalid CStorVolumeConfig: spec.capacity.storage: invalid size \"5GB\": unknown unit \"GB\"; did you mean \"G\"? (units are case-sensitive)"),
        ),
        (
            "  capacity:\n    storage: 1073741824\n",
            None,
        ),
        (
            "  capacity:\n    storage: 5Gi\n  resources:\n    limits: {}\n",
            Some("line 8, column 3: invalid CStorVolumeConfig: spec: unknown field `resources`, expected one of `capacity`, `cstorVolumeRef`, `cstorVolumeSource`, `provision`, `policy`"),
        ),
    ];
    for (spec_yaml, expected) in table {
        check(&cvc_with_spec(spec_yaml), *expected);
    }
}

#[test]
fn other_field_errors() {
    let table: &[(&str, Option<&str>)] = &[
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\nmetadata:\n  name: a\nstatus:\n  phase: Bond\n",
            Some("line 6, column 10: invalid CStorVolumeConfig: status.phase: unknown variant `Bond`, expected one of `Pending`, `Bound`, `Failed`"),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\nmetadata:\n  name: a\n  lables:\n    x: y\n",
            Some("line 5, column 3: invalid CStorVolumeConfig: metadata: unknown field `lables`, expected one of `name`, `namespace`, `uid`, `resourceVersion`, `creationTimestamp`, `deletionTimestamp`, `labels`, `annotations`, `finalizers`, `ownerReferences`, `generation`, `managedFields`, `selfLink`, `generateName`"),
        ),
        // An unquoted YAML scalar is read as the string the field wants, as Kubernetes does.
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\nmetadata:\n  name: a\n  labels:\n    openebs.io/version: 3.5\n",
            None,
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\nmetadata:\n  name: a\n  labels:\n    openebs.io/version: {major: 3}\n",
            Some("line 6, column 25: invalid CStorVolumeConfig: metadata.labels.openebs.io/version: invalid type: map, expected a string"),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorPoolInstance\nmetadata:\n  name: a\nstatus:\n  phase: online\n",
            Some("line 6, column 10: invalid CStorPoolInstance: status.phase: unknown variant `online`, expected one of ``, `ONLINE`, `OFFLINE`, `DEGRADED`, `FAULTED`, `REMOVED`, `UNAVAIL`, `Error`, `DeletionFailed`, `Invalid`, `ErrorDuplicate`, `Pending`, `Init`, `PoolCreationFailed`"),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeReplica\nmetadata:\n  name: a\nstatus:\n  phase: Rebuild\n",
            Some("line 6, column 10: invalid CStorVolumeReplica: status.phase: unknown variant `Rebuild`, expected one of ``, `Init`, `Recreate`, `Offline`, `Degraded`, `NewReplicaDegraded`, `Rebuilding`, `ReconstructingNewReplica`, `Healthy`, `Error`, `DeletionFailed`, `Invalid`"),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\nmetadata:\n  name: a\nspec: [\n",
            Some("line 6, column 1: did not find expected node content, while parsing a flow node"),
        ),
        (
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\nmetadata:\n  name: a\n\tspec: {}\n",
            Some("line 5, column 1: found a tab character that violates indentation, while scanning a plain scalar at line 4 column 9"),
        ),
    ];
    for (yaml, expected) in table {
        check(yaml, *expected);
    }
}

#[test]
fn bookkeeping_that_cstor_prints_is_accepted_and_dropped() {
    let printed_by_kubectl = "\
apiVersion: cstor.openebs.io/v1
kind: CStorVolumeReplica
metadata:
  name: pvc-d1b26676-5035-4e5b-b564-68869b023306-cspc-stripe-pool-6qkw
  namespace: openebs
  generation: 4
  selfLink: /apis/cstor.openebs.io/v1/namespaces/openebs/cstorvolumereplicas/x
  managedFields:
  - manager: pool-manager
  finalizers:
  - cstorvolumereplica.openebs.io/finalizer
spec:
  capacity: 5G
  replicaid: 6BD7E7CA5CB4DB0E
  targetIP: 10.102.5.174
status:
  phase: Healthy
  capacity:
    total: 1.26G
    used: 1.47G
versionDetails:
  autoUpgrade: false
  desired: 3.5.0
  status:
    current: 3.5.0
";
    let object = parse_yaml(printed_by_kubectl).unwrap_or_else(|error| panic!("{error}"));
    let replica = CStorVolumeReplica::try_from(object).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(replica.spec.replica_id, "6BD7E7CA5CB4DB0E");
    assert_eq!(replica.status.phase, CStorVolumeReplicaPhase::Healthy);
    assert_eq!(replica.status.capacity.used.to_short_string(), "1.47G");
    assert_eq!(replica.status.capacity.total.to_short_string(), "1.26G");
    let printed_back = Object::from(replica).to_yaml();
    for dropped in ["generation", "selfLink", "managedFields", "versionDetails"] {
        assert!(
            !printed_back.contains(dropped),
            "{dropped} in:\n{printed_back}"
        );
    }
}

#[test]
fn a_stream_reads_every_object_in_order_and_skips_empty_documents() {
    let stream = "\
---
apiVersion: cstor.openebs.io/v1
kind: CStorPoolCluster
metadata:
  name: cspc-stripe-pool
spec:
  pools:
  - nodeSelector:
      kubernetes.io/hostname: e2e1-node1
    dataRaidGroups:
    - blockDevices:
      - blockDeviceName: blockdevice-1
    poolConfig:
      dataRaidGroupType: stripe
---
# nothing here
---
apiVersion: cstor.openebs.io/v1
kind: CStorVolumeConfig
metadata:
  name: pvc-1
spec:
  capacity:
    storage: 5Gi
---
apiVersion: v1
kind: Event
metadata:
  name: pvc-1.17a3f0c2d4
type: Normal
reason: ScalingVolumeReplicas
message: successfully scaled volume replicas to 3
involvedObject:
  kind: CStorVolumeConfig
  name: pvc-1
  namespace: openebs
source:
  component: cstorvolumeclaim-controller
count: 2
---
";
    let objects = parse_yaml_stream(stream).unwrap_or_else(|error| panic!("{error}"));
    let kinds_and_names: Vec<(Kind, &str)> = objects
        .iter()
        .map(|object| (object.kind(), object.name()))
        .collect();
    assert_eq!(
        kinds_and_names,
        [
            (Kind::CStorPoolCluster, "cspc-stripe-pool"),
            (Kind::CStorVolumeConfig, "pvc-1"),
            (Kind::Event, "pvc-1.17a3f0c2d4"),
        ]
    );
    let event = Event::try_from(objects[2].clone()).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(event.event_type, EventType::Normal);
    assert_eq!(event.count, 2);
    assert_eq!(event.source.component, "cstorvolumeclaim-controller");
}

#[test]
fn a_stream_error_names_the_document_and_the_line() {
    let check_stream = |stream: &str, expected: &str| {
        let actual = parse_yaml_stream(stream)
            .map(|_| ())
            .map_err(|error| error.to_string());
        assert_eq!(actual, Err(expected.to_string()), "parsing:\n{stream}");
    };
    let good = "apiVersion: v1\nkind: Event\nmetadata:\n  name: a\n";
    check_stream(
        &format!("{good}---\n{good}---\napiVersion: v1\nkind: Event\nmetadata:\n  name: c\ncount: many\n"),
        "document 3, line 15, column 8: invalid Event: count: invalid type: string \"many\", expected u32",
    );
    check_stream(
        &format!("{good}---\napiVersion: v1\nkind: Evnt\nmetadata:\n  name: b\n"),
        &format!("document 2, line 7, column 7: unknown kind \"Evnt\"; {KNOWN_KINDS}"),
    );
    check_stream(
        &format!("{good}---\nkind: [\n"),
        "document 2, line 7, column 1: did not find expected node content, while parsing a flow node",
    );
    check_stream("---\n---\n", "the input holds no object");
}

#[test]
fn json_errors_are_located_too() {
    let check_json = |json: &str, expected: Result<Kind, &str>| {
        let actual = parse_json(json)
            .map(|object| object.kind())
            .map_err(|error| error.to_string());
        assert_eq!(actual, expected.map_err(str::to_string), "parsing:\n{json}");
    };
    check_json(
        "{\n  \"apiVersion\": \"cstor.openebs.io/v1\",\n  \"kind\": \"CStorVolume\",\n  \"metadata\": {\"name\": \"pvc-1\"}\n}",
        Ok(Kind::CStorVolume),
    );
    check_json(
        "{\n  \"apiVersion\": \"cstor.openebs.io/v1\",\n  \"kind\": \"Nope\",\n  \"metadata\": {\"name\": \"pvc-1\"}\n}",
        Err(&format!("line 3, column 16: unknown kind \"Nope\"; {KNOWN_KINDS}")),
    );
    check_json(
        "{\n  \"apiVersion\": \"cstor.openebs.io/v1\",\n  \"kind\": \"CStorVolume\",\n  \"metadata\": {\"name\": \"pvc-1\"},\n  \"spec\": {\"replicationFactor\": \"3\"}\n}",
        Err("line 5, column 35: invalid CStorVolume: invalid type: string \"3\", expected u32"),
    );
    check_json("{\"kind\": }", Err("line 1, column 10: expected value"));
    check_json(
        "{\"apiVersion\": \"v1\", \"kind\": \"Event\", \"metadata\": {\"name\": \"a\"}} x",
        Err("line 1, column 66: trailing characters"),
    );
    check_json("null", Err("the input holds no object"));
}

// ---------------------------------------------------------------------------------------------
// Round trips

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn full_metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.to_string(),
        namespace: "openebs".to_string(),
        uid: "0b9f2f6e-2f0c-4c55-8d1a-6f7f3e0d1c2b".to_string(),
        resource_version: "42".to_string(),
        creation_timestamp: "2026-11-23T20:49:46Z".to_string(),
        deletion_timestamp: String::new(),
        labels: labels(&[(LABEL_CSTOR_POOL_CLUSTER, "cspc-stripe-pool")]),
        annotations: labels(&[("openebs.io/volumeID", "pvc-1")]),
        finalizers: vec![FINALIZER_CSTOR_VOLUME_REPLICA.to_string()],
        owner_references: vec![OwnerReference {
            api_version: CSTOR_API_VERSION.to_string(),
            kind: "CStorVolume".to_string(),
            name: "pvc-1".to_string(),
            uid: "u-1".to_string(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }],
    }
}

fn one_of_each_kind() -> Vec<Object> {
    let pool_config = PoolConfig {
        data_raid_group_type: "stripe".to_string(),
        write_cache_group_type: String::new(),
        thick_provision: false,
        compression: "lz4".to_string(),
        ro_threshold_limit: Some(85),
    };
    let raid_group = RaidGroup {
        block_devices: vec![BlockDevice {
            block_device_name: "blockdevice-1".to_string(),
            capacity: Some(10_000_000_000),
            dev_link: "/var/lib/tandem/pools/a".to_string(),
        }],
    };
    let condition = Condition {
        condition_type: "PoolManagerAvailable".to_string(),
        status: "True".to_string(),
        last_update_time: "2026-11-23T20:49:46Z".to_string(),
        reason: "MinimumPoolManagersAvailable".to_string(),
        message: "Pool manager(s) have minimum available pod".to_string(),
        ..Condition::default()
    };
    let pool_cluster = CStorPoolCluster {
        metadata: full_metadata("cspc-stripe-pool"),
        spec: CStorPoolClusterSpec {
            pools: vec![PoolSpec {
                node_selector: labels(&[(LABEL_HOSTNAME, "e2e1-node1")]),
                data_raid_groups: vec![raid_group.clone()],
                write_cache_raid_groups: vec![],
                pool_config: pool_config.clone(),
            }],
        },
        status: CStorPoolClusterStatus {
            provisioned_instances: 3,
            desired_instances: 3,
            healthy_instances: 3,
            conditions: vec![condition],
        },
    };
    let pool_instance = CStorPoolInstance {
        metadata: full_metadata("cspc-stripe-pool-6qkw"),
        spec: CStorPoolInstanceSpec {
            host_name: "e2e1-node1".to_string(),
            node_selector: labels(&[(LABEL_HOSTNAME, "e2e1-node1")]),
            pool_config,
            data_raid_groups: vec![raid_group],
            write_cache_raid_groups: vec![],
        },
        status: CStorPoolInstanceStatus {
            phase: CStorPoolInstancePhase::Online,
            capacity: CStorPoolInstanceCapacity {
                used: Quantity::from_bytes(1_260_000_000),
                free: Quantity::from_bytes(8_370_000_000),
                total: Quantity::from_bytes(9_630_000_000),
                provisioned: None,
                zfs: Some(ZfsCapacity {
                    logical_used: Quantity::from_bytes(1_470_000_000),
                }),
            },
            read_only: false,
            provisioned_replicas: 2,
            healthy_replicas: 2,
            conditions: vec![],
        },
    };
    let volume_config = CStorVolumeConfig {
        metadata: full_metadata("pvc-1"),
        spec: CStorVolumeConfigSpec {
            capacity: StorageCapacity::new(Quantity::from_bytes_binary(5 << 30)),
            cstor_volume_ref: Some(ObjectReference {
                api_version: CSTOR_API_VERSION.to_string(),
                kind: "CStorVolume".to_string(),
                namespace: "openebs".to_string(),
                name: "pvc-1".to_string(),
                ..ObjectReference::default()
            }),
            cstor_volume_source: String::new(),
            provision: VolumeProvision {
                capacity: StorageCapacity::new(Quantity::from_bytes_binary(5 << 30)),
                replica_count: 2,
            },
            policy: CStorVolumePolicySpec {
                provision: PolicyProvision {
                    replica_affinity: true,
                    block_size: Some(4096),
                },
                target: TargetPolicy {
                    queue_depth: "32".to_string(),
                    lu_workers: Some(6),
                    monitor: false,
                    replication_factor: None,
                },
                replica: ReplicaPolicy {
                    zvol_workers: "1".to_string(),
                    compression: "lz4".to_string(),
                },
                replica_pool_info: vec![
                    ReplicaPoolInfo::new("cspc-stripe-pool-6qkw"),
                    ReplicaPoolInfo::new("cspc-stripe-pool-pn9p"),
                ],
            },
        },
        status: CStorVolumeConfigStatus {
            phase: CStorVolumeConfigPhase::Bound,
            pool_info: vec![
                "cspc-stripe-pool-6qkw".to_string(),
                "cspc-stripe-pool-pn9p".to_string(),
            ],
            capacity: Some(StorageCapacity::new(Quantity::from_bytes_binary(5 << 30))),
            conditions: vec![],
        },
    };
    let known_replicas = labels(&[("6BD7E7CA5CB4DB0E", "1479339383221383166")]);
    let volume = CStorVolume {
        metadata: full_metadata("pvc-1"),
        spec: CStorVolumeSpec {
            capacity: Quantity::from_bytes_binary(5 << 30),
            target_ip: "10.102.5.174".to_string(),
            target_port: "3260".to_string(),
            iqn: "iqn.2016-09.com.openebs.cstor:pvc-1".to_string(),
            target_portal: "10.102.5.174:3260".to_string(),
            node_base: String::new(),
            replication_factor: 2,
            consistency_factor: 2,
            desired_replication_factor: 2,
            replica_details: ReplicaDetails {
                known_replicas: known_replicas.clone(),
            },
        },
        status: CStorVolumeStatus {
            phase: CStorVolumePhase::Healthy,
            replica_statuses: vec![ReplicaStatus {
                replica_id: "1479339383221383166".to_string(),
                mode: ReplicaMode::Healthy,
                checkpointed_io_seq: "1048576".to_string(),
                inflight_read: "0".to_string(),
                inflight_write: "0".to_string(),
                inflight_sync: "0".to_string(),
                up_time: 3600,
                quorum: "1".to_string(),
                phase: Some(CStorVolumeReplicaPhase::Healthy),
                rebuild: None,
                last_resync: Some(ResyncRecord {
                    source: "2".to_string(),
                    full: false,
                    bytes: 4096,
                    ..ResyncRecord::default()
                }),
            }],
            capacity: Quantity::from_bytes_binary(5 << 30),
            last_transition_time: "2026-11-23T20:49:46Z".to_string(),
            last_update_time: "2026-11-23T20:50:46Z".to_string(),
            message: String::new(),
            conditions: vec![],
            replica_details: ReplicaDetails { known_replicas },
            resync_history: vec![ResyncRecord {
                replica: "3".to_string(),
                source: "2".to_string(),
                full: false,
                bytes: 4096,
                started: "2026-11-23T20:50:00.000Z".to_string(),
                ended: "2026-11-23T20:50:01.250Z".to_string(),
                outcome: "Completed".to_string(),
                reason: String::new(),
            }],
        },
    };
    let replica = CStorVolumeReplica {
        metadata: full_metadata("pvc-1-cspc-stripe-pool-psz5"),
        spec: CStorVolumeReplicaSpec {
            target_ip: "10.102.5.174".to_string(),
            capacity: Quantity::from_bytes_binary(5 << 30),
            zvol_workers: "1".to_string(),
            replica_id: "6BD7E7CA5CB4DB0E".to_string(),
            compression: "lz4".to_string(),
            block_size: Some(4096),
        },
        status: CStorVolumeReplicaStatus {
            phase: CStorVolumeReplicaPhase::ReconstructingNewReplica,
            capacity: CStorVolumeReplicaCapacity {
                total: Quantity::from_bytes(42_400_000),
                used: Quantity::from_bytes(91_400_000),
            },
            last_transition_time: "2026-11-23T20:49:46Z".to_string(),
            last_update_time: String::new(),
            message: String::new(),
            snapshots: BTreeMap::new(),
            pending_snapshots: BTreeMap::new(),
            rebuild: Some(RebuildProgress {
                bytes_done: 91_400_000,
                bytes_total: 1_470_000_000,
                bytes_per_second: 50_000_000,
                eta_seconds: Some(28),
            }),
            last_resync: None,
            resync_history: vec![ResyncRecord {
                source: "2".to_string(),
                full: true,
                bytes: 1 << 30,
                started: "2026-11-23T20:48:00.000Z".to_string(),
                ended: "2026-11-23T20:48:12.500Z".to_string(),
                outcome: "Abandoned".to_string(),
                reason: "the replica was ejected: it stopped answering".to_string(),
                ..ResyncRecord::default()
            }],
        },
    };
    let event = Event {
        metadata: ObjectMeta::named("pvc-1.17a3f0c2d4"),
        event_type: EventType::Warning,
        reason: "ScalingVolumeReplicas".to_string(),
        message: "Scaling down volume replicas from 3 to 2 is in progress".to_string(),
        involved_object: ObjectReference {
            kind: "CStorVolumeConfig".to_string(),
            namespace: "openebs".to_string(),
            name: "pvc-1".to_string(),
            uid: "u-2".to_string(),
            ..ObjectReference::default()
        },
        source: EventSource {
            component: "cstorvolumeclaim-controller".to_string(),
            host: String::new(),
        },
        count: 2,
        first_timestamp: "2026-11-23T19:45:46Z".to_string(),
        last_timestamp: "2026-11-23T20:49:46Z".to_string(),
    };
    vec![
        pool_cluster.into(),
        pool_instance.into(),
        volume_config.into(),
        volume.into(),
        replica.into(),
        event.into(),
    ]
}

#[test]
fn every_kind_round_trips_through_yaml_and_json() {
    for object in one_of_each_kind() {
        let yaml = object.to_yaml();
        let from_yaml = parse_yaml(&yaml).unwrap_or_else(|error| panic!("{error} in:\n{yaml}"));
        assert_eq!(from_yaml, object, "YAML round trip of:\n{yaml}");

        let json = object.to_json();
        let from_json = parse_json(&json).unwrap_or_else(|error| panic!("{error} in:\n{json}"));
        assert_eq!(from_json, object, "JSON round trip of:\n{json}");

        // The path a store takes: plain serde, no locations.
        let from_serde: Object =
            serde_json::from_str(&json).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(from_serde, object);
    }
    let all = one_of_each_kind();
    let stream = to_yaml_stream(&all);
    assert_eq!(parse_yaml_stream(&stream), Ok(all));
}

#[test]
fn the_replica_prints_with_cstor_field_names() {
    let replica = one_of_each_kind().remove(4);
    let expected = "\
apiVersion: cstor.openebs.io/v1
kind: CStorVolumeReplica
metadata:
  name: pvc-1-cspc-stripe-pool-psz5
  namespace: openebs
  uid: 0b9f2f6e-2f0c-4c55-8d1a-6f7f3e0d1c2b
  resourceVersion: '42'
  creationTimestamp: 2026-11-23T20:49:46Z
  labels:
    openebs.io/cstor-pool-cluster: cspc-stripe-pool
  annotations:
    openebs.io/volumeID: pvc-1
  finalizers:
  - cstorvolumereplica.openebs.io/finalizer
  ownerReferences:
  - apiVersion: cstor.openebs.io/v1
    kind: CStorVolume
    name: pvc-1
    uid: u-1
    controller: true
    blockOwnerDeletion: true
spec:
  targetIP: 10.102.5.174
  capacity: 5Gi
  zvolWorkers: '1'
  replicaid: 6BD7E7CA5CB4DB0E
  compression: lz4
  blockSize: 4096
status:
  phase: ReconstructingNewReplica
  capacity:
    total: 42400k
    used: 91400k
  lastTransitionTime: 2026-11-23T20:49:46Z
  rebuild:
    bytesDone: 91400000
    bytesTotal: 1470000000
    bytesPerSecond: 50000000
    etaSeconds: 28
  resyncHistory:
  - source: '2'
    full: true
    bytes: 1073741824
    started: 2026-11-23T20:48:00.000Z
    ended: 2026-11-23T20:48:12.500Z
    outcome: Abandoned
    reason: 'the replica was ejected: it stopped answering'
";
    assert_eq!(replica.to_yaml(), expected);
}

#[test]
fn a_new_object_prints_without_empty_fields() {
    let volume_config = CStorVolumeConfig::new(
        ObjectMeta::named("pvc-1").with_label(LABEL_CSTOR_POOL_CLUSTER, "cspc-stripe-pool"),
        CStorVolumeConfigSpec {
            capacity: StorageCapacity::new(Quantity::parse("5Gi").unwrap_or_default()),
            provision: VolumeProvision {
                capacity: StorageCapacity::new(Quantity::parse("5Gi").unwrap_or_default()),
                replica_count: 2,
            },
            ..CStorVolumeConfigSpec::default()
        },
    );
    let expected = "\
apiVersion: cstor.openebs.io/v1
kind: CStorVolumeConfig
metadata:
  name: pvc-1
  namespace: openebs
  labels:
    openebs.io/cstor-pool-cluster: cspc-stripe-pool
spec:
  capacity:
    storage: 5Gi
  provision:
    capacity:
      storage: 5Gi
    replicaCount: 2
";
    assert_eq!(Object::from(volume_config).to_yaml(), expected);
}

#[test]
fn asking_for_the_wrong_kind_says_what_it_is() {
    let object = parse_yaml(SEED_CVC).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        CStorVolume::try_from(object).map_err(|error| error.to_string()),
        Err(format!(
            "expected a CStorVolume, but \"{VOLUME}\" is a CStorVolumeConfig"
        ))
    );
}
