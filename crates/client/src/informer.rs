//! A cache of one kind's objects kept up to date by a watch (client-go's reflector and store),
//! so that a loop which looks at every object often reads memory instead of listing them all
//! over the API each time: a thousand volumes listed by three agents twice a second kept the
//! control plane busy doing nothing.
//!
//! The cache lists once, then follows a watch from the list's version; a watch that ends is
//! renewed from the last version seen (an event's, or the server's bookmark: a kind that
//! rarely changes would otherwise have each renewal re-read every other write since), and one
//! that fails (the version was compacted away, the control plane restarted or changed) lists
//! again. Its content is therefore as of some recent
//! moment of the store, never a mix that the store never held for one object; across objects
//! it is as consistent as separate lists are. Writers still name the resource version they
//! read, so a decision made on a stale object loses with a conflict and is made again when the
//! cache catches up, which it signals.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::marker::PhantomData;

use tandem_objects::{Kind, Object, OfKind};
use tokio::sync::watch;

use crate::{Client, ClientError, WatchEvent};

/// How long one watch request stays open before it is renewed.
const WATCH_WINDOW: Duration = Duration::from_secs(10);
/// A watch silent for this much longer than its window is dead (a control plane that is
/// paused or cut off keeps the connection open and says nothing): it is opened again, through
/// whichever control plane answers.
const WATCH_GRACE: Duration = Duration::from_secs(3);
/// A list, or the opening of a watch, that has not answered in this long is abandoned and
/// tried again (a control plane that accepts connections and never answers would otherwise
/// hold the cache still forever).
const REQUEST_PATIENCE: Duration = Duration::from_secs(30);
/// After an error, the list or watch is tried again after this long.
const RETRY: Duration = Duration::from_secs(1);

/// The cache of one kind's objects in one namespace (or all); cheap to clone. The task that
/// keeps it stops when the last clone is dropped.
#[derive(Clone)]
pub struct Informer {
    shared: Arc<Shared>,
    _task: Arc<AbortOnDrop>,
}

/// The cached objects by (namespace, name).
type Objects = BTreeMap<(String, String), Arc<Object>>;

struct Shared {
    kind: Kind,
    /// `None` until the first list arrived. Each object is shared with the snapshots taken of
    /// it (see [`Informer::snapshot`]); a change replaces it.
    objects: Mutex<Option<Objects>>,
    /// Counts the changes of the cache.
    changes: watch::Sender<u64>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Informer {
    /// Starts keeping the objects of `kind` in `namespace` (all namespaces: `None`). Must be
    /// called within a tokio runtime.
    pub fn start(client: Client, kind: Kind, namespace: Option<&str>) -> Informer {
        let shared = Arc::new(Shared {
            kind,
            objects: Mutex::new(None),
            changes: watch::channel(0).0,
        });
        let task = tokio::spawn(keep(client, namespace.map(str::to_string), shared.clone()));
        Informer {
            shared,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    pub fn kind(&self) -> Kind {
        self.shared.kind
    }

    /// The objects `keep` accepts, as their kind's type (only those are copied out of the
    /// cache); `None` until the first list has arrived.
    pub fn typed_where<T: TryFrom<Object>>(
        &self,
        keep: impl Fn(&Object) -> bool,
    ) -> Option<Vec<T>> {
        self.read(|objects| {
            objects
                .filter(|object| keep(object))
                .filter_map(|object| T::try_from(object.as_ref().clone()).ok())
                .collect()
        })
    }

    /// Every object of type `T` as last seen, in (namespace, name) order, shared with the
    /// cache rather than copied: a pass that looks at a thousand volumes takes a reference
    /// to each. `None` until the first list has arrived.
    pub fn snapshot<T: OfKind>(&self) -> Option<Snapshot<T>> {
        self.read(|objects| Snapshot {
            objects: objects
                .filter(|object| T::of(object).is_some())
                .cloned()
                .collect(),
            kind: PhantomData,
        })
    }

    /// Whether the first list has arrived.
    pub fn listed(&self) -> bool {
        self.read(|_| ()).is_some()
    }

    /// `read` over the cached objects, in (namespace, name) order, under the cache's lock;
    /// `None` until the first list has arrived.
    fn read<R>(&self, read: impl FnOnce(&mut dyn Iterator<Item = &Arc<Object>>) -> R) -> Option<R> {
        let objects = self
            .shared
            .objects
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        objects.as_ref().map(|map| read(&mut map.values()))
    }

    /// A receiver that sees a change each time the cache changes (the first list included).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Waits until the first list has arrived.
    pub async fn synced(&self) {
        let mut changes = self.subscribe();
        while !self.listed() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Shared {
    fn replace(&self, objects: Vec<Object>) {
        let fresh: Objects = objects
            .into_iter()
            .map(|object| (key(&object), Arc::new(object)))
            .collect();
        let mut current = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref() != Some(&fresh) {
            *current = Some(fresh);
            drop(current);
            self.changed();
        }
    }

    fn apply(&self, event: WatchEvent) {
        let mut current = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(objects) = current.as_mut() else {
            return;
        };
        match event {
            WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                objects.insert(key(&object), Arc::new(object));
            }
            WatchEvent::Deleted(object) => {
                objects.remove(&key(&object));
            }
        }
        drop(current);
        self.changed();
    }

    fn changed(&self) {
        self.changes
            .send_modify(|count| *count = count.wrapping_add(1));
    }
}

fn no_answer(client: &Client) -> ClientError {
    ClientError::Unreachable {
        server: client.server().to_string(),
        detail: format!("no answer within {REQUEST_PATIENCE:?}"),
    }
}

fn key(object: &Object) -> (String, String) {
    (object.namespace().to_string(), object.name().to_string())
}

/// Lists, then follows watches from the last version seen, until aborted.
async fn keep(client: Client, namespace: Option<String>, shared: Arc<Shared>) {
    let kind = shared.kind;
    loop {
        let listed = tokio::time::timeout(
            REQUEST_PATIENCE,
            client.list(kind, namespace.as_deref(), None),
        );
        let list = match listed.await.unwrap_or_else(|_| Err(no_answer(&client))) {
            Ok(list) => list,
            Err(error) => {
                tracing::debug!(kind = kind.name(), %error, "cannot list for the cache; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut version = list.resource_version;
        shared.replace(list.items);
        // Renew the watch from the last version seen for as long as that works.
        loop {
            let opened = tokio::time::timeout(
                REQUEST_PATIENCE,
                client.watch(kind, namespace.as_deref(), None, version, WATCH_WINDOW),
            );
            let mut watch = match opened.await.unwrap_or_else(|_| Err(no_answer(&client))) {
                Ok(watch) => watch,
                Err(error) => {
                    tracing::debug!(kind = kind.name(), %error, "cannot watch; listing again");
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            };
            let ended = loop {
                let Ok(next) = tokio::time::timeout(WATCH_WINDOW + WATCH_GRACE, watch.next()).await
                else {
                    tracing::debug!(kind = kind.name(), "the watch went silent; opening another");
                    break Ok(());
                };
                // Every change up to here has been seen (an event's version, or a bookmark's).
                version = watch.version();
                match next {
                    Ok(Some(event)) => shared.apply(event),
                    Ok(None) => break Ok(()),
                    Err(error) => break Err(error),
                }
            };
            if let Err(error) = ended {
                tracing::debug!(kind = kind.name(), %error, "watch failed; listing again");
                tokio::time::sleep(RETRY).await;
                break;
            }
        }
    }
}

/// Objects of one type as an [`Informer`] held them at one moment, shared with its cache: each
/// costs a reference count, not a copy. An object that changes later is replaced in the cache,
/// never in a snapshot.
pub struct Snapshot<T> {
    /// Only objects of type `T` (see [`Informer::snapshot`]).
    objects: Vec<Arc<Object>>,
    kind: PhantomData<fn() -> T>,
}

impl<T: OfKind> Snapshot<T> {
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.objects.iter().filter_map(|object| T::of(object))
    }

    /// The object at `position` (in the snapshot's order).
    pub fn get(&self, position: usize) -> Option<&T> {
        self.objects.get(position).and_then(|object| T::of(object))
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Whether this snapshot holds what `earlier` held, as far as `same` tells, object by
    /// object in order: objects the cache has not replaced since are not compared.
    pub fn same_as(&self, earlier: &Snapshot<T>, same: impl Fn(&T, &T) -> bool) -> bool {
        self.objects.len() == earlier.objects.len()
            && (self.objects.iter().zip(&earlier.objects)).all(|(now, then)| {
                Arc::ptr_eq(now, then)
                    || matches!((T::of(now), T::of(then)), (Some(now), Some(then)) if same(now, then))
            })
    }

    /// Adds an object at the end (for views built by hand).
    pub fn push(&mut self, object: T) {
        self.objects.push(Arc::new(object.into()));
    }
}

impl<T> Default for Snapshot<T> {
    fn default() -> Snapshot<T> {
        Snapshot {
            objects: Vec::new(),
            kind: PhantomData,
        }
    }
}

impl<T> Clone for Snapshot<T> {
    fn clone(&self) -> Snapshot<T> {
        Snapshot {
            objects: self.objects.clone(),
            kind: PhantomData,
        }
    }
}

impl<T: OfKind> FromIterator<T> for Snapshot<T> {
    fn from_iter<I: IntoIterator<Item = T>>(objects: I) -> Snapshot<T> {
        Snapshot {
            objects: objects
                .into_iter()
                .map(|object| Arc::new(object.into()))
                .collect(),
            kind: PhantomData,
        }
    }
}

impl<T: OfKind> From<Vec<T>> for Snapshot<T> {
    fn from(objects: Vec<T>) -> Snapshot<T> {
        objects.into_iter().collect()
    }
}

impl<T: OfKind> Extend<T> for Snapshot<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, objects: I) {
        for object in objects {
            self.push(object);
        }
    }
}

impl<T: OfKind + std::fmt::Debug> std::fmt::Debug for Snapshot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}
