//! What the agent's loops read and what wakes them. The objects they look at (pool clusters,
//! pools, volume configs, volumes, replicas) are kept in memory by watches (`Cache`, one
//! [`tandem_client::Informer`] per kind), so a pass reads memory instead of listing every
//! object over the API. The loops wake at once when an object changes whose change needs an
//! answer from some agent (a pool, a CVR: a new replica to create, an incarnation to add, a
//! deletion; a CVC: an edited pool list) and when one of this node's targets changes state (a
//! replica's mode, the volume's phase, the membership); otherwise they run on their (slow)
//! intervals.

use std::sync::Arc;
use std::time::Duration;

use tandem_client::{Client, ClientError, Informer, Snapshot};
use tandem_objects::{CStorVolume, Kind, Object, ObjectMeta, OfKind};
use tokio::sync::watch;

/// How long a loop waits at start for the caches' first lists.
pub const FIRST_LIST_PATIENCE: Duration = Duration::from_secs(10);
/// A change wakes a loop after this pause, so a burst of changes makes one pass.
const COALESCE: Duration = Duration::from_millis(20);

/// The objects of the agent's namespace that its loops read, each kept by a watch.
#[derive(Clone)]
pub struct Cache {
    pub namespace: String,
    pub clusters: Informer,
    pub pools: Informer,
    pub configs: Informer,
    pub volumes: Informer,
    pub replicas: Informer,
}

impl Cache {
    pub fn start(client: &Client, namespace: &str) -> Cache {
        let informer = |kind| Informer::start(client.clone(), kind, Some(namespace));
        Cache {
            namespace: namespace.to_string(),
            clusters: informer(Kind::CStorPoolCluster),
            pools: informer(Kind::CStorPoolInstance),
            configs: informer(Kind::CStorVolumeConfig),
            volumes: informer(Kind::CStorVolume),
            replicas: informer(Kind::CStorVolumeReplica),
        }
    }

    /// Waits until every kind has been listed once, for at most `patience`: a loop's first
    /// pass would otherwise fail on the kinds not listed yet (and say so) right after start.
    /// Past it the pass runs anyway, and reports what it cannot read.
    pub async fn synced_within(&self, patience: Duration) {
        let all = async {
            for informer in [
                &self.clusters,
                &self.pools,
                &self.configs,
                &self.volumes,
                &self.replicas,
            ] {
                informer.synced().await;
            }
        };
        let _ = tokio::time::timeout(patience, all).await;
    }

    /// The objects of `informer`'s kind, shared with the cache, or why there are none to
    /// read yet.
    pub fn snapshot<T: OfKind>(informer: &Informer) -> Result<Snapshot<T>, ClientError> {
        informer.snapshot().ok_or_else(|| not_listed(informer))
    }

    /// The objects of `informer`'s kind that `keep` accepts, or why there are none to read yet.
    pub fn read_where<T: TryFrom<Object>>(
        informer: &Informer,
        keep: impl Fn(&Object) -> bool,
    ) -> Result<Vec<T>, ClientError> {
        informer
            .typed_where(keep)
            .ok_or_else(|| not_listed(informer))
    }

    /// The objects of `informer`'s kind labelled `label=value`.
    pub fn read_labelled<T: TryFrom<Object>>(
        informer: &Informer,
        label: &str,
        value: &str,
    ) -> Result<Vec<T>, ClientError> {
        Cache::read_where(informer, |object| {
            object.metadata().labels.get(label).map(String::as_str) == Some(value)
        })
    }
}

/// Why a cache cannot be read yet.
fn not_listed(informer: &Informer) -> ClientError {
    ClientError::Unreachable {
        server: "the control plane".to_string(),
        detail: format!("no {} listed yet", informer.kind().name()),
    }
}

/// A change signal every loop can wait on; cheap to clone.
#[derive(Clone)]
pub struct Changes {
    sender: Arc<watch::Sender<u64>>,
}

impl Changes {
    pub fn new() -> Changes {
        Changes {
            sender: Arc::new(watch::channel(0).0),
        }
    }

    /// Wakes every loop.
    pub fn signal(&self) {
        self.sender
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    pub fn subscribe(&self) -> Wakeups {
        Wakeups {
            receiver: self.sender.subscribe(),
        }
    }

    /// Signals every change of the cache's pool clusters, pools, configs and replicas, and
    /// every change of a volume other than its status, until the task is aborted. A volume's
    /// status alone is left out: it changes with every rebuild progress report, and the
    /// targets that write it wake their own loop.
    pub fn follow(&self, cache: &Cache) -> tokio::task::JoinHandle<()> {
        let changes = self.clone();
        let mut followed: Vec<watch::Receiver<u64>> = [
            &cache.clusters,
            &cache.pools,
            &cache.configs,
            &cache.replicas,
        ]
        .into_iter()
        .map(Informer::subscribe)
        .collect();
        let mut volumes_changed = cache.volumes.subscribe();
        let volumes = cache.volumes.clone();
        tokio::spawn(async move {
            let mut placed = volumes.snapshot::<CStorVolume>();
            loop {
                let others = futures::future::select_all(
                    followed
                        .iter_mut()
                        .map(|receiver| Box::pin(receiver.changed())),
                );
                tokio::select! {
                    (result, _, _) = others => {
                        if result.is_err() {
                            return;
                        }
                    }
                    result = volumes_changed.changed() => {
                        if result.is_err() {
                            return;
                        }
                        let now = volumes.snapshot::<CStorVolume>();
                        let same = match (&now, &placed) {
                            (Some(now), Some(placed)) => now.same_as(placed, same_placement),
                            (now, placed) => now.is_none() && placed.is_none(),
                        };
                        placed = now;
                        if same {
                            continue;
                        }
                    }
                }
                changes.signal();
            }
        })
    }
}

/// Whether two states of a volume place its target alike: the same place, generation,
/// membership and deletion (everything but its status and resource version).
fn same_placement(now: &CStorVolume, then: &CStorVolume) -> bool {
    let without_version = |meta: &ObjectMeta| ObjectMeta {
        resource_version: String::new(),
        ..meta.clone()
    };
    now.spec == then.spec && without_version(&now.metadata) == without_version(&then.metadata)
}

/// One loop's view of the change signal.
pub struct Wakeups {
    receiver: watch::Receiver<u64>,
}

impl Wakeups {
    /// Marks every change so far as seen: call it before a pass reads the objects.
    pub fn seen(&mut self) {
        self.receiver.borrow_and_update();
    }

    /// Whether something changed since [`Wakeups::seen`] (a pass may then leave work that can
    /// wait to the next one, which follows at once).
    pub fn pending(&self) -> bool {
        self.receiver.has_changed().unwrap_or(false)
    }

    /// Waits for `interval`, or less if something changed since [`Wakeups::seen`]; true if
    /// woken by a change.
    pub async fn wait(&mut self, interval: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(interval) => false,
            changed = self.receiver.changed() => {
                if changed.is_ok() {
                    tokio::time::sleep(COALESCE).await;
                    true
                } else {
                    // Every sender is gone (the agent is stopping): plain interval.
                    tokio::time::sleep(interval).await;
                    false
                }
            }
        }
    }
}
