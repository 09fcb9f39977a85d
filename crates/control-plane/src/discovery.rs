//! Kubernetes API discovery, so `kubectl` finds its way: the API versions (`/api`), the groups
//! (`/apis`), each group version's resources with their kinds, short names, verbs and scope
//! (`/api/v1`, `/apis/cstor.openebs.io/v1`), and the server version (`/version`). A client
//! that asks for aggregated discovery (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;
//! as=APIGroupDiscoveryList`, as kubectl does) gets `/api` and `/apis` with every resource in
//! one answer (`APIGroupDiscoveryList`); others get the classic documents.

use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
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
        .route(
            "/api",
            get(|headers: HeaderMap| async move {
                match aggregated(&headers) {
                    Some(version) => aggregated_answer(version, Scope::Core),
                    None => Json(api_versions()).into_response(),
                }
            }),
        )
        .route(
            "/apis",
            get(|headers: HeaderMap| async move {
                match aggregated(&headers) {
                    Some(version) => aggregated_answer(version, Scope::Groups),
                    None => Json(api_groups()).into_response(),
                }
            }),
        )
        .route("/api/v1", get(|| async { Json(resources("v1")) }))
        .route(
            &format!("/apis/{GROUP}/{VERSION}"),
            get(|| async { Json(resources(&format!("{GROUP}/{VERSION}"))) }),
        )
        .route("/version", get(|| async { Json(server_version()) }))
}

/// The version of aggregated discovery a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggregatedVersion {
    V2,
    V2beta1,
}

impl AggregatedVersion {
    fn name(self) -> &'static str {
        match self {
            AggregatedVersion::V2 => "v2",
            AggregatedVersion::V2beta1 => "v2beta1",
        }
    }
}

/// The aggregated discovery version the `Accept` header asks for before plain JSON, if any.
fn aggregated(headers: &HeaderMap) -> Option<AggregatedVersion> {
    let accept = headers.get(ACCEPT)?.to_str().ok()?;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        if parts.next() != Some("application/json") {
            continue;
        }
        let parameters: Vec<(&str, &str)> = parts.filter_map(|part| part.split_once('=')).collect();
        let parameter = |name: &str| {
            parameters
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| *value)
        };
        // A plain JSON range before any aggregated one: answer plain JSON.
        parameter("as")?;
        if parameter("g") != Some("apidiscovery.k8s.io")
            || parameter("as") != Some("APIGroupDiscoveryList")
        {
            continue;
        }
        match parameter("v") {
            Some("v2") => return Some(AggregatedVersion::V2),
            Some("v2beta1") => return Some(AggregatedVersion::V2beta1),
            _ => continue,
        }
    }
    None
}

/// Which groups an aggregated answer lists: the core group (`/api`) or the named ones
/// (`/apis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Core,
    Groups,
}

fn aggregated_answer(version: AggregatedVersion, scope: Scope) -> Response {
    let content_type = format!(
        "application/json;g=apidiscovery.k8s.io;v={};as=APIGroupDiscoveryList",
        version.name()
    );
    (
        [(CONTENT_TYPE, content_type)],
        Json(group_discovery_list(version, scope)),
    )
        .into_response()
}

/// `APIGroupDiscoveryList`: each group with its versions and their resources.
fn group_discovery_list(version: AggregatedVersion, scope: Scope) -> Value {
    let name = match scope {
        Scope::Core => "",
        Scope::Groups => GROUP,
    };
    let resources: Vec<Value> = Kind::ALL
        .into_iter()
        .filter(|kind| (*kind == Kind::Event) == (scope == Scope::Core))
        .map(|kind| {
            let response_kind = json!({"group": name, "version": VERSION, "kind": kind.name()});
            let mut resource = json!({
                "resource": kind.plural(),
                "responseKind": response_kind,
                "scope": "Namespaced",
                "singularResource": kind.singular(),
                "verbs": VERBS,
                "shortNames": [kind.short_name()],
            });
            if kind != Kind::Event {
                resource["subresources"] = json!([{
                    "subresource": "status",
                    "responseKind": response_kind,
                    "verbs": ["get", "patch", "update"],
                }]);
            }
            resource
        })
        .collect();
    let mut metadata = json!({"creationTimestamp": null});
    if !name.is_empty() {
        metadata["name"] = Value::String(name.to_string());
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{}", version.name()),
        "metadata": {},
        "items": [{
            "metadata": metadata,
            "versions": [{
                "version": VERSION,
                "resources": resources,
                "freshness": "Current",
            }],
        }],
    })
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

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, value.parse().unwrap());
        headers
    }

    #[test]
    fn aggregated_discovery_is_answered_when_asked_for_first() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
                       application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,\
                       application/json";
        assert_eq!(aggregated(&accept(kubectl)), Some(AggregatedVersion::V2));
        let beta = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";
        assert_eq!(aggregated(&accept(beta)), Some(AggregatedVersion::V2beta1));
        assert_eq!(aggregated(&accept("application/json, */*")), None);
        assert_eq!(aggregated(&HeaderMap::new()), None);
    }

    #[test]
    fn aggregated_discovery_lists_every_resource_in_its_group() {
        let groups = group_discovery_list(AggregatedVersion::V2, Scope::Groups);
        assert_eq!(groups["apiVersion"], "apidiscovery.k8s.io/v2");
        let group = &groups["items"][0];
        assert_eq!(group["metadata"]["name"], GROUP);
        let resources = group["versions"][0]["resources"].as_array().unwrap();
        let shorts: Vec<&str> = resources
            .iter()
            .map(|resource| resource["shortNames"][0].as_str().unwrap())
            .collect();
        assert_eq!(shorts, ["cspc", "cspi", "cvc", "cv", "cvr"]);
        assert_eq!(resources[2]["responseKind"]["kind"], "CStorVolumeConfig");
        assert_eq!(resources[2]["subresources"][0]["subresource"], "status");
        let core = group_discovery_list(AggregatedVersion::V2, Scope::Core);
        assert!(core["items"][0]["metadata"].get("name").is_none());
        let events = &core["items"][0]["versions"][0]["resources"];
        assert_eq!(events.as_array().unwrap().len(), 1);
        assert_eq!(events[0]["resource"], "events");
        assert_eq!(events[0]["responseKind"]["group"], "");
    }
}
