//! Tandem's object store: persistent, versioned, watchable objects behind a narrow interface.
//!
//! Objects are JSON documents addressed by kind, namespace and name. Every write gets the next
//! resource version (one counter for the whole store, as in Kubernetes and etcd), stamped into
//! the object's `metadata.resourceVersion`. An update or delete names the version it read and is
//! refused with a conflict if the object changed since (optimistic concurrency). Every write is
//! also appended to a change log, so a watcher can ask for everything after a version it has seen;
//! the log keeps the newest changes only, and a watch from before them is told to list again.
//!
//! The controllers see only the [`Store`] trait. [`RedbStore`], one crash-safe file under the data
//! directory, is the default; [`EtcdStore`] (feature `etcd`) keeps the objects in an etcd cluster
//! under the same contract, its resource versions being etcd revisions. [`Location`] names either
//! (`redb:PATH`, a bare path, or `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`) and [`open`] opens it.

#[cfg(feature = "etcd")]
mod etcd;
mod location;

#[cfg(feature = "etcd")]
pub use etcd::{url as etcd_url, EtcdOptions, EtcdStore, EtcdTls, EtcdTlsError};
pub use location::{open, Location, OpenError, ETCD_PREFIX_DEFAULT};

#[cfg(feature = "etcd")]
pub mod election;

use std::fmt;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where an object lives: its kind (as its `kind` field spells it), namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: &str, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key in the objects table. Kind and namespace come first so a prefix scan lists them.
    fn encoded(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// An object as stored, with the version of its last write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Versioned {
    pub key: ObjectKey,
    pub resource_version: u64,
    pub object: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as a watcher sees it. For a deletion, `object` is the last state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    pub object: Versioned,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    AlreadyExists(ObjectKey),
    #[error("{0} not found")]
    NotFound(ObjectKey),
    #[error(
        "{key} was changed by someone else (you read resource version {expected}, it is now \
         {actual}); read it again and retry"
    )]
    Conflict {
        key: ObjectKey,
        expected: u64,
        actual: u64,
    },
    #[error(
        "too old resource version: {requested} ({oldest}): the changes after it are no longer \
         kept; list again and watch from there"
    )]
    Expired { requested: u64, oldest: u64 },
    #[error("{key} is not a JSON object with metadata: {reason}")]
    Invalid { key: ObjectKey, reason: String },
    #[error("store file: {0}")]
    Storage(String),
    /// The store cannot be reached or cannot decide (etcd down, or without a quorum): the
    /// request may succeed later. The text names the store's endpoints and what failed.
    #[error("{0}")]
    Unavailable(String),
    #[error("{} is in use by another process (another control plane, or one still exiting)", .0.display())]
    InUse(std::path::PathBuf),
    /// A write made in a leader term that has ended (another control plane leads): nothing was
    /// written.
    #[error("this control plane no longer leads (its term {term} ended); nothing was written")]
    Fenced { term: i64 },
}

/// The narrow interface the control plane uses. Implementations are safe to share between
/// threads; every method is one atomic, durable step.
pub trait Store: Send + Sync {
    fn get(&self, key: &ObjectKey) -> Result<Option<Versioned>, StoreError>;
    /// Every object of a kind, in one namespace or all of them, ordered by namespace and name.
    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Versioned>, StoreError>;
    fn create(&self, key: &ObjectKey, object: Value) -> Result<Versioned, StoreError>;
    /// Replaces an object if it is still at `expected_version`.
    fn update(
        &self,
        key: &ObjectKey,
        expected_version: u64,
        object: Value,
    ) -> Result<Versioned, StoreError>;
    /// Deletes an object; with `expected_version`, only if it is still at that version.
    fn delete(
        &self,
        key: &ObjectKey,
        expected_version: Option<u64>,
    ) -> Result<Versioned, StoreError>;
    /// Changes after `version`, oldest first, at most `limit`.
    fn changes_since(&self, version: u64, limit: usize) -> Result<Vec<Change>, StoreError>;
    /// The newest resource version.
    fn current_version(&self) -> Result<u64, StoreError>;
    /// This store, whose writes hold only while leader `term` (see the `election` module) still leads,
    /// checked in the same step as the write ([`StoreError::Fenced`] otherwise). `None` for a
    /// store only one process can open: it has no other leader to fear.
    fn fenced(&self, term: i64) -> Option<Box<dyn Store + '_>> {
        let _ = term;
        None
    }
    /// The newest version this store has seen committed, by any process, as it changes: how
    /// watchers learn of writes other processes make to a shared store. `None` for a store only
    /// this process writes: its writers know when they write.
    fn versions(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Forgets the changes before `version`: a watch from further back is told to list again
    /// ([`StoreError::Expired`]). Nothing, for a store that bounds its history itself (redb
    /// keeps the newest changes by count).
    fn compact(&self, version: u64) -> Result<(), StoreError> {
        let _ = version;
        Ok(())
    }
}

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const VERSION: &str = "resource_version";

/// How many changes the log keeps by default.
pub const CHANGES_KEPT_DEFAULT: u64 = 10_000;

/// The default store: one redb file, every write committed durably before it returns.
pub struct RedbStore {
    database: Database,
    changes_kept: u64,
}

impl RedbStore {
    /// Opens (or creates) the store file.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_keeping(path, CHANGES_KEPT_DEFAULT)
    }

    /// Opens the store, keeping at most `changes_kept` changes for watchers.
    pub fn open_keeping(path: &Path, changes_kept: u64) -> Result<RedbStore, StoreError> {
        let database = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.to_path_buf()),
            e => StoreError::Storage(format!("open {}: {e}", path.display())),
        })?;
        let transaction = database.begin_write().map_err(storage)?;
        {
            transaction.open_table(OBJECTS).map_err(storage)?;
            transaction.open_table(CHANGES).map_err(storage)?;
            transaction.open_table(COUNTERS).map_err(storage)?;
        }
        transaction.commit().map_err(storage)?;
        Ok(RedbStore {
            database,
            changes_kept: changes_kept.max(1),
        })
    }

    /// Runs one write: `change` computes the new state from the current one (if any) and the
    /// version this write gets. The object, its change-log entry and the counter commit together.
    fn write(
        &self,
        key: &ObjectKey,
        change: impl FnOnce(Option<Versioned>, u64) -> Result<(ChangeKind, Versioned), StoreError>,
    ) -> Result<Versioned, StoreError> {
        let transaction = self.database.begin_write().map_err(storage)?;
        let result = {
            let mut objects = transaction.open_table(OBJECTS).map_err(storage)?;
            let mut changes = transaction.open_table(CHANGES).map_err(storage)?;
            let mut counters = transaction.open_table(COUNTERS).map_err(storage)?;
            let current = match objects.get(key.encoded().as_str()).map_err(storage)? {
                Some(bytes) => Some(decode(bytes.value())?),
                None => None,
            };
            let version = counters
                .get(VERSION)
                .map_err(storage)?
                .map_or(0, |v| v.value())
                + 1;
            let (kind, versioned) = change(current, version)?;
            match kind {
                ChangeKind::Deleted => {
                    objects.remove(key.encoded().as_str()).map_err(storage)?;
                }
                ChangeKind::Added | ChangeKind::Modified => {
                    let bytes = encode(&versioned)?;
                    objects
                        .insert(key.encoded().as_str(), bytes.as_slice())
                        .map_err(storage)?;
                }
            }
            let entry = encode(&Change {
                kind,
                object: versioned.clone(),
            })?;
            changes.insert(version, entry.as_slice()).map_err(storage)?;
            if version > self.changes_kept {
                // One insert, one removal: the log stays at its bound.
                changes
                    .remove(version - self.changes_kept)
                    .map_err(storage)?;
            }
            counters.insert(VERSION, version).map_err(storage)?;
            versioned
        };
        transaction.commit().map_err(storage)?;
        Ok(result)
    }
}

impl Store for RedbStore {
    fn get(&self, key: &ObjectKey) -> Result<Option<Versioned>, StoreError> {
        let transaction = self.database.begin_read().map_err(storage)?;
        let objects = transaction.open_table(OBJECTS).map_err(storage)?;
        let found = objects.get(key.encoded().as_str()).map_err(storage)?;
        found.map(|bytes| decode(bytes.value())).transpose()
    }

    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Versioned>, StoreError> {
        let prefix = match namespace {
            Some(namespace) => format!("{kind}/{namespace}/"),
            None => format!("{kind}/"),
        };
        let transaction = self.database.begin_read().map_err(storage)?;
        let objects = transaction.open_table(OBJECTS).map_err(storage)?;
        let mut found = Vec::new();
        for entry in objects.range(prefix.as_str()..).map_err(storage)? {
            let (key, bytes) = entry.map_err(storage)?;
            if !key.value().starts_with(&prefix) {
                break;
            }
            found.push(decode(bytes.value())?);
        }
        Ok(found)
    }

    fn create(&self, key: &ObjectKey, object: Value) -> Result<Versioned, StoreError> {
        self.write(key, |current, version| {
            if current.is_some() {
                return Err(StoreError::AlreadyExists(key.clone()));
            }
            Ok((ChangeKind::Added, stamp(key, object, version)?))
        })
    }

    fn update(
        &self,
        key: &ObjectKey,
        expected_version: u64,
        object: Value,
    ) -> Result<Versioned, StoreError> {
        self.write(key, |current, version| {
            let current = current.ok_or_else(|| StoreError::NotFound(key.clone()))?;
            if current.resource_version != expected_version {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: expected_version,
                    actual: current.resource_version,
                });
            }
            Ok((ChangeKind::Modified, stamp(key, object, version)?))
        })
    }

    fn delete(
        &self,
        key: &ObjectKey,
        expected_version: Option<u64>,
    ) -> Result<Versioned, StoreError> {
        self.write(key, |current, version| {
            let current = current.ok_or_else(|| StoreError::NotFound(key.clone()))?;
            if let Some(expected) = expected_version {
                if current.resource_version != expected {
                    return Err(StoreError::Conflict {
                        key: key.clone(),
                        expected,
                        actual: current.resource_version,
                    });
                }
            }
            Ok((ChangeKind::Deleted, stamp(key, current.object, version)?))
        })
    }

    fn changes_since(&self, version: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let transaction = self.database.begin_read().map_err(storage)?;
        let changes = transaction.open_table(CHANGES).map_err(storage)?;
        let oldest = match changes.first().map_err(storage)? {
            Some((oldest, _)) => oldest.value(),
            None => return Ok(Vec::new()),
        };
        if version + 1 < oldest {
            return Err(StoreError::Expired {
                requested: version,
                oldest,
            });
        }
        let mut found = Vec::new();
        for entry in changes.range(version + 1..).map_err(storage)?.take(limit) {
            let (_, bytes) = entry.map_err(storage)?;
            found.push(
                serde_json::from_slice(bytes.value())
                    .map_err(|e| StoreError::Storage(format!("decode a change-log entry: {e}")))?,
            );
        }
        Ok(found)
    }

    fn current_version(&self) -> Result<u64, StoreError> {
        let transaction = self.database.begin_read().map_err(storage)?;
        let counters = transaction.open_table(COUNTERS).map_err(storage)?;
        Ok(counters
            .get(VERSION)
            .map_err(storage)?
            .map_or(0, |v| v.value()))
    }
}

/// The object's `metadata`, which every stored object has.
fn metadata_mut<'a>(
    key: &ObjectKey,
    object: &'a mut Value,
) -> Result<&'a mut serde_json::Map<String, Value>, StoreError> {
    object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::Invalid {
            key: key.clone(),
            reason: "it has no metadata object".into(),
        })
}

/// Writes the version into `metadata.resourceVersion` (a string, as in Kubernetes).
fn stamp(key: &ObjectKey, mut object: Value, version: u64) -> Result<Versioned, StoreError> {
    let metadata = metadata_mut(key, &mut object)?;
    metadata.insert("resourceVersion".into(), Value::String(version.to_string()));
    Ok(Versioned {
        key: key.clone(),
        resource_version: version,
        object,
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Storage(format!("encode: {e}")))
}

fn decode(bytes: &[u8]) -> Result<Versioned, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Storage(format!("decode an object: {e}")))
}

fn storage(error: impl fmt::Display) -> StoreError {
    StoreError::Storage(error.to_string())
}
