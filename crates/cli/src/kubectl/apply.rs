//! `tandem apply -f FILE` and `tandem create -f FILE` (`-` is standard input; a file may hold
//! several documents separated by `---`).
//!
//! The whole file is read and checked first, so a file with a mistake changes nothing. `apply`
//! then creates each object that does not exist, and otherwise merges what the document says
//! onto the stored object (a JSON merge patch of the document as written, without its status):
//! fields the document leaves out keep their values, so re-applying the file a volume was made
//! from does not undo the placement the controllers recorded. Unlike kubectl, which remembers
//! the last applied file, a field can therefore not be removed by leaving it out of the file;
//! `edit` or `patch` with `null` removes it.

use anyhow::Result;
use clap::Args;
use serde_json::Value;
use tandem_client::Client;
use tandem_objects::Object;

use super::{patched, read_objects, reference, report};
use crate::server::ServerArgs;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The file of objects (YAML, documents separated by ---); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The file of objects (YAML, documents separated by ---); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Every file's objects, read before anything is changed.
fn read_all(files: &[String]) -> Result<Vec<(String, Object, Value)>> {
    let mut all = Vec::new();
    for file in files {
        for (object, document) in read_objects(file)? {
            all.push((file.clone(), object, document));
        }
    }
    Ok(all)
}

pub async fn apply(args: ApplyArgs) -> Result<bool> {
    let objects = read_all(&args.files)?;
    let client = args.server.client()?;
    let mut ok = true;
    for (file, object, document) in objects {
        ok &= apply_one(&client, &file, &object, &document).await?;
    }
    Ok(ok)
}

pub async fn create(args: CreateArgs) -> Result<bool> {
    let objects = read_all(&args.files)?;
    let client = args.server.client()?;
    let mut ok = true;
    for (file, object, _) in objects {
        match client.create(&object).await {
            Ok(_) => println!("{} created", reference(object.kind(), object.name())),
            Err(error) => {
                report(error, Some(&format!("error when creating {file:?}")))?;
                ok = false;
            }
        }
    }
    Ok(ok)
}

/// Creates or merges one object; `Ok(false)` when the control plane refused it (reported).
async fn apply_one(client: &Client, file: &str, object: &Object, document: &Value) -> Result<bool> {
    let kind = object.kind();
    let name = object.name();
    let current = client.find(kind, object.namespace(), name).await?;
    let Some(current) = current else {
        return Ok(match client.create(object).await {
            Ok(_) => {
                println!("{} created", reference(kind, name));
                true
            }
            Err(error) => {
                report(error, Some(&format!("error when creating {file:?}")))?;
                false
            }
        });
    };
    let patch = document_patch(document);
    let mut before = current.clone();
    before.metadata_mut().resource_version.clear();
    let after = patched(&current, &patch).map(|mut object| {
        object.metadata_mut().resource_version.clear();
        object
    });
    if after.as_ref() == Some(&before) {
        println!("{} unchanged", reference(kind, name));
        return Ok(true);
    }
    Ok(
        match client.patch(kind, object.namespace(), name, &patch).await {
            Ok(_) => {
                println!("{} configured", reference(kind, name));
                true
            }
            Err(error) => {
                report(error, Some(&format!("error when patching {file:?}")))?;
                false
            }
        },
    )
}

/// What a document says about spec and metadata, as a merge patch: without its type, status,
/// and the metadata the control plane keeps (identity, versions, times).
fn document_patch(document: &Value) -> Value {
    let mut patch = document.clone();
    if let Some(fields) = patch.as_object_mut() {
        for field in ["apiVersion", "kind", "status"] {
            fields.remove(field);
        }
        if let Some(Value::Object(metadata)) = fields.get_mut("metadata") {
            for field in [
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
                "managedFields",
                "selfLink",
                "generateName",
            ] {
                metadata.remove(field);
            }
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_document_patches_spec_and_labels_only() {
        let document = json!({
            "apiVersion": "cstor.openebs.io/v1",
            "kind": "CStorVolumeConfig",
            "metadata": {"name": "v", "resourceVersion": "3", "labels": {"a": "b"}},
            "spec": {"capacity": {"storage": "5Gi"}},
            "status": {"phase": "Bound"},
        });
        assert_eq!(
            document_patch(&document),
            json!({"metadata": {"labels": {"a": "b"}}, "spec": {"capacity": {"storage": "5Gi"}}})
        );
    }
}
