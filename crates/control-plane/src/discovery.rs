//! Kubernetes API discovery, so `kubectl` finds its way: the API versions (`/api`), the groups
//! (`/apis`), each group version's resources with their kinds, short names, verbs and scope
//! (`/api/v1`, `/apis/cstor.openebs.io/v1`), and the server version (`/version`).

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tandem_objects::Kind;

/// The group cStor's kinds belong to, and its one version.
const GROUP: &str = "cstor.openebs.io";
const VERSION: &str = "v1";

/// The verbs every kind serves (what `kubectl api-resources -o wide` lists).
const VERBS: [&str; 8] = [
    "create",
    "delete",
    "get",
    "list",
    "patch",
    "update",
    "watch",
    "deletecollection",
];

/// The discovery routes, to merge into the API's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/api", get(|| async { Json(api_versions()) }))
        .route("/apis", get(|| async { Json(api_groups()) }))
        .route("/api/v1", get(|| async { Json(resources("v1")) }))
        .route(
            &format!("/apis/{GROUP}/{VERSION}"),
            get(|| async { Json(resources(&format!("{GROUP}/{VERSION}"))) }),
        )
        .route("/version", get(|| async { Json(server_version()) }))
}

fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    })
}

fn api_groups() -> Value {
    let version = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{
            "name": GROUP,
            "versions": [version.clone()],
            "preferredVersion": version,
        }],
    })
}

/// The resources of `group_version` ("v1" for the core group, where events live).
fn resources(group_version: &str) -> Value {
    let core = group_version == "v1";
    let mut list = Vec::new();
    for kind in Kind::ALL {
        if (kind == Kind::Event) != core {
            continue;
        }
        list.push(json!({
            "name": kind.plural(),
            "singularName": kind.singular(),
            "namespaced": true,
            "kind": kind.name(),
            "verbs": VERBS,
            "shortNames": [kind.short_name()],
        }));
        if kind != Kind::Event {
            list.push(json!({
                "name": format!("{}/status", kind.plural()),
                "singularName": "",
                "namespaced": true,
                "kind": kind.name(),
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    })
}

fn server_version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": format!("v1.32.0+tandem-{}", env!("CARGO_PKG_VERSION")),
        "platform": "linux/amd64",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_discoverable_with_its_short_name_in_its_group() {
        let cstor = resources("cstor.openebs.io/v1");
        let names: Vec<&str> = cstor["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|resource| resource["shortNames"][0].as_str())
            .collect();
        assert_eq!(names, ["cspc", "cspi", "cvc", "cv", "cvr"]);
        let core = resources("v1");
        assert_eq!(core["resources"][0]["name"], "events");
        assert_eq!(core["resources"].as_array().unwrap().len(), 1);
    }
}
