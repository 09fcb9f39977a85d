//! `tandem store copy --from LOCATION --to LOCATION`: moves a cluster's objects from one store to
//! another (its redb file to etcd when it grows to several control planes, or back), with every
//! control plane of the cluster stopped. Resource versions are the new store's; names, uids,
//! labels, finalizers, specs and statuses are kept as they are.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tandem_objects::Kind;

#[derive(Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copies every object into an empty store. Stop the cluster's control planes first (a
    /// redb file in use is refused).
    Copy(CopyArgs),
}

#[derive(Args)]
struct CopyArgs {
    /// Where the objects are: `redb:PATH`, a path, or `etcd://HOST:PORT[,...][/PREFIX]`.
    #[arg(long)]
    from: String,
    /// Where they go (it must hold no object yet), in the same forms.
    #[arg(long)]
    to: String,
}

pub fn run(args: StoreArgs) -> Result<bool> {
    match args.command {
        StoreCommand::Copy(args) => copy(&args.from, &args.to).map(|()| true),
    }
}

fn copy(from: &str, to: &str) -> Result<()> {
    let source = tandem_store::open(from).context("the store to copy from")?;
    let target = tandem_store::open(to).context("the store to copy to")?;
    for kind in Kind::ALL {
        let held = target
            .list(kind.name(), None)
            .with_context(|| format!("list {} in {to}", kind.plural()))?;
        if !held.is_empty() {
            bail!(
                "{to} already holds {} {}; copy only into an empty store",
                held.len(),
                kind.plural()
            );
        }
    }
    let mut total = 0;
    for kind in Kind::ALL {
        let objects = source
            .list(kind.name(), None)
            .with_context(|| format!("list {} in {from}", kind.plural()))?;
        for object in &objects {
            target
                .create(&object.key, object.object.clone())
                .with_context(|| format!("copy {} to {to}", object.key))?;
        }
        let copied = target
            .list(kind.name(), None)
            .with_context(|| format!("list {} in {to}", kind.plural()))?;
        if copied.len() != objects.len() {
            bail!(
                "{to} holds {} {} after the copy, not {}",
                copied.len(),
                kind.plural(),
                objects.len()
            );
        }
        println!("copied {} {}", objects.len(), kind.plural());
        total += objects.len();
    }
    println!("{total} objects copied from {from} to {to}");
    Ok(())
}
