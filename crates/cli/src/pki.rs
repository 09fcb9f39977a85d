//! The cluster's credentials under the data directory (`DIR/pki/`): the CA that `tandem up`
//! creates, and a certificate per control plane, per node agent and per user, issued from it when
//! missing. `tandem credential issue` issues one more (a new node, a new user, a rotation).
//!
//! ```text
//! DIR/pki/ca.crt, ca.key                      the cluster CA (the key signs every credential)
//! DIR/pki/control-planes/NAME.crt, NAME.key   one per control plane
//! DIR/pki/nodes/NODE.crt, NODE.key            one per node agent (its identity is the node name)
//! DIR/pki/users/NAME.crt, NAME.key            users; `admin` is the CLI's and kubectl's
//! ```
//! Every file is mode 0600 (written by `tandem-pki`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tandem_pki::{Authority, Credential, Identity};

/// The name of the user credential `tandem up` issues for the CLI and kubectl.
pub const ADMIN: &str = "admin";

/// The credential files of one cluster.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// The cluster whose data directory is `data_dir`.
    pub fn of(data_dir: &Path) -> Pki {
        Pki::at(data_dir.join("pki"))
    }

    /// A CA and its credentials in `dir` (etcd's own, say).
    pub fn at(dir: PathBuf) -> Pki {
        Pki { dir }
    }

    /// The directory of the credential files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA's certificate: what every party trusts.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Whether this data directory holds a cluster CA.
    pub fn exists(&self) -> bool {
        self.ca().exists()
    }

    /// Where `identity`'s certificate and key are.
    pub fn paths(&self, identity: &Identity) -> (PathBuf, PathBuf) {
        let kind = match identity {
            Identity::Admin(_) => "users",
            Identity::ControlPlane(_) => "control-planes",
            Identity::Node(_) => "nodes",
        };
        Credential::paths(&self.dir.join(kind), identity.name())
    }

    /// The cluster's CA, created if there is none yet.
    pub fn authority(&self) -> Result<Authority> {
        if self.exists() {
            return Authority::load(&self.dir)
                .with_context(|| format!("load the cluster CA in {}", self.dir.display()));
        }
        let authority = Authority::create("tandem").context("create the cluster CA")?;
        authority
            .save(&self.dir)
            .with_context(|| format!("save the cluster CA in {}", self.dir.display()))?;
        tracing::info!(dir = %self.dir.display(), "created the cluster CA");
        Ok(authority)
    }

    /// Issues `identity` a credential reached by `addresses` and `hosts` (for a server) unless
    /// its files exist; returns their paths.
    pub fn ensure(
        &self,
        identity: &Identity,
        addresses: &[IpAddr],
        hosts: &[String],
    ) -> Result<(PathBuf, PathBuf)> {
        let (certificate, key) = self.paths(identity);
        if certificate.exists() && key.exists() {
            return Ok((certificate, key));
        }
        self.issue(identity, addresses, hosts, tandem_pki::VALIDITY_DEFAULT)?;
        Ok((certificate, key))
    }

    /// Issues `identity` a new credential, replacing any it had.
    pub fn issue(
        &self,
        identity: &Identity,
        addresses: &[IpAddr],
        hosts: &[String],
        valid_for: Duration,
    ) -> Result<(PathBuf, PathBuf)> {
        let credential = self
            .authority()?
            .issue(identity, addresses, hosts, valid_for)
            .with_context(|| format!("issue a certificate for {identity}"))?;
        let (certificate, key) = self.paths(identity);
        credential
            .save(&certificate, &key)
            .with_context(|| format!("save the credential of {identity}"))?;
        Ok((certificate, key))
    }
}

/// The directory GnuTLS-based NBD clients read a client credential from (libnbd's
/// `nbds://...?tls-certificates=DIR`, qemu's `tls-creds-x509,dir=DIR`): `ca-cert.pem`,
/// `client-cert.pem` and `client-key.pem`, copies of `ca`, `certificate` and `key` kept beside
/// the certificate (`NAME.crt` -> `NAME.nbd/`, mode 0700, files 0600), rewritten when they
/// differ.
pub fn nbd_client_dir(ca: &Path, certificate: &Path, key: &Path) -> Result<PathBuf> {
    let dir = certificate.with_extension("nbd");
    for (from, name) in [
        (ca, "ca-cert.pem"),
        (certificate, "client-cert.pem"),
        (key, "client-key.pem"),
    ] {
        let contents =
            std::fs::read_to_string(from).with_context(|| format!("read {}", from.display()))?;
        let to = dir.join(name);
        if std::fs::read_to_string(&to).ok().as_deref() != Some(contents.as_str()) {
            tandem_pki::write_private(&to, &contents)?;
        }
    }
    Ok(dir)
}

/// The names a server on `listen` is reached by on this host: that address (unless it is a
/// wildcard), loopback, `localhost` and the host's name.
pub fn server_names(listen: &[IpAddr]) -> (Vec<IpAddr>, Vec<String>) {
    let mut addresses: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    for address in listen {
        if !address.is_unspecified() && !addresses.contains(address) {
            addresses.push(*address);
        }
    }
    let mut hosts = vec!["localhost".to_string()];
    if let Ok(name) = nix::unistd::gethostname() {
        if let Some(name) = name.to_str().filter(|name| !name.is_empty()) {
            if name != "localhost" {
                hosts.push(name.to_string());
            }
        }
    }
    (addresses, hosts)
}

/// A node agent's credential: its node name is its identity and the name a target verifies when
/// it connects to the node's replicas.
pub fn node_names(node: &str, addresses: &[IpAddr]) -> (Vec<IpAddr>, Vec<String>) {
    let (addresses, mut hosts) = server_names(addresses);
    hosts.insert(0, node.to_string());
    (addresses, hosts)
}

#[derive(Args, Debug)]
pub struct CredentialArgs {
    #[command(subcommand)]
    command: CredentialCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CredentialCommand {
    /// Issues a credential from the cluster's CA (in DIR/pki): for a new node's agent, a new
    /// user, or to rotate one. The files go to DIR/pki/{nodes,users,control-planes}/NAME.crt and
    /// .key (mode 0600), replacing any there; the process using them reads them when it starts.
    Issue(IssueArgs),
}

#[derive(Args, Debug)]
struct IssueArgs {
    /// What the credential is for.
    #[arg(value_enum)]
    kind: Kind,
    /// The node's name, the user's name, or the control plane's name.
    name: String,
    /// An address the holder serves on (for nodes and control planes; repeat for several).
    #[arg(long = "address")]
    addresses: Vec<IpAddr>,
    /// How long the credential is valid.
    #[arg(long, default_value = "365days", value_parser = humantime::parse_duration)]
    valid_for: Duration,
    /// The cluster's data directory, which holds its CA [default: ~/.tandem].
    #[arg(long, env = "TANDEM_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Kind {
    /// A node agent (its name is the node's).
    Node,
    /// A user who may do anything (an administrator).
    User,
    /// A control-plane process.
    ControlPlane,
}

pub fn run(args: CredentialArgs) -> Result<bool> {
    let CredentialCommand::Issue(args) = args.command;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::server::default_data_dir);
    let pki = Pki::of(&data_dir);
    if !pki.exists() {
        bail!(
            "{} holds no cluster CA (it is made by `tandem up` or the first start of `tandem \
             control-plane`); give the cluster's --data-dir",
            pki.ca().display()
        );
    }
    if args.name.is_empty() {
        bail!("the name is empty");
    }
    let (identity, (addresses, hosts)) = match args.kind {
        Kind::Node => (
            Identity::Node(args.name.clone()),
            node_names(&args.name, &args.addresses),
        ),
        Kind::User => (Identity::Admin(args.name.clone()), (Vec::new(), Vec::new())),
        Kind::ControlPlane => (
            Identity::ControlPlane(args.name.clone()),
            server_names(&args.addresses),
        ),
    };
    let (certificate, key) = pki.issue(&identity, &addresses, &hosts, args.valid_for)?;
    println!(
        "issued a credential for {identity}, valid for {}:",
        humantime::format_duration(args.valid_for)
    );
    println!("  certificate  {}", certificate.display());
    println!("  key          {}", key.display());
    println!("  CA           {}", pki.ca().display());
    Ok(true)
}
