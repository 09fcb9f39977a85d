//! `tandem status`: the local cluster's processes as an operator checks them: each control plane
//! (address, pid, whether it leads), with `--ha` each etcd member and its health, and each node
//! agent as the control planes see it. Exits non-zero when something is down.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tabwriter::TabWriter;
use tandem_client::Client;
use tandem_store::election;

use super::{
    control_plane_dir, etcd, ha_control_plane_dir, read_recorded, running_pid, ClusterFile,
};
use crate::server::default_data_dir;

#[derive(Args)]
pub struct StatusArgs {
    /// The data directory [default: ~/.tandem].
    #[arg(long, env = "TANDEM_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// How long each question to etcd or a control plane may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Prints the status; `Ok(false)` when a process is down or unhealthy.
pub fn status(args: StatusArgs) -> Result<bool> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let cluster = read_recorded(&data_dir).with_context(|| {
        format!(
            "no Tandem cluster in {} (start one with `tandem up`)",
            data_dir.display()
        )
    })?;
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(report(&data_dir, &cluster))
}

async fn report(data_dir: &std::path::Path, cluster: &ClusterFile) -> Result<bool> {
    let mut healthy = true;
    let mut table = String::from("CONTROL PLANE\tPID\tROLE\n");
    let mut servers = Vec::new();
    match &cluster.ha {
        None => {
            let address = format!("{}://127.0.0.1:{}", cluster.scheme(), cluster.port);
            let pid = running_pid(
                &control_plane_dir(data_dir).join("control-plane.pid"),
                "tandem",
            );
            let role = if pid.is_some() {
                "leader (the only one; store: redb)"
            } else {
                healthy = false;
                "down"
            };
            table += &format!("{address}\t{}\t{role}\n", show(pid));
            servers.push(address);
        }
        Some(ha) => {
            let urls = etcd::client_urls(&ha.etcd, ha.etcd_tls);
            let tls = ha.etcd_pki(data_dir).map(|pki| pki.client()).transpose()?;
            let registered =
                election::control_planes(&urls, tls.as_ref(), etcd::PREFIX, ASK_TIMEOUT).await;
            let (planes, leader) = match &registered {
                Ok((planes, leader)) => (planes.clone(), leader.clone()),
                Err(_) => (Vec::new(), None),
            };
            for (index, port) in ha.control_plane_ports.iter().enumerate() {
                let address = format!("{}://127.0.0.1:{port}", cluster.scheme());
                let pid = running_pid(
                    &control_plane_dir(&ha_control_plane_dir(data_dir, index))
                        .join("control-plane.pid"),
                    "tandem",
                );
                let role = match (&pid, &registered) {
                    (None, _) => "down".to_string(),
                    (Some(_), Err(error)) => format!("unknown: {error}"),
                    (Some(_), Ok(_)) if leader.as_deref() == Some(address.as_str()) => {
                        "leader".to_string()
                    }
                    (Some(_), Ok(_)) if planes.iter().any(|p| p.address == address) => {
                        "standby".to_string()
                    }
                    (Some(_), Ok(_)) => "not registered (paused, or cannot reach etcd)".to_string(),
                };
                healthy &= role == "leader" || role == "standby";
                table += &format!("{address}\t{}\t{role}\n", show(pid));
                servers.push(address);
            }
            if leader.is_none() {
                healthy = false;
                table += "(no control plane leads: the controllers are stopped)\n";
            }
            table += "\nETCD MEMBER\tCLIENT URL\tPID\tHEALTH\n";
            let members = election::members(&urls, tls.as_ref(), ASK_TIMEOUT).await;
            for member in &ha.etcd {
                let pid = running_pid(&member.pid_file(data_dir), "etcd");
                let health = match &members {
                    Ok(members) => match members.iter().find(|m| m.name == member.name) {
                        Some(m) if m.healthy && m.leader => "healthy (raft leader)".to_string(),
                        Some(m) if m.healthy => "healthy".to_string(),
                        Some(m) => m.error.clone().unwrap_or_else(|| "unhealthy".into()),
                        None => "not a member".to_string(),
                    },
                    Err(error) => format!("unreachable: {error}"),
                };
                healthy &= health.starts_with("healthy");
                table += &format!(
                    "{}\t{}\t{}\t{health}\n",
                    member.name,
                    member.client_url(ha.etcd_tls),
                    show(pid)
                );
            }
        }
    }
    table += "\nNODE\tREADY\tLAST HEARTBEAT\n";
    let nodes = ask_nodes(data_dir, &servers).await;
    match nodes {
        Ok(nodes) => {
            for node in &cluster.nodes {
                match nodes.iter().find(|status| status.node == node.name) {
                    Some(status) => {
                        healthy &= status.ready;
                        table += &format!(
                            "{}\t{}\t{} ms ago\n",
                            node.name,
                            if status.ready { "True" } else { "False" },
                            status.last_seen_ms
                        );
                    }
                    None => {
                        healthy = false;
                        table += &format!("{}\tUnknown\tnever\n", node.name);
                    }
                }
            }
        }
        Err(error) => {
            healthy = false;
            table += &format!("(no control plane answered: {error})\n");
        }
    }
    let mut writer = TabWriter::new(std::io::stdout()).padding(3);
    writer
        .write_all(table.as_bytes())
        .and_then(|()| writer.flush())
        .context("write the status")?;
    Ok(healthy)
}

fn show(pid: Option<i32>) -> String {
    pid.map_or_else(|| "-".to_string(), |pid| pid.to_string())
}

/// The nodes as the first control plane that answers within [`ASK_TIMEOUT`] sees them.
async fn ask_nodes(
    data_dir: &Path,
    servers: &[String],
) -> Result<Vec<tandem_client::NodeStatus>, tandem_client::ClientError> {
    let mut failures = Vec::new();
    let credentials = crate::server::ServerArgs::of_data_dir(data_dir)
        .credentials()
        .map_err(|error| tandem_client::ClientError::Protocol {
            server: servers.join(","),
            detail: format!("{error:#}"),
        })?;
    for client in Client::with_credentials(&servers.join(","), credentials.as_ref())?.each() {
        match tokio::time::timeout(ASK_TIMEOUT, client.nodes()).await {
            Ok(Ok(nodes)) => return Ok(nodes),
            Ok(Err(error)) => failures.push(error.to_string()),
            Err(_) => failures.push(format!(
                "{}: no answer within {ASK_TIMEOUT:?}",
                client.server()
            )),
        }
    }
    Err(tandem_client::ClientError::Unreachable {
        server: servers.join(","),
        detail: failures.join("; "),
    })
}
