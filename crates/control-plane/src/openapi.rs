//! The OpenAPI v3 documents kubectl reads before `edit` and `apply`: which group versions
//! there are (`/openapi/v3`), and for each (`/openapi/v3/apis/cstor.openebs.io/v1`,
//! `/openapi/v3/api/v1`) every kind's PATCH operation, with the patch formats it takes (merge
//! and JSON patch, no strategic merge) and the `fieldValidation` parameter. kubectl's default
//! `--validate=strict` asks whether PATCH takes `fieldValidation`, and then leaves validation to
//! the server, which is strict whatever the parameter says: an unknown or duplicated field is
//! always refused, naming it. Object schemas are not described (`kubectl explain` has nothing
//! to show); `/openapi/v2` is not served (kubectl reads it only when v3 is missing).

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tandem_objects::Kind;

/// The group versions, as the paths of their documents.
const CORE: &str = "api/v1";
const CSTOR: &str = "apis/cstor.openebs.io/v1";

/// The OpenAPI routes, to merge into the API's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/openapi/v3", get(|| async { Json(root()) }))
        .route(
            &format!("/openapi/v3/{CORE}"),
            get(|| async { Json(group_version(CORE)) }),
        )
        .route(
            &format!("/openapi/v3/{CSTOR}"),
            get(|| async { Json(group_version(CSTOR)) }),
        )
}

fn root() -> Value {
    let entry = |path: &str| json!({"serverRelativeURL": format!("/openapi/v3/{path}")});
    json!({"paths": {CORE: entry(CORE), CSTOR: entry(CSTOR)}})
}

/// The document of one group version: its kinds' PATCH operations.
fn group_version(path: &str) -> Value {
    let core = path == CORE;
    let mut paths = Map::new();
    for kind in Kind::ALL {
        if (kind == Kind::Event) != core {
            continue;
        }
        let group = if core { "" } else { "cstor.openebs.io" };
        let object = json!({"schema": {"type": "object"}});
        let patch = json!({
            "tags": [path],
            "description": format!("partially update the specified {}", kind.name()),
            "operationId": format!("patch{}", kind.name()),
            "parameters": [
                {
                    "name": "fieldValidation",
                    "in": "query",
                    "description": "Unknown and duplicated fields are always refused, \
                                    whatever this says (Strict).",
                    "schema": {"type": "string", "uniqueItems": true},
                },
                {
                    "name": "fieldManager",
                    "in": "query",
                    "schema": {"type": "string", "uniqueItems": true},
                },
            ],
            "requestBody": {
                "content": {
                    "application/json-patch+json": object,
                    "application/merge-patch+json": object,
                },
                "required": true,
            },
            "responses": {"200": {"description": "OK", "content": {"application/json": object}}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {
                "group": group,
                "version": "v1",
                "kind": kind.name(),
            },
        });
        let name = format!(
            "/{path}/namespaces/{{namespace}}/{}/{{name}}",
            kind.plural()
        );
        paths.insert(name, json!({"patch": patch}));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Tandem", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_patch_takes_field_validation_and_no_strategic_merge() {
        assert_eq!(
            root()["paths"][CSTOR]["serverRelativeURL"],
            "/openapi/v3/apis/cstor.openebs.io/v1"
        );
        let cstor = group_version(CSTOR);
        let paths = cstor["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 5);
        let cvc = &paths
            ["/apis/cstor.openebs.io/v1/namespaces/{namespace}/cstorvolumeconfigs/{name}"]["patch"];
        assert_eq!(
            cvc["x-kubernetes-group-version-kind"]["kind"],
            "CStorVolumeConfig"
        );
        assert_eq!(cvc["parameters"][0]["name"], "fieldValidation");
        let content = cvc["requestBody"]["content"].as_object().unwrap();
        assert!(!content.contains_key("application/strategic-merge-patch+json"));
        let core = group_version(CORE);
        let events = &core["paths"]["/api/v1/namespaces/{namespace}/events/{name}"]["patch"];
        assert_eq!(events["x-kubernetes-group-version-kind"]["group"], "");
    }
}
