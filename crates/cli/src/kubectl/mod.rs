//! The kubectl-style verbs for cStor objects: `get`, `describe`, `edit`, `patch`, `apply`,
//! `create`, `delete`, and `volume create|delete`, worded as kubectl words them so the seed's
//! walk-through reads the same with `tandem` in place of `kubectl`.
//!
//! Code map:
//!
//! * this file — the subcommands, the runtime, and what every verb shares: naming objects the
//!   kubectl way (`cstorvolumeconfig.cstor.openebs.io/pvc-1`), `KIND NAME` / `KIND/NAME`
//!   arguments, server errors as kubectl prints them, reading `-f` files, JSON merge patches.
//! * `get`, `describe`, `edit`, `patch`, `apply` (apply and create), `delete`, `volume` — one
//!   verb each; `migrate` is `volume migrate`; `node` is `node cordon|uncordon|drain`.
//!
//! Exit status: 0 on success, 1 on any failure. A failure prints one line on standard error:
//! `Error from server (Reason): message` when the control plane refused a request (kubectl's
//! wording), `error: message` otherwise. Verbs that work through several objects (`apply -f`,
//! `delete`, `get` of several names) go on after a refusal and fail at the end, like kubectl.

mod apply;
mod delete;
mod describe;
mod edit;
mod get;
mod migrate;
mod node;
mod patch;
pub(crate) mod volume;

use std::io::Read;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;
use tandem_client::ClientError;
use tandem_objects::{parse_yaml_stream, Kind, Object, DEFAULT_NAMESPACE};

/// The kubectl-style subcommands (flattened into `tandem`'s own).
#[derive(Subcommand)]
pub enum Command {
    /// Lists objects as tables, YAML, JSON or names; `-w` follows their changes.
    Get(get::GetArgs),
    /// Shows one object in detail, with the events about it.
    Describe(describe::DescribeArgs),
    /// Edits an object in $KUBE_EDITOR or $EDITOR (vi by default) and saves it.
    Edit(edit::EditArgs),
    /// Changes an object with a JSON merge patch.
    Patch(patch::PatchArgs),
    /// Creates the objects of a file, or updates them to match it.
    Apply(apply::ApplyArgs),
    /// Creates the objects of a file.
    Create(apply::CreateArgs),
    /// Deletes objects by kind and name, or those of a file.
    Delete(delete::DeleteArgs),
    /// Creates or deletes a volume (a CStorVolumeConfig) and waits for it.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Cordons, uncordons or drains a node (its pools and the targets it hosts).
    #[command(subcommand)]
    Node(node::NodeCommand),
}

/// Runs one verb. `Ok(false)` means a failure that was already reported.
pub fn run(command: Command) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let result = runtime.block_on(async move {
        match command {
            Command::Get(args) => get::run(args).await,
            Command::Describe(args) => describe::run(args).await,
            Command::Edit(args) => edit::run(args).await,
            Command::Patch(args) => patch::run(args).await,
            Command::Apply(args) => apply::apply(args).await,
            Command::Create(args) => apply::create(args).await,
            Command::Delete(args) => delete::run(args).await,
            Command::Volume(command) => volume::run(command).await,
            Command::Node(command) => node::run(command).await,
        }
    });
    match result {
        Err(error) => match error.downcast_ref::<ClientError>() {
            Some(client_error) if server_refusal(client_error).is_some() => {
                eprintln!("{}", refusal_line(client_error, None));
                Ok(false)
            }
            _ => Err(error),
        },
        ok => ok,
    }
}

/// `-n/--namespace`, as every verb that names objects takes it.
#[derive(Args, Debug, Clone)]
pub struct NamespaceArg {
    /// The namespace of the objects.
    #[arg(short = 'n', long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// The resource as kubectl names one object of it: "cstorvolumeconfig.cstor.openebs.io", or
/// "event" for the core group.
pub fn resource(kind: Kind) -> String {
    match kind {
        Kind::Event => kind.singular().to_string(),
        _ => format!("{}.cstor.openebs.io", kind.singular()),
    }
}

/// `cstorvolumeconfig.cstor.openebs.io/pvc-1`, as kubectl names an object it acted on.
pub fn reference(kind: Kind, name: &str) -> String {
    format!("{}/{name}", resource(kind))
}

/// The reason and message of a request the control plane answered with a refusal.
fn server_refusal(error: &ClientError) -> Option<(&str, &str)> {
    match error {
        ClientError::Api {
            reason, message, ..
        } if !reason.is_empty() => Some((reason, message)),
        _ => None,
    }
}

/// kubectl's line for a failed request: `Error from server (NotFound): ...`, with `doing`
/// (e.g. `error when creating "cvc.yaml"`) before the message when given.
pub fn refusal_line(error: &ClientError, doing: Option<&str>) -> String {
    let prefix = doing.map(|doing| format!("{doing}: ")).unwrap_or_default();
    match server_refusal(error) {
        Some((reason, message)) => format!("Error from server ({reason}): {prefix}{message}"),
        None => format!("error: {prefix}{error}"),
    }
}

/// Reports a refused request and carries on (`Ok(())`), or gives up on anything else (the
/// control plane unreachable, a protocol error).
pub fn report(error: ClientError, doing: Option<&str>) -> Result<()> {
    match error {
        ClientError::Api { .. } => {
            eprintln!("{}", refusal_line(&error, doing));
            Ok(())
        }
        other => Err(other.into()),
    }
}

/// The kind a user typed, with the message listing every kind when it is not one.
pub fn parse_kind(spelling: &str) -> Result<Kind> {
    Ok(spelling.parse::<Kind>()?)
}

/// The objects a command names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// Each named object's kind and name, in order.
    pub named: Vec<(Kind, String)>,
    /// The kind of the `KIND NAME...` form (`None` for `KIND/NAME...`).
    pub kind: Option<Kind>,
}

/// `KIND NAME...` or `KIND/NAME...` (kinds may differ in the second form). No names means
/// "every object of KIND".
pub fn parse_targets(words: &[String]) -> Result<Targets> {
    let Some(first) = words.first() else {
        bail!("name a kind (cspc, cspi, cvc, cv, cvr, events) and, optionally, names");
    };
    if first.contains('/') {
        let targets = words
            .iter()
            .map(|word| match word.split_once('/') {
                Some((kind, name)) if !name.is_empty() => Ok((parse_kind(kind)?, name.to_string())),
                _ => bail!(
                    "{word:?}: when one argument is KIND/NAME, every argument must be KIND/NAME"
                ),
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(Targets {
            named: targets,
            kind: None,
        });
    }
    let kind = parse_kind(first)?;
    let targets = words[1..]
        .iter()
        .map(|name| {
            if name.contains('/') {
                bail!("{name:?}: a name cannot contain '/' (use either KIND NAME or KIND/NAME)");
            }
            Ok((kind, name.clone()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Targets {
        named: targets,
        kind: Some(kind),
    })
}

/// Exactly one object: `KIND NAME` or `KIND/NAME`.
pub fn parse_one_target(words: &[String], verb: &str) -> Result<(Kind, String)> {
    let Targets { mut named, kind } = parse_targets(words)?;
    match (named.len(), kind) {
        (1, _) => Ok(named.remove(0)),
        (0, Some(kind)) => bail!(
            "name the {} to {verb}: tandem {verb} {} NAME",
            kind.singular(),
            kind.short_name()
        ),
        _ => bail!("{verb} takes one object at a time (KIND NAME or KIND/NAME)"),
    }
}

/// The text of a `-f` file; `-` is standard input.
pub fn read_file(file: &str) -> Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))
}

/// The objects of a `-f` file, and each one's document as written (for `apply`). Any error
/// names the file, and the document and line when it has them; nothing is returned then, so a
/// bad file changes nothing.
pub fn read_objects(file: &str) -> Result<Vec<(Object, Value)>> {
    let text = read_file(file)?;
    let shown = if file == "-" { "<stdin>" } else { file };
    let objects = parse_yaml_stream(&text).map_err(|error| anyhow::anyhow!("{shown}: {error}"))?;
    // The same documents as plain trees; they parsed above, and empty ones are skipped there too.
    let mut documents = Vec::new();
    for document in yaml_serde::Deserializer::from_str(&text) {
        let tree = <Value as serde::Deserialize>::deserialize(document)
            .with_context(|| format!("{shown}: re-reading a document"))?;
        if !tree.is_null() {
            documents.push(tree);
        }
    }
    if documents.len() != objects.len() {
        bail!(
            "{shown}: read {} objects but {} documents",
            objects.len(),
            documents.len()
        );
    }
    Ok(objects.into_iter().zip(documents).collect())
}

/// RFC 7396: `patch` merged into `target` (maps merge, `null` removes, anything else replaces).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// `current` with `patch` merged into it, as the control plane would store it, if it still
/// parses. Its status and resource version are the current ones (a patch changes neither).
pub fn patched(current: &Object, patch: &Value) -> Option<Object> {
    let mut merged = serde_json::to_value(current).ok()?;
    let status = merged.get("status").cloned();
    merge_patch(&mut merged, patch);
    match status {
        Some(status) => merged["status"] = status,
        None => {
            if let Some(fields) = merged.as_object_mut() {
                fields.remove("status");
            }
        }
    }
    let mut object = tandem_objects::parse_json(&merged.to_string()).ok()?;
    object.metadata_mut().resource_version = current.metadata().resource_version.clone();
    Some(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut target,
            &json!({"a": "z", "c": {"f": null, "h": 1}, "l": [3]}),
        );
        assert_eq!(target, json!({"a": "z", "c": {"d": "e", "h": 1}, "l": [3]}));
    }

    #[test]
    fn targets_in_both_forms() {
        let words = |list: &[&str]| list.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let targets = parse_targets(&words(&["cvc", "a", "b"])).unwrap();
        assert_eq!(targets.kind, Some(Kind::CStorVolumeConfig));
        assert_eq!(targets.named.len(), 2);
        let targets = parse_targets(&words(&["cvc/a", "cspi/b"])).unwrap();
        assert_eq!(targets.kind, None);
        assert_eq!(
            targets.named,
            vec![
                (Kind::CStorVolumeConfig, "a".to_string()),
                (Kind::CStorPoolInstance, "b".to_string())
            ]
        );
        assert!(parse_targets(&words(&["cvc/a", "b"])).is_err());
        assert!(parse_targets(&words(&["pods"]))
            .unwrap_err()
            .to_string()
            .contains("unknown kind \"pods\""));
        assert_eq!(
            parse_one_target(&words(&["cvc"]), "edit")
                .unwrap_err()
                .to_string(),
            "name the cstorvolumeconfig to edit: tandem edit cvc NAME"
        );
    }

    #[test]
    fn kubectl_names_objects() {
        assert_eq!(
            reference(Kind::CStorVolumeConfig, "pvc-1"),
            "cstorvolumeconfig.cstor.openebs.io/pvc-1"
        );
        assert_eq!(reference(Kind::Event, "e"), "event/e");
    }
}
