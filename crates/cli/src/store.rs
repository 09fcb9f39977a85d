//! `tandem store copy --from LOCATION --to LOCATION`: moves a cluster's objects from one store to
//! another (its redb file to etcd when it grows to several control planes, or back), with every
//! control plane of the cluster stopped. Resource versions are the new store's; names, uids,
//! labels, finalizers, specs and statuses are kept as they are.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tandem_objects::Kind;
use tandem_store::EtcdTls;

/// How to reach an etcd that serves TLS and requires client certificates (as Kubernetes' API
/// server's `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`).
#[derive(Args, Debug, Clone, Default)]
pub struct EtcdTlsArgs {
    /// The CA that signed the etcd members' certificates (PEM): etcd is reached over HTTPS.
    #[arg(long, requires_all = ["etcd_certificate", "etcd_key"], env = "TANDEM_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// The client certificate shown to etcd (PEM).
    #[arg(long, requires = "etcd_ca", env = "TANDEM_ETCD_CERTIFICATE")]
    pub etcd_certificate: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "etcd_ca", env = "TANDEM_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdTlsArgs {
    /// The credential, if the flags name one.
    pub fn load(&self) -> Result<Option<EtcdTls>> {
        match (&self.etcd_ca, &self.etcd_certificate, &self.etcd_key) {
            (Some(ca), Some(certificate), Some(key)) => {
                Ok(Some(EtcdTls::load(ca, certificate, key)?))
            }
            _ => Ok(None),
        }
    }

    /// The flags that name `files` (CA, certificate, key), for a process started with them.
    pub fn flags(files: &[PathBuf; 3]) -> Vec<String> {
        let [ca, certificate, key] = files;
        [
            ("--etcd-ca", ca),
            ("--etcd-certificate", certificate),
            ("--etcd-key", key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }
}

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
    /// The credential for an etcd (either one) that serves TLS.
    #[command(flatten)]
    etcd: EtcdTlsArgs,
}

pub fn run(args: StoreArgs) -> Result<bool> {
    match args.command {
        StoreCommand::Copy(args) => copy(&args.from, &args.to, &args.etcd).map(|()| true),
    }
}

fn copy(from: &str, to: &str, etcd: &EtcdTlsArgs) -> Result<()> {
    let tls = etcd.load()?;
    let open = |location: &str| tandem_store::Location::parse(location)?.open_with(tls.as_ref());
    let source = open(from).context("the store to copy from")?;
    let target = open(to).context("the store to copy to")?;
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
