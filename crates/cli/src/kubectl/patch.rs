//! `tandem patch KIND NAME --type merge -p JSON`: a JSON merge patch (RFC 7396) of an object's
//! spec and metadata, checked by the control plane like any update.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use super::{parse_one_target, patched, reference, NamespaceArg};
use crate::server::ServerArgs;

#[derive(Args, Debug)]
pub struct PatchArgs {
    /// KIND NAME, or KIND/NAME.
    #[arg(required = true, value_name = "KIND NAME")]
    words: Vec<String>,
    /// The patch, as JSON, e.g. '{"spec":{"policy":{"replicaPoolInfo":[...]}}}'.
    #[arg(short = 'p', long)]
    patch: String,
    /// The kind of patch; only `merge` (a JSON merge patch) is supported.
    #[arg(long = "type", default_value = "merge")]
    patch_type: String,
    #[command(flatten)]
    namespace: NamespaceArg,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(args: PatchArgs) -> Result<bool> {
    if args.patch_type != "merge" {
        bail!(
            "--type {} is not supported: Tandem takes --type merge (a JSON merge patch, RFC 7396)",
            args.patch_type
        );
    }
    let (kind, name) = parse_one_target(&args.words, "patch")?;
    let patch: Value = serde_json::from_str(&args.patch)
        .with_context(|| format!("the patch is not valid JSON ({:?})", args.patch))?;
    if !patch.is_object() {
        bail!("the patch must be a JSON object, e.g. '{{\"spec\":{{...}}}}'");
    }
    let client = args.server.client()?;
    let namespace = args.namespace.namespace.as_str();
    let current = client.get(kind, namespace, &name).await?;
    let mut unchanged = current.clone();
    unchanged.metadata_mut().resource_version.clear();
    let would_be = patched(&current, &patch).map(|mut object| {
        object.metadata_mut().resource_version.clear();
        object
    });
    if would_be.as_ref() == Some(&unchanged) {
        println!("{} patched (no change)", reference(kind, &name));
        return Ok(true);
    }
    client.patch(kind, namespace, &name, &patch).await?;
    println!("{} patched", reference(kind, &name));
    Ok(true)
}
