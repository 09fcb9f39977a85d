//! Finding the control plane: `--server`, else `TANDEM_SERVER`, else the local cluster that
//! `tandem up` started in the data directory (`--data-dir`, `TANDEM_DATA_DIR`, or `~/.tandem`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use tandem_client::Client;

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
}

impl ServerArgs {
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

    pub fn client(&self) -> Result<Client> {
        let address = self.address()?;
        Client::new(&address).with_context(|| format!("control plane address {address:?}"))
    }
}
