//! The etcd cluster of `tandem up --ha`: three `etcd` processes (Debian's etcd-server) on
//! loopback ports chosen once, each with its data, log and pid file under `DIR/etcd/NAME/`.
//! They are started before the control planes and stopped after them.
//!
//! Unless the cluster is insecure, etcd serves clients and peers over TLS and requires client
//! certificates of its own CA (`DIR/pki/etcd/`, apart from the cluster's: only etcd members
//! and the control planes hold one, so a node's or a user's credential cannot reach etcd and
//! go around the API's authorisation). A cluster made before etcd had TLS keeps it plain.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tandem_pki::Identity;
use tandem_store::{election, EtcdTls};

use crate::control_plane::write_atomically;
use crate::pki::Pki;
use crate::wait::{wait_for, Deadline, Probe};

/// The etcd members of an HA cluster.
pub const MEMBERS: usize = 3;
/// The key prefix the cluster's control planes share in etcd.
pub const PREFIX: &str = "/tandem";

/// One etcd member: its name and the loopback ports it serves clients and peers on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
}

/// The client credential control planes and the CLI reach etcd with.
const CLIENT: &str = "etcd-client";

/// The credentials of a TLS etcd cluster: its own CA under `DIR/pki/etcd/`.
pub struct EtcdPki(Pki);

impl EtcdPki {
    pub fn of(data_dir: &Path) -> EtcdPki {
        EtcdPki(Pki::at(data_dir.join("pki").join("etcd")))
    }

    /// The client credential's files (CA, certificate, key), issued if missing.
    pub fn client_files(&self) -> Result<[PathBuf; 3]> {
        let (certificate, key) = self
            .0
            .ensure(&Identity::ControlPlane(CLIENT.into()), &[], &[])?;
        Ok([self.0.ca(), certificate, key])
    }

    /// The client credential.
    pub fn client(&self) -> Result<EtcdTls> {
        let [ca, certificate, key] = self.client_files()?;
        Ok(EtcdTls::load(&ca, &certificate, &key)?)
    }

    /// `member`'s certificate and key (it serves clients and peers, and is a peer's client),
    /// issued if missing.
    fn member_files(&self, member: &Member) -> Result<(PathBuf, PathBuf)> {
        let (addresses, hosts) = crate::pki::server_names(&[]);
        self.0.ensure(
            &Identity::ControlPlane(member.name.clone()),
            &addresses,
            &hosts,
        )
    }
}

impl Member {
    /// Where clients reach it: `https://` under `tls`.
    pub fn client_url(&self, tls: bool) -> String {
        url(tls, self.client_port)
    }

    fn peer_url(&self, tls: bool) -> String {
        url(tls, self.peer_port)
    }

    fn dir(&self, data_dir: &Path) -> PathBuf {
        data_dir.join("etcd").join(&self.name)
    }

    pub fn pid_file(&self, data_dir: &Path) -> PathBuf {
        self.dir(data_dir).join("etcd.pid")
    }
}

/// The store location the control planes are given: `etcd://H:P,H:P,H:P/PREFIX`.
pub fn store_location(members: &[Member]) -> String {
    let hosts: Vec<String> = members
        .iter()
        .map(|member| format!("127.0.0.1:{}", member.client_port))
        .collect();
    format!("etcd://{}{PREFIX}", hosts.join(","))
}

fn url(tls: bool, port: u16) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{port}")
}

/// Every member's client URL.
pub fn client_urls(members: &[Member], tls: bool) -> Vec<String> {
    members
        .iter()
        .map(|member| member.client_url(tls))
        .collect()
}

/// Starts the members that are not running and waits until every member is healthy. With
/// `pki`, every member serves TLS and requires certificates of that CA from clients and peers.
/// `running` says whether a pid file names a live etcd.
pub async fn start(
    data_dir: &Path,
    members: &[Member],
    pki: Option<&EtcdPki>,
    running: impl Fn(&Path) -> Option<i32>,
    timeout: Duration,
) -> Result<()> {
    if Command::new("etcd").arg("--version").output().is_err() {
        bail!("--ha runs etcd, which is not installed (Debian: apt-get install etcd-server)");
    }
    let tls = pki.is_some();
    let client_tls = pki.map(EtcdPki::client).transpose()?;
    let cluster: Vec<String> = members
        .iter()
        .map(|member| format!("{}={}", member.name, member.peer_url(tls)))
        .collect();
    let cluster = cluster.join(",");
    for member in members {
        let pid_file = member.pid_file(data_dir);
        if let Some(pid) = running(&pid_file) {
            println!("etcd {} already running (pid {pid})", member.name);
            continue;
        }
        let dir = member.dir(data_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let log = dir.join("etcd.log");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let (client, peer) = (member.client_url(tls), member.peer_url(tls));
        let mut etcd = Command::new("etcd");
        if let Some(pki) = pki {
            let (certificate, key) = pki.member_files(member)?;
            let ca = pki.0.ca();
            for (flag, path) in [
                ("--cert-file", &certificate),
                ("--key-file", &key),
                ("--trusted-ca-file", &ca),
                ("--peer-cert-file", &certificate),
                ("--peer-key-file", &key),
                ("--peer-trusted-ca-file", &ca),
            ] {
                etcd.arg(flag).arg(path);
            }
            etcd.args(["--client-cert-auth", "--peer-client-cert-auth"]);
        }
        // On a restart etcd finds its data directory and ignores the initial-cluster flags.
        let child = etcd
            .args(["--name", &member.name, "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "tandem"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("share the log file")?)
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start etcd {}", member.name))?;
        write_atomically(&pid_file, &format!("{}\n", child.id()))?;
        println!(
            "started etcd {} (pid {}) at {client}",
            member.name,
            child.id()
        );
    }
    let urls = client_urls(members, tls);
    let deadline = Deadline::after(timeout).polling_every(Duration::from_millis(200));
    wait_for(deadline, "etcd is not healthy", async || {
        let asked = election::members(&urls, client_tls.as_ref(), Duration::from_secs(1));
        let members = match asked.await {
            Ok(members) => members,
            Err(error) => return Ok::<_, anyhow::Error>(Probe::Waiting(error.to_string())),
        };
        let sick: Vec<String> = members
            .iter()
            .filter(|member| !member.healthy)
            .map(|member| {
                let why = member.error.as_deref().unwrap_or("not healthy");
                format!("{}: {why}", member.name)
            })
            .collect();
        if members.len() == MEMBERS && sick.is_empty() {
            Ok(Probe::Done(()))
        } else {
            Ok(Probe::Waiting(format!(
                "{} of {MEMBERS} members healthy ({}); logs under {}",
                members.len() - sick.len(),
                sick.join("; "),
                data_dir.join("etcd").display()
            )))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_location_names_every_member_and_the_prefix() {
        let members: Vec<Member> = (1..=3)
            .map(|n| Member {
                name: format!("etcd{n}"),
                client_port: 2000 + n,
                peer_port: 3000 + n,
            })
            .collect();
        assert_eq!(
            store_location(&members),
            "etcd://127.0.0.1:2001,127.0.0.1:2002,127.0.0.1:2003/tandem"
        );
        assert_eq!(client_urls(&members, false)[2], "http://127.0.0.1:2003");
        assert_eq!(client_urls(&members, true)[0], "https://127.0.0.1:2001");
    }
}
