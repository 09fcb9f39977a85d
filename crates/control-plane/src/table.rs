//! Server-side printing: a `meta.k8s.io` `Table` in place of a list, an object or a watch
//! event's object, when the client's `Accept` header asks for one (kubectl's `get` sends
//! `application/json;as=Table;v=v1;g=meta.k8s.io,...,application/json`). The columns and
//! cells are `tandem_objects::print`'s, the ones `tandem get` prints; each row carries the
//! object as `PartialObjectMetadata` (the default), in full (`includeObject=Object`) or not at
//! all (`includeObject=None`), as kube-apiserver does.

use std::time::SystemTime;

use axum::http::header::ACCEPT;
use axum::http::HeaderMap;
use serde_json::{json, Value};
use tandem_objects::print::{cells, columns, Cell, Column};
use tandem_objects::{Kind, Object};

use crate::error::ApiError;

/// The version of `meta.k8s.io` a client asked its Table in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableVersion {
    V1,
    V1beta1,
}

impl TableVersion {
    fn api_version(self) -> &'static str {
        match self {
            TableVersion::V1 => "meta.k8s.io/v1",
            TableVersion::V1beta1 => "meta.k8s.io/v1beta1",
        }
    }

    /// The `Content-Type` of the answer.
    pub fn content_type(self) -> &'static str {
        match self {
            TableVersion::V1 => "application/json;as=Table;v=v1;g=meta.k8s.io",
            TableVersion::V1beta1 => "application/json;as=Table;v=v1beta1;g=meta.k8s.io",
        }
    }
}

/// What a row carries besides its cells (`TableOptions.includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> Result<IncludeObject, ApiError> {
        match value.unwrap_or_default() {
            "" | "Metadata" => Ok(IncludeObject::Metadata),
            "Object" => Ok(IncludeObject::Object),
            "None" => Ok(IncludeObject::None),
            other => Err(ApiError::bad_request(format!(
                "unrecognized includeObject value: \"{other}\""
            ))),
        }
    }
}

/// A request for a Table: which version, and what its rows carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRequest {
    pub version: TableVersion,
    pub include: IncludeObject,
}

/// The Table version the `Accept` header asks for first, if it asks for one before plain JSON;
/// `None` to answer JSON.
pub fn negotiate(headers: &HeaderMap) -> Option<TableVersion> {
    let accept = headers.get(ACCEPT)?.to_str().ok()?;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        if !matches!(media, "application/json" | "application/*" | "*/*") {
            continue;
        }
        let (mut as_kind, mut group, mut version) = (None, None, None);
        for parameter in parts {
            match parameter.split_once('=') {
                Some(("as", value)) => as_kind = Some(value),
                Some(("g", value)) => group = Some(value),
                Some(("v", value)) => version = Some(value),
                _ => {}
            }
        }
        match (as_kind, group, version) {
            (None, _, _) => return None,
            (Some("Table"), Some("meta.k8s.io"), Some("v1")) => return Some(TableVersion::V1),
            (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) => {
                return Some(TableVersion::V1beta1)
            }
            // Another representation (PartialObjectMetadata, ...): try the next.
            _ => continue,
        }
    }
    None
}

/// A Table of `objects` (with their stored JSON forms), of `kind`; the column definitions are
/// left out when `with_columns` is false (a watch's events after the first, as kube-apiserver
/// sends them).
pub fn table(
    request: TableRequest,
    kind: Kind,
    objects: &[(Object, Value)],
    resource_version: &str,
    with_columns: bool,
    now: SystemTime,
) -> Value {
    let column_definitions: Vec<Value> = if with_columns {
        columns(kind).iter().map(column_definition).collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|(object, stored)| {
            let cells: Vec<Value> = cells(object, now).iter().map(cell_value).collect();
            json!({"cells": cells, "object": row_object(request, stored)})
        })
        .collect();
    let mut table = json!({
        "kind": "Table",
        "apiVersion": request.version.api_version(),
        "metadata": {"resourceVersion": resource_version},
        "rows": rows,
    });
    if with_columns {
        table["columnDefinitions"] = Value::Array(column_definitions);
    }
    table
}

fn column_definition(column: &Column) -> Value {
    json!({
        "name": column.name,
        "type": column.column_type.as_str(),
        "format": column.format,
        "description": column.description,
        "priority": column.priority,
    })
}

fn cell_value(cell: &Cell) -> Value {
    match cell {
        Cell::Text(text) => Value::String(text.clone()),
        Cell::Integer(value) => json!(value),
        Cell::Boolean(value) => Value::Bool(*value),
        Cell::Absent => Value::Null,
    }
}

fn row_object(request: TableRequest, stored: &Value) -> Value {
    match request.include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => stored.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": request.version.api_version(),
            "metadata": stored["metadata"],
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::HeaderValue;
    use tandem_objects::parse_yaml;

    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_accept_header_picks_a_table_or_json() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,\
                       application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(&accept(kubectl)), Some(TableVersion::V1));
        let beta = "application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json";
        assert_eq!(negotiate(&accept(beta)), Some(TableVersion::V1beta1));
        assert_eq!(negotiate(&accept("application/json")), None);
        assert_eq!(negotiate(&accept("application/json, */*")), None);
        assert_eq!(negotiate(&HeaderMap::new()), None);
        let partial = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,\
                       application/json";
        assert_eq!(negotiate(&accept(partial)), None);
        let yaml_first = "application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io";
        assert_eq!(negotiate(&accept(yaml_first)), Some(TableVersion::V1));
    }

    #[test]
    fn a_table_has_the_kinds_columns_typed_cells_and_the_objects_metadata() {
        let yaml = "apiVersion: cstor.openebs.io/v1\nkind: CStorPoolCluster\nmetadata:\n  \
                    name: cspc-stripe-pool\n  namespace: openebs\n  creationTimestamp: \
                    \"2026-11-28T10:00:00Z\"\n  labels:\n    a: b\nstatus:\n  \
                    healthyInstances: 3\n  provisionedInstances: 3\n  desiredInstances: 3\n";
        let object = parse_yaml(yaml).unwrap();
        let stored: Value = serde_json::from_str(&object.to_json()).unwrap();
        let now = humantime::parse_rfc3339("2026-11-28T10:04:13Z").unwrap();
        let request = TableRequest {
            version: TableVersion::V1,
            include: IncludeObject::Metadata,
        };
        let objects = [(object, stored.clone())];
        let answer = table(request, Kind::CStorPoolCluster, &objects, "7", true, now);
        assert_eq!(answer["kind"], "Table");
        assert_eq!(answer["metadata"]["resourceVersion"], "7");
        let names: Vec<&str> = answer["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|column| column["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "HealthyInstances",
                "ProvisionedInstances",
                "DesiredInstances",
                "Age"
            ]
        );
        assert_eq!(answer["columnDefinitions"][0]["format"], "name");
        assert_eq!(answer["columnDefinitions"][1]["type"], "integer");
        let row = &answer["rows"][0];
        assert_eq!(row["cells"], json!(["cspc-stripe-pool", 3, 3, 3, "4m13s"]));
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(row["object"]["metadata"]["labels"]["a"], "b");

        let full = TableRequest {
            include: IncludeObject::Object,
            ..request
        };
        let later = now + Duration::from_secs(60);
        let event = table(full, Kind::CStorPoolCluster, &objects, "8", false, later);
        assert!(event.get("columnDefinitions").is_none());
        assert_eq!(event["rows"][0]["object"], stored);
        assert_eq!(event["rows"][0]["cells"][4], "5m13s");
        assert!(IncludeObject::parse(Some("Everything")).is_err());
    }
}
