//! `tandem delete KIND NAME...` and `tandem delete -f FILE`. An object held by finalizers (a
//! replica whose data its agent must destroy first) is marked for deletion and goes once they
//! are done; like `kubectl delete --wait=false`, the command does not wait for that.

use anyhow::{bail, Result};
use clap::Args;
use tandem_client::Client;
use tandem_objects::Kind;

use super::{parse_targets, read_objects, report, resource, NamespaceArg, Targets};
use crate::server::ServerArgs;

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// KIND and NAMEs, or KIND/NAME pairs.
    #[arg(value_name = "KIND [NAME]")]
    words: Vec<String>,
    /// Delete the objects this file describes; `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    #[command(flatten)]
    namespace: NamespaceArg,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(args: DeleteArgs) -> Result<bool> {
    let targets: Vec<(Kind, String, String)> = match (args.files.is_empty(), args.words.is_empty())
    {
        (true, true) => bail!("name what to delete: KIND NAME..., KIND/NAME..., or -f FILE"),
        (false, false) => bail!("delete takes either KIND NAME... or -f FILE, not both"),
        (false, true) => {
            let mut targets = Vec::new();
            for file in &args.files {
                for (object, _) in read_objects(file)? {
                    targets.push((
                        object.kind(),
                        object.namespace().to_string(),
                        object.name().to_string(),
                    ));
                }
            }
            targets
        }
        (true, false) => {
            let Targets {
                named: targets,
                kind,
            } = parse_targets(&args.words)?;
            if let (Some(kind), true) = (kind, targets.is_empty()) {
                bail!(
                    "name the {} to delete: tandem delete {} NAME...",
                    kind.plural(),
                    kind.short_name()
                );
            }
            targets
                .into_iter()
                .map(|(kind, name)| (kind, args.namespace.namespace.clone(), name))
                .collect()
        }
    };
    let client = args.server.client()?;
    let mut ok = true;
    for (kind, namespace, name) in &targets {
        ok &= delete_one(&client, *kind, namespace, name).await?;
    }
    Ok(ok)
}

/// Deletes one object; `Ok(false)` when the control plane refused (reported).
pub async fn delete_one(client: &Client, kind: Kind, namespace: &str, name: &str) -> Result<bool> {
    match client.delete(kind, namespace, name).await {
        Ok(_) => {
            println!("{} \"{name}\" deleted", resource(kind));
            Ok(true)
        }
        Err(error) => {
            report(error, None)?;
            Ok(false)
        }
    }
}
