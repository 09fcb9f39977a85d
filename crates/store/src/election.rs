//! Leader election among control planes that share an etcd: one key, `PREFIX/leader`, created
//! under a lease by whoever finds it absent. The winner leads until its lease runs out by its own
//! clock; every write it makes as leader is fenced on the key's create revision (its [`Term`]),
//! so a leader that was paused past its lease and wakes up cannot apply what it decided before.
//!
//! The clock argument: a lease that etcd granted or renewed with TTL `t` in answer to a request
//! sent at local time `s` cannot expire in etcd before `s + t` (etcd measured from the request's
//! arrival, after `s`). The leader stops acting at `s + t - margin`, so it has stopped before
//! etcd lets anyone else create the key. The fence covers what that argument cannot: a write
//! already in flight, and a process frozen between checking the deadline and writing.
//!
//! Each control plane also registers itself under `PREFIX/control-planes/ID` with its lease, so
//! `tandem status` can list the living ones and say which leads.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::EtcdTls;

/// Election settings: `ttl` is the lease, so the longest a dead leader holds the cluster up.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// etcd client URLs: `http://127.0.0.1:2379`, or `https://...` with `tls`.
    pub endpoints: Vec<String>,
    /// The client credential for an etcd serving TLS.
    pub tls: Option<EtcdTls>,
    /// The cluster's key prefix, without a trailing slash: `/tandem`.
    pub prefix: String,
    /// This control plane: its API address and process id.
    pub me: ControlPlane,
    pub ttl: Duration,
}

/// What a control plane registers about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlane {
    /// Where its API listens: `http://127.0.0.1:7070`; also its identity.
    pub address: String,
    pub pid: u32,
}

/// A leadership: the create revision of the leader key this control plane wrote. Writes made
/// as leader carry it and etcd refuses them once the key is gone or someone else's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Term(pub i64);

/// The state the election publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    Following,
    /// Leading in `term` until `until` by this process's clock, unless renewed before.
    Leading {
        term: Term,
        until: Instant,
    },
}

impl Leadership {
    /// The term this control plane may act in now, if any.
    pub fn current(&self) -> Option<Term> {
        match *self {
            Leadership::Leading { term, until } if Instant::now() < until => Some(term),
            _ => None,
        }
    }
}

/// Why one campaign ended (the election starts another).
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoints} did not answer within {timeout:?} ({what})")]
    Timeout {
        endpoints: String,
        what: &'static str,
        timeout: Duration,
    },
    #[error("the lease ran out: etcd did not renew it in time")]
    LeaseLost,
    #[error("etcd answered without a response header")]
    NoHeader,
}

/// The key whose creator leads.
pub fn leader_key(prefix: &str) -> String {
    format!("{prefix}/leader")
}

fn registration_key(prefix: &str, address: &str) -> String {
    format!("{prefix}/control-planes/{address}")
}

/// Runs the election until the receiver side is dropped: campaigns, leads while the lease
/// holds, steps down when it does not, and campaigns again. `leadership` is where it publishes.
pub async fn run(config: ElectionConfig, leadership: watch::Sender<Leadership>) {
    let pause = config.ttl / 3;
    while !leadership.is_closed() {
        match campaign(&config, &leadership).await {
            Ok(()) => return,
            Err(error) => {
                leadership.send_replace(Leadership::Following);
                tracing::warn!(%error, "leader election: starting over");
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// One lease's life: register, try for the key every poll, lead while renewals arrive in time.
/// Returns Ok only when nobody listens any more (the control plane stopped; the lease is revoked
/// so another leads at once).
async fn campaign(
    config: &ElectionConfig,
    leadership: &watch::Sender<Leadership>,
) -> Result<(), ElectionError> {
    let etcd = Etcd::connect(config).await?;
    let renew_every = config.ttl / 3;
    let margin = config.ttl / 6;
    let poll = Duration::from_millis(250).min(renew_every);

    let sent = Instant::now();
    let grant = etcd
        .call("lease grant", |mut c| async move {
            c.lease_grant(config.ttl.as_secs().max(1) as i64, None)
                .await
        })
        .await?;
    let lease = grant.id();
    let mut deadline = sent + Duration::from_secs(grant.ttl().max(0) as u64);
    let (mut keeper, mut renewals) = etcd
        .call("lease keep-alive", |mut c| async move {
            c.lease_keep_alive(lease).await
        })
        .await?;
    let me = serde_json::to_vec(&config.me).expect("a control plane's registration serializes");
    let key = leader_key(&config.prefix);
    etcd.call("registration", |mut c| {
        let me = me.clone();
        let registration = registration_key(&config.prefix, &config.me.address);
        async move {
            c.put(registration, me, Some(PutOptions::new().with_lease(lease)))
                .await
        }
    })
    .await?;

    let mut next_renewal = Instant::now() + renew_every;
    let mut term: Option<Term> = None;
    loop {
        if leadership.is_closed() {
            etcd.resign(lease).await;
            return Ok(());
        }
        if Instant::now() + margin >= deadline {
            return Err(ElectionError::LeaseLost);
        }
        if Instant::now() >= next_renewal {
            let sent = Instant::now();
            next_renewal = sent + renew_every;
            let renewed = tokio::time::timeout(etcd.timeout, async {
                keeper.keep_alive().await?;
                renewals.message().await
            })
            .await;
            match renewed {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                    deadline = sent + Duration::from_secs(answer.ttl() as u64);
                }
                // A TTL of 0: etcd let the lease go (it expired while we could not renew it).
                Ok(Ok(Some(_))) | Ok(Ok(None)) => return Err(ElectionError::LeaseLost),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "lease renewal failed; the deadline decides");
                }
                Err(_) => tracing::debug!("lease renewal timed out; the deadline decides"),
            }
        }
        if term.is_none() {
            let campaign = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    config.me.address.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let answer = etcd
                .call("campaign", |mut c| {
                    let campaign = campaign.clone();
                    async move { c.txn(campaign).await }
                })
                .await?;
            if answer.succeeded() {
                let revision = answer.header().ok_or(ElectionError::NoHeader)?.revision();
                term = Some(Term(revision));
                tracing::info!(term = revision, "leading the controllers");
            } else if let Some(TxnOpResponse::Get(current)) = answer.op_responses().first() {
                // Ours from a campaign whose answer was lost: the same lease, so still ours.
                if let Some(kv) = current.kvs().first().filter(|kv| kv.lease() == lease) {
                    term = Some(Term(kv.create_revision()));
                }
            }
        }
        let now_leading = match term {
            Some(term) => Leadership::Leading {
                term,
                until: deadline - margin,
            },
            None => Leadership::Following,
        };
        leadership.send_if_modified(|published| {
            let changed = *published != now_leading;
            *published = now_leading;
            changed
        });
        let wake = next_renewal.min(deadline - margin);
        let wake = if term.is_none() {
            wake.min(Instant::now() + poll)
        } else {
            wake
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = leadership.closed() => {}
        }
    }
}

/// The control planes registered now, and the address of the one that leads (if any).
pub async fn control_planes(
    endpoints: &[String],
    tls: Option<&EtcdTls>,
    prefix: &str,
    timeout: Duration,
) -> Result<(Vec<ControlPlane>, Option<String>), ElectionError> {
    let etcd = Etcd::connect_to(endpoints, tls, timeout).await?;
    let registered = etcd
        .call("list control planes", |mut c| {
            let key = format!("{prefix}/control-planes/");
            async move { c.get(key, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
    let planes = registered
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    let leader = etcd
        .call("leader", |mut c| {
            let key = leader_key(prefix);
            async move { c.get(key, None).await }
        })
        .await?;
    let leader = leader
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
    Ok((planes, leader))
}

/// One etcd member as `tandem status` shows it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub client_urls: Vec<String>,
    /// Whether it answered a status request (with a raft leader) in time.
    pub healthy: bool,
    /// Whether it is the raft leader.
    pub leader: bool,
    /// Why it is not healthy.
    pub error: Option<String>,
}

/// Every member of the etcd cluster and whether each answers.
pub async fn members(
    endpoints: &[String],
    tls: Option<&EtcdTls>,
    timeout: Duration,
) -> Result<Vec<Member>, ElectionError> {
    let etcd = Etcd::connect_to(endpoints, tls, timeout).await?;
    let list = etcd
        .call("member list", |mut c| async move { c.member_list().await })
        .await?;
    let mut members = Vec::new();
    for member in list.members() {
        let urls = member.client_urls().to_vec();
        let status = async {
            let one = Etcd::connect_to(&urls, tls, timeout).await?;
            one.call("status", |mut c| async move { c.status().await })
                .await
        };
        let (healthy, leader, error) = match status.await {
            Ok(status) if status.leader() != 0 => (true, status.leader() == member.id(), None),
            Ok(_) => (false, false, Some("no raft leader".to_string())),
            Err(error) => (false, false, Some(error.to_string())),
        };
        members.push(Member {
            name: member.name().to_string(),
            client_urls: urls,
            healthy,
            leader,
            error,
        });
    }
    Ok(members)
}

/// An etcd client whose every call is bounded by `timeout`.
struct Etcd {
    client: Client,
    endpoints: String,
    timeout: Duration,
}

impl Etcd {
    async fn connect(config: &ElectionConfig) -> Result<Etcd, ElectionError> {
        // Calls must answer well within the lease, or the leader could not renew it in time.
        let timeout = (config.ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(2));
        Etcd::connect_to(&config.endpoints, config.tls.as_ref(), timeout).await
    }

    async fn connect_to(
        endpoints: &[String],
        tls: Option<&EtcdTls>,
        timeout: Duration,
    ) -> Result<Etcd, ElectionError> {
        let joined = endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_require_leader(true);
        if let Some(tls) = tls {
            options = options.with_tls(tls.options());
        }
        let client = tokio::time::timeout(timeout, Client::connect(endpoints, Some(options)))
            .await
            .map_err(|_| ElectionError::Timeout {
                endpoints: joined.clone(),
                what: "connect",
                timeout,
            })?
            .map_err(|source| ElectionError::Etcd {
                endpoints: joined.clone(),
                source,
            })?;
        Ok(Etcd {
            client,
            endpoints: joined,
            timeout,
        })
    }

    async fn call<T, F, Fut>(&self, what: &'static str, call: F) -> Result<T, ElectionError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.timeout, call(self.client.clone())).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(source)) => Err(ElectionError::Etcd {
                endpoints: self.endpoints.clone(),
                source,
            }),
            Err(_) => Err(ElectionError::Timeout {
                endpoints: self.endpoints.clone(),
                what,
                timeout: self.timeout,
            }),
        }
    }

    /// Gives the lease back, so the leader key and the registration go at once (best effort:
    /// otherwise they go when the lease runs out).
    async fn resign(&self, lease: i64) {
        if let Err(error) = self
            .call("lease revoke", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await
        {
            tracing::info!(%error, "could not give the lease back; it runs out on its own");
        }
    }
}
