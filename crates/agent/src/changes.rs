//! Wake-ups for the agent's loops, so they answer a change at once instead of at their next
//! interval: a watch on the objects whose changes need an answer from some agent (CVRs: a new
//! replica to create, an incarnation to add, a deletion; CVCs: an edited pool list), and the
//! state changes of this node's targets (a replica's mode, the volume's phase, the membership).
//! The loops still run on their intervals; a lost watch only costs latency.

use std::sync::Arc;
use std::time::Duration;

use tandem_client::Client;
use tandem_objects::Kind;
use tokio::sync::watch;

/// How long a watch request stays open before it is renewed.
const WATCH_WINDOW: Duration = Duration::from_secs(60);
/// After an error, the watch is retried after this long.
const RETRY: Duration = Duration::from_secs(1);
/// A change wakes a loop after this pause, so a burst of changes makes one pass.
const COALESCE: Duration = Duration::from_millis(20);

/// The object kinds whose changes wake the loops. CVs are left out: their status changes with
/// every rebuild progress report, and the targets that write them wake their own loop.
const WATCHED: [Kind; 2] = [Kind::CStorVolumeReplica, Kind::CStorVolumeConfig];

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

    /// Watches the API's objects in `namespace` until the task is aborted.
    pub fn watch_api(&self, client: Client, namespace: String) -> tokio::task::JoinHandle<()> {
        let changes = self.clone();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for kind in WATCHED {
                tasks.spawn(watch_kind(
                    client.clone(),
                    kind,
                    namespace.clone(),
                    changes.clone(),
                ));
            }
            while tasks.join_next().await.is_some() {}
        })
    }
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

    /// Waits for `interval`, or less if something changed since [`Wakeups::seen`].
    pub async fn wait(&mut self, interval: Duration) {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            changed = self.receiver.changed() => {
                if changed.is_ok() {
                    tokio::time::sleep(COALESCE).await;
                } else {
                    // Every sender is gone (the agent is stopping): plain interval.
                    tokio::time::sleep(interval).await;
                }
            }
        }
    }
}

async fn watch_kind(client: Client, kind: Kind, namespace: String, changes: Changes) {
    loop {
        let version = match client.list(kind, Some(&namespace), None).await {
            Ok(list) => list.resource_version,
            Err(error) => {
                tracing::debug!(kind = kind.name(), %error, "cannot list for a watch; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut watch = match client
            .watch(kind, Some(&namespace), None, version, WATCH_WINDOW)
            .await
        {
            Ok(watch) => watch,
            Err(error) => {
                tracing::debug!(kind = kind.name(), %error, "cannot watch; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            match watch.next().await {
                Ok(Some(_)) => changes.signal(),
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(kind = kind.name(), %error, "watch ended; renewing");
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            }
        }
    }
}
