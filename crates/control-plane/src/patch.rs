//! `PATCH` of an object, by the patch's content type: a JSON merge patch (RFC 7396,
//! `application/merge-patch+json`, also taken without a content type) or a JSON patch (RFC
//! 6902, `application/json-patch+json`). Strategic merge and apply patches are refused with
//! the answer kube-apiserver gives for custom resources. The patched object then meets the
//! same checks as an update (admission included); a patch that names a resource version must
//! find the object at that version.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde_json::Value;
use tandem_objects::parse_json;
use tandem_store::StoreError;

use crate::api::{key, kind_of, replace, Api, Part};
use crate::auth::Caller;
use crate::error::{store_error, ApiError, ErrorKind};

/// How often a patch without a resource version is tried again when another writer (a
/// controller writing status, say) changed the object between its read and its write. Such a
/// patch states no precondition, so it applies to whatever is current, as in Kubernetes.
const PATCH_ATTEMPTS_MAX: u32 = 5;

/// What kube-apiserver answers a strategic merge patch of a custom resource with.
const UNSUPPORTED_PATCH: &str = "the body of the request was in an unknown format - accepted \
media types include: application/json-patch+json, application/merge-patch+json";

/// A patch, read by its content type.
#[derive(Debug, Clone, PartialEq)]
enum Patch {
    Merge(Value),
    Json(json_patch::Patch),
}

impl Patch {
    fn read(headers: &HeaderMap, body: &str) -> Result<Patch, ApiError> {
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let not_json = |what: &str, error: serde_json::Error| {
            ApiError::bad_request(format!("{what}: {error}"))
        };
        match media.as_str() {
            "" | "application/merge-patch+json" => serde_json::from_str(body)
                .map(Patch::Merge)
                .map_err(|error| not_json("the merge patch is not JSON", error)),
            "application/json-patch+json" => serde_json::from_str(body)
                .map(Patch::Json)
                .map_err(|error| not_json("the JSON patch is not a list of operations", error)),
            _ => Err(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                UNSUPPORTED_PATCH,
            )),
        }
    }

    /// The resource version the patch requires the object to be at, if it names one.
    fn precondition(&self) -> Option<String> {
        let version = match self {
            Patch::Merge(patch) => patch.pointer("/metadata/resourceVersion")?.as_str()?,
            Patch::Json(_) => return None,
        };
        Some(version.to_string())
    }

    fn apply(&self, object: &mut Value) -> Result<(), ApiError> {
        match self {
            Patch::Merge(patch) => {
                json_patch::merge(object, patch);
                Ok(())
            }
            Patch::Json(patch) => json_patch::patch(object, patch)
                .map_err(|error| ApiError::invalid(format!("the JSON patch failed: {error}"))),
        }
    }
}

pub(crate) async fn patch(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let kind = kind_of(&resource)?;
    let patch = Patch::read(&headers, &body)?;
    let key = key(kind, &namespace, &name);
    let precondition = patch.precondition();
    let mut attempt = 1;
    loop {
        let current = api
            .store
            .get(&key)
            .map_err(|e| store_error(kind, e))?
            .ok_or_else(|| store_error(kind, StoreError::NotFound(key.clone())))?;
        if let Some(wanted) = &precondition {
            if *wanted != current.resource_version.to_string() {
                let conflict = StoreError::Conflict {
                    key: key.clone(),
                    expected: wanted.parse().unwrap_or_default(),
                    actual: current.resource_version,
                };
                return Err(store_error(kind, conflict));
            }
        }
        let mut patched = current.object.clone();
        patch.apply(&mut patched)?;
        let object = parse_json(&patched.to_string()).map_err(|error| {
            ApiError::bad_request(format!("the patched object is invalid: {error}"))
        })?;
        let result = replace(
            &api,
            &caller,
            kind,
            &namespace,
            &name,
            object,
            current.resource_version,
            Part::Spec,
        );
        match result {
            Err(error)
                if error.kind() == ErrorKind::Conflict
                    && precondition.is_none()
                    && attempt < PATCH_ATTEMPTS_MAX =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn read(content_type: Option<&str>, body: &str) -> Result<Patch, ApiError> {
        let mut headers = HeaderMap::new();
        if let Some(value) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        }
        Patch::read(&headers, body)
    }

    #[test]
    fn patches_are_read_by_content_type() {
        let merge = read(Some("application/merge-patch+json"), r#"{"a":1}"#).unwrap();
        assert_eq!(merge, Patch::Merge(json!({"a": 1})));
        assert!(matches!(read(None, r#"{"a":1}"#), Ok(Patch::Merge(_))));
        let ops = r#"[{"op":"add","path":"/b","value":2}]"#;
        let json = read(Some("application/json-patch+json; charset=utf-8"), ops).unwrap();
        let mut object = json!({"a": 1});
        json.apply(&mut object).unwrap();
        assert_eq!(object, json!({"a": 1, "b": 2}));
        for refused in [
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
            "text/plain",
        ] {
            let error = read(Some(refused), "{}").unwrap_err();
            assert_eq!(error.kind(), ErrorKind::UnsupportedMediaType, "{refused}");
            assert_eq!(error.message(), UNSUPPORTED_PATCH);
        }
        assert_eq!(
            read(Some("application/json-patch+json"), "{}")
                .unwrap_err()
                .kind(),
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn a_failing_json_patch_is_invalid_and_a_merge_patch_removes_nulls() {
        let test = r#"[{"op":"test","path":"/a","value":2}]"#;
        let patch = read(Some("application/json-patch+json"), test).unwrap();
        let error = patch.apply(&mut json!({"a": 1})).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Invalid);
        let merge = read(None, r#"{"a":null,"b":{"c":3}}"#).unwrap();
        let mut object = json!({"a": 1, "b": {"d": 4}});
        merge.apply(&mut object).unwrap();
        assert_eq!(object, json!({"b": {"c": 3, "d": 4}}));
        let versioned = read(None, r#"{"metadata":{"resourceVersion":"7"}}"#).unwrap();
        assert_eq!(versioned.precondition().as_deref(), Some("7"));
    }
}
