//! Finding the control plane and proving who we are to it: `--server`, else `TANDEM_SERVER`,
//! else the local cluster that `tandem up` started in the data directory (`--data-dir`,
//! `TANDEM_DATA_DIR`, or `~/.tandem`); the credential from `--ca`, `--certificate` and `--key`,
//! else the data directory's admin credential (`DIR/pki/users/admin.crt`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use tandem_client::{Client, Credentials};
use tandem_pki::Identity;

use crate::pki::{Pki, ADMIN};

/// Where the data directory is when nothing says otherwise.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".tandem"),
        _ => PathBuf::from("tandem-data"),
    }
}

/// The file in which the control plane records the address it serves on.
pub fn address_file(data_dir: &Path) -> PathBuf {
    data_dir.join("control-plane").join("address")
}

/// The options every command that talks to the control plane takes.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// The control plane's address, e.g. http://127.0.0.1:7070.
    #[arg(long, global = true, env = "TANDEM_SERVER")]
    pub server: Option<String>,
    /// The data directory of a local cluster started by `tandem up` [default: ~/.tandem].
    #[arg(long, global = true, env = "TANDEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The cluster CA's certificate, the only one trusted for the control plane's HTTPS
    /// [default: DIR/pki/ca.crt].
    #[arg(long, global = true, env = "TANDEM_CA")]
    pub ca: Option<PathBuf>,
    /// The certificate to show the control plane [default: DIR/pki/users/admin.crt].
    #[arg(long, global = true, env = "TANDEM_CERTIFICATE", requires = "key")]
    pub certificate: Option<PathBuf>,
    /// The certificate's private key [default: DIR/pki/users/admin.key].
    #[arg(long, global = true, env = "TANDEM_KEY", requires = "certificate")]
    pub key: Option<PathBuf>,
}

impl ServerArgs {
    /// The cluster `tandem up` started in `data_dir`, reached with its admin credential.
    pub fn of_data_dir(data_dir: &Path) -> ServerArgs {
        ServerArgs {
            server: None,
            data_dir: Some(data_dir.to_path_buf()),
            ca: None,
            certificate: None,
            key: None,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    /// The control plane's address, from the first place that names one.
    pub fn address(&self) -> Result<String> {
        if let Some(server) = &self.server {
            return Ok(server.clone());
        }
        let data_dir = self.data_dir();
        let file = address_file(&data_dir);
        match std::fs::read_to_string(&file) {
            Ok(address) if !address.trim().is_empty() => Ok(address.trim().to_string()),
            _ => anyhow::bail!(
                "no Tandem cluster found: nothing in {} says where a control plane runs; start \
                 one with `tandem up`, or name one with --server or TANDEM_SERVER",
                file.display()
            ),
        }
    }

    /// The CA and credential files to use: those given, else the data directory's CA and admin
    /// credential if it has them.
    pub fn credential_files(&self) -> Option<(PathBuf, PathBuf, PathBuf)> {
        let pki = Pki::of(&self.data_dir());
        let ca = self.ca.clone().unwrap_or_else(|| pki.ca());
        let (certificate, key) = match (&self.certificate, &self.key) {
            (Some(certificate), Some(key)) => (certificate.clone(), key.clone()),
            _ => pki.paths(&Identity::Admin(ADMIN.to_string())),
        };
        [&ca, &certificate, &key]
            .iter()
            .all(|path| path.exists())
            .then_some((ca, certificate, key))
    }

    /// The credentials to show control planes served over TLS, if there are any.
    pub fn credentials(&self) -> Result<Option<Credentials>> {
        match self.credential_files() {
            Some((ca, certificate, key)) => Credentials::load(&ca, &certificate, &key)
                .map(Some)
                .with_context(|| {
                    format!(
                        "load the credential {} with the CA {}",
                        certificate.display(),
                        ca.display()
                    )
                }),
            None if self.certificate.is_some() || self.ca.is_some() => {
                bail!("--ca, --certificate or --key names a file that does not exist")
            }
            None => Ok(None),
        }
    }

    pub fn client(&self) -> Result<Client> {
        let address = self.address()?;
        Client::with_credentials(&address, self.credentials()?.as_ref())
            .with_context(|| format!("control plane address {address:?}"))
    }
}
