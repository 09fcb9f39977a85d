//! The pool controllers' plans as tables: given the observed pool clusters, pools and node
//! agents, the actions one pass takes.

use tandem_objects::CStorPoolInstancePhase::{Empty, Offline, Online};
use tandem_objects::{
    Object, DEFAULT_RO_THRESHOLD_PERCENT, LABEL_CAS_TYPE, LABEL_CSTOR_POOL_CLUSTER, LABEL_HOSTNAME,
};

use crate::controllers::execute::{Action, Log};
use crate::controllers::fixtures::{cluster, describe, node, observed, pool, random, CLUSTER};
use crate::controllers::observe::Observed;
use crate::controllers::pools::{plan_cluster, plan_liveness};

/// Plans what a pass does for every pool cluster, then for every pool, and compares the
/// actions, one line each, with `expected`.
fn check(observed: Observed, expected: &[&str]) {
    let mut actions = Vec::new();
    for cluster in &observed.pool_clusters {
        actions.extend(plan_cluster(&observed, cluster, &mut random()));
    }
    for pool in &observed.pools {
        actions.extend(plan_liveness(&observed, pool));
    }
    let actual = describe(&actions);
    assert_eq!(actual, expected, "\nactual:\n{}\n", actual.join("\n"));
}

fn all_ready(nodes: &[&str]) -> Vec<tandem_client::NodeStatus> {
    nodes.iter().map(|name| node(name, true, "", 100)).collect()
}

// ---------------------------------------------------------------------------------------------
// Pool clusters

#[test]
fn given_a_new_cluster_of_three_nodes_when_planned_then_one_pool_per_node_and_no_counts_yet() {
    check(
        Observed {
            pool_clusters: vec![cluster(&["n1", "n2", "n3"])],
            nodes: all_ready(&["n1", "n2", "n3"]),
            ..observed()
        },
        &[
            "create pool of cspc on n1",
            "create pool of cspc on n2",
            "create pool of cspc on n3",
            "status cspc cspc: desired 3, provisioned 0, healthy 0",
        ],
    );
}

#[test]
fn given_three_pools_two_online_when_planned_then_the_counts_say_so() {
    check(
        Observed {
            pool_clusters: vec![cluster(&["n1", "n2", "n3"])],
            pools: vec![
                pool("cspc-a", "n1", Online),
                pool("cspc-b", "n2", Online),
                pool("cspc-c", "n3", Empty),
            ],
            nodes: all_ready(&["n1", "n2", "n3"]),
            ..observed()
        },
        &["status cspc cspc: desired 3, provisioned 3, healthy 2"],
    );
}

#[test]
fn given_the_counts_already_stored_when_planned_then_nothing() {
    let mut counted = cluster(&["n1", "n2"]);
    counted.status.desired_instances = 2;
    counted.status.provisioned_instances = 2;
    counted.status.healthy_instances = 2;
    check(
        Observed {
            pool_clusters: vec![counted],
            pools: vec![pool("cspc-a", "n1", Online), pool("cspc-b", "n2", Online)],
            nodes: all_ready(&["n1", "n2"]),
            ..observed()
        },
        &[],
    );
}

#[test]
fn given_a_node_removed_from_the_cluster_when_planned_then_its_pool_is_deleted() {
    let mut counted = cluster(&["n1"]);
    counted.status.desired_instances = 1;
    counted.status.provisioned_instances = 2;
    counted.status.healthy_instances = 2;
    check(
        Observed {
            pool_clusters: vec![counted],
            pools: vec![pool("cspc-a", "n1", Online), pool("cspc-b", "n2", Online)],
            nodes: all_ready(&["n1", "n2"]),
            ..observed()
        },
        &["delete CStorPoolInstance cspc-b"],
    );
}

#[test]
fn given_a_removed_pool_already_being_deleted_when_planned_then_it_is_not_deleted_again() {
    let mut leaving = pool("cspc-b", "n2", Online);
    leaving.metadata.deletion_timestamp = "2026-12-02T10:00:00Z".to_string();
    check(
        Observed {
            pool_clusters: vec![cluster(&["n1"])],
            pools: vec![pool("cspc-a", "n1", Online), leaving],
            nodes: all_ready(&["n1", "n2"]),
            ..observed()
        },
        &["status cspc cspc: desired 1, provisioned 2, healthy 2"],
    );
}

#[test]
fn given_a_pool_of_another_cluster_on_the_same_node_when_planned_then_this_cluster_gets_its_own() {
    let mut other = pool("other-a", "n1", Online);
    other
        .metadata
        .labels
        .insert(LABEL_CSTOR_POOL_CLUSTER.to_string(), "other".to_string());
    check(
        Observed {
            pool_clusters: vec![cluster(&["n1"])],
            pools: vec![other],
            nodes: all_ready(&["n1"]),
            ..observed()
        },
        &[
            "create pool of cspc on n1",
            "status cspc cspc: desired 1, provisioned 0, healthy 0",
        ],
    );
}

#[test]
fn given_a_new_pool_when_planned_then_it_is_named_labelled_and_owned_as_cstor_makes_it() {
    let mut spec_cluster = cluster(&["n1"]);
    spec_cluster.metadata.uid = "uid-of-the-cluster".to_string();
    let observed = Observed {
        pool_clusters: vec![spec_cluster.clone()],
        ..observed()
    };
    let actions = plan_cluster(&observed, &spec_cluster, &mut random());
    let Action::Log(Log::CreatingPool { pool: logged, .. }) = &actions[0] else {
        panic!("the pool's creation is logged first: {actions:?}");
    };
    let Action::Create(Object::CStorPoolInstance(created)) = &actions[1] else {
        panic!("then the pool is created: {actions:?}");
    };
    assert_eq!(logged, created.name());
    let suffix = created
        .name()
        .strip_prefix(&format!("{CLUSTER}-"))
        .expect("named after its cluster");
    assert_eq!(suffix.len(), 4);
    assert!(suffix
        .bytes()
        .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
    assert_eq!(created.metadata.label(LABEL_HOSTNAME), Some("n1"));
    assert_eq!(created.pool_cluster_name(), Some(CLUSTER));
    assert_eq!(created.metadata.label(LABEL_CAS_TYPE), Some("cstor"));
    assert_eq!(created.spec.host_name, "n1");
    assert_eq!(
        created.spec.pool_config.ro_threshold_limit,
        Some(DEFAULT_RO_THRESHOLD_PERCENT)
    );
    let owner = &created.metadata.owner_references[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("CStorPoolCluster", CLUSTER, "uid-of-the-cluster")
    );
}

// ---------------------------------------------------------------------------------------------
// Pool liveness

#[test]
fn given_an_agent_silent_past_the_timeout_when_planned_then_its_pool_goes_offline_with_a_warning() {
    check(
        Observed {
            pools: vec![pool("cspc-a", "n1", Online), pool("cspc-b", "n2", Online)],
            nodes: vec![node("n1", true, "", 100), node("n2", false, "", 4_700)],
            ..observed()
        },
        &[
            "status pool cspc-b: OFFLINE",
            "event Warning PoolOffline by Pools about CStorPoolInstance cspc-b: pool cspc-b is \
             OFFLINE: the agent on node n2 has not reported for 4s",
        ],
    );
}

#[test]
fn given_an_agent_that_never_reported_when_planned_past_the_grace_then_its_pool_goes_offline() {
    check(
        Observed {
            pools: vec![pool("cspc-a", "n1", Online)],
            ..observed()
        },
        &[
            "status pool cspc-a: OFFLINE",
            "event Warning PoolOffline by Pools about CStorPoolInstance cspc-a: pool cspc-a is \
             OFFLINE: the agent on node n1 has not reported since the control plane started",
        ],
    );
}

#[test]
fn given_a_silent_agent_within_the_grace_after_a_start_when_planned_then_nothing() {
    check(
        Observed {
            pools: vec![pool("cspc-a", "n1", Online)],
            nodes: vec![node("n1", false, "", 4_700)],
            past_agent_grace: false,
            ..observed()
        },
        &[],
    );
}

#[test]
fn given_a_pool_already_offline_when_its_agent_is_silent_then_nothing() {
    check(
        Observed {
            pools: vec![pool("cspc-a", "n1", Offline)],
            nodes: vec![node("n1", false, "", 4_700)],
            ..observed()
        },
        &[],
    );
}

#[test]
fn given_a_pool_whose_agent_reports_when_planned_then_nothing() {
    check(
        Observed {
            pools: vec![pool("cspc-a", "n1", Empty)],
            nodes: vec![node("n1", true, "", 100)],
            ..observed()
        },
        &[],
    );
}
