//! [`EtcdStore`]: the object store in an etcd cluster, under the same contract as `RedbStore`.
//!
//! Layout under the prefix (default `/tandem`): `PREFIX/objects/<kind>/<namespace>/<name>` holds
//! each object's JSON, and `PREFIX/last-write` is rewritten by every write, so its mod revision
//! is this store's current version even when others write elsewhere in the cluster. An object's
//! resource version is its key's mod revision. A create, update or delete is one etcd
//! transaction comparing the key's create or mod revision (optimistic concurrency).
//! `changes_since` answers from the watch cache (`cache.rs`: the newest changes, followed by one
//! live watch) once it has reached the current version, and otherwise replays etcd's history with
//! a watch from the asked version (with each deleted object's last state), answering Expired once
//! etcd has compacted past it.
//!
//! The `Store` trait is synchronous and the control plane calls it from async handlers, so the
//! store owns a small tokio runtime: each call runs there while the caller waits on a channel,
//! which works from plain threads and from inside another runtime alike.
//!
//! Every call has a deadline. The store keeps one connection per endpoint and sticks to one that
//! answers; a read moves on to the next endpoint after any transport failure, a write only when
//! it certainly did not reach etcd (connection refused, or a member without a leader), since a
//! write whose answer was lost may have happened. Past the deadline, or after such a lost
//! answer, the call fails with [`StoreError::Unavailable`], naming the endpoints and what failed.

mod cache;
mod connect;
mod fence;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, Event, EventType, GetOptions,
    KeyValue, KvClient, SortOrder, SortTarget, TxnOp, TxnOpResponse, TxnResponse, WatchClient,
    WatchOptions,
};
use serde_json::Value;
use tokio::time::Instant;

pub use connect::{url, EtcdTls, EtcdTlsError};
use fence::{Fence, Fenced};

use crate::{
    metadata_mut, stamp, Change, ChangeKind, ObjectKey, Store, StoreError, Versioned,
    CHANGES_KEPT_DEFAULT,
};

/// How long one call may take, retries included, unless told otherwise.
pub const ETCD_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// The largest answer accepted from etcd (a list of every object of a kind).
const MESSAGE_BYTES_MAX: usize = 256 << 20;

/// How an [`EtcdStore`] reaches its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Each member's client address, `host:port` (HTTPS with `tls`, else plain HTTP).
    pub endpoints: Vec<String>,
    /// The client credential for an etcd serving TLS; `None`: plain HTTP.
    pub tls: Option<EtcdTls>,
    /// Where the store's keys live, such as `/tandem` (no trailing slash).
    pub prefix: String,
    /// The most one call may take, retries included.
    pub timeout: Duration,
    /// How many of the newest changes the watch cache keeps in memory; older ones are read from
    /// etcd's history (until etcd compacts it).
    pub changes_kept: usize,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>, prefix: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            tls: None,
            prefix: prefix.trim_end_matches('/').to_string(),
            timeout: ETCD_TIMEOUT_DEFAULT,
            changes_kept: CHANGES_KEPT_DEFAULT as usize,
        }
    }

    pub fn with_tls(mut self, tls: Option<EtcdTls>) -> EtcdOptions {
        self.tls = tls;
        self
    }

    pub fn with_changes_kept(mut self, changes_kept: usize) -> EtcdOptions {
        self.changes_kept = changes_kept;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> EtcdOptions {
        self.timeout = timeout;
        self
    }
}

/// The object store in etcd. See the module documentation for the layout and the failure rules.
pub struct EtcdStore {
    cluster: Arc<Cluster>,
    /// Always present until drop, which shuts it down without blocking (it may be dropped on an
    /// async thread).
    runtime: Option<tokio::runtime::Runtime>,
}

impl EtcdStore {
    /// Connects and reads the current version once, so an unreachable cluster or a bad endpoint
    /// is reported now (as [`StoreError::Unavailable`]) rather than at the first request.
    pub fn open(options: EtcdOptions) -> Result<EtcdStore, StoreError> {
        let store = EtcdStore::connect(options)?;
        store.current_version()?;
        Ok(store)
    }

    /// Connects without contacting the cluster: connections are made by the first requests.
    pub fn connect(options: EtcdOptions) -> Result<EtcdStore, StoreError> {
        let named = format!("etcd at {}", options.endpoints.join(","));
        if options.endpoints.is_empty() {
            return Err(StoreError::Storage("etcd: no endpoints given".into()));
        }
        if !options.prefix.starts_with('/') {
            return Err(StoreError::Storage(format!(
                "{named}: the key prefix {:?} must start with '/'",
                options.prefix
            )));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tandem-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Storage(format!("{named}: start its runtime: {e}")))?;
        let connect = {
            let (endpoints, timeout, named) =
                (options.endpoints.clone(), options.timeout, named.clone());
            let tls = options.tls.clone();
            async move {
                let mut members = Vec::new();
                for endpoint in endpoints {
                    let client = Client::connect(
                        [url(&endpoint, tls.as_ref())],
                        Some(connect::connect_options(timeout, tls.as_ref())),
                    )
                    .await
                    .map_err(|e| {
                        StoreError::Storage(format!("{named}: endpoint {endpoint}: {e}"))
                    })?;
                    members.push(Member {
                        kv: client
                            .kv_client()
                            .max_decoding_message_size(MESSAGE_BYTES_MAX),
                        watch: client
                            .watch_client()
                            .max_decoding_message_size(MESSAGE_BYTES_MAX),
                        endpoint,
                    });
                }
                Ok(members)
            }
        };
        let members = match wait_on(&runtime, options.timeout, &named, connect) {
            Ok(members) => members,
            Err(error) => {
                // Dropping a runtime blocks, which panics on an async thread.
                runtime.shutdown_background();
                return Err(error);
            }
        };
        let prefix = options.prefix;
        let cluster = Arc::new(Cluster {
            members,
            preferred: AtomicUsize::new(0),
            named,
            timeout: options.timeout,
            objects: format!("{prefix}/objects/"),
            marker: format!("{prefix}/last-write"),
            leader_key: crate::election::leader_key(&prefix),
            watched: format!("{prefix}/"),
            cache: cache::Cache::new(options.changes_kept),
        });
        runtime.spawn(cache::follow(cluster.clone()));
        Ok(EtcdStore {
            cluster,
            runtime: Some(runtime),
        })
    }

    /// Runs `op` on the store's runtime with the cluster's retry and deadline rules, and waits.
    fn run<T, F, Fut>(&self, what: String, retry: Retry, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Member) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Failure>> + Send,
    {
        let cluster = self.cluster.clone();
        let runtime = self.runtime.as_ref().ok_or_else(|| {
            StoreError::Unavailable(format!(
                "{}: the store is shutting down",
                self.cluster.named
            ))
        })?;
        let (timeout, named) = (self.cluster.timeout, self.cluster.named.clone());
        wait_on(runtime, timeout, &named, async move {
            cluster.call(&what, retry, op).await
        })
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `work` on `runtime` and waits for its answer on a channel (never `block_on`, which
/// panics inside another runtime). `work` has its own deadline; this one is a backstop.
///
/// Called from a task of a multi-threaded Tokio runtime (the control plane's handlers), the wait
/// tells that runtime the thread is blocked, so its other tasks move to another thread: with
/// etcd gone each call waits out its deadline, and a few such calls would otherwise hold every
/// worker and leave the API unable to answer anything, even to say etcd is unavailable.
fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    timeout: Duration,
    named: &str,
    work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (answer, answered) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        // The caller may have given up; then nobody wants the answer.
        let _ = answer.send(work.await);
    });
    let wait = || {
        answered
            .recv_timeout(timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "{named}: no answer within {timeout:?}"
                )))
            })
    };
    let in_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if in_worker {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

/// One member's connection.
#[derive(Clone)]
struct Member {
    endpoint: String,
    kv: KvClient,
    watch: WatchClient,
}

/// What a call may safely repeat on another member.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: anything that failed in transport.
    Reads,
    /// Writes: only what certainly did not reach etcd.
    Writes,
}

/// How one attempt failed: etcd's error (retried by the rules) or the store's final answer.
enum Failure {
    Etcd(etcd_client::Error),
    Final(StoreError),
}

impl From<etcd_client::Error> for Failure {
    fn from(error: etcd_client::Error) -> Failure {
        Failure::Etcd(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Final(error)
    }
}

/// What an etcd error says about the request.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    /// It never reached a member that could decide: safe to send elsewhere.
    NotSent,
    /// The answer was lost; a write may or may not have happened.
    Lost,
    /// Etcd answered with an error that another member would repeat.
    Final,
}

fn classify(error: &etcd_client::Error) -> Class {
    use etcd_client::Error;
    use tonic::Code;
    match error {
        Error::GRpcStatus(status) => {
            let message = status.message().to_ascii_lowercase();
            let refused = message.contains("connect error")
                || message.contains("connection refused")
                || message.contains("error trying to connect");
            match status.code() {
                Code::Unavailable if refused || message.contains("no leader") => Class::NotSent,
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::Unknown
                | Code::Internal => Class::Lost,
                _ => Class::Final,
            }
        }
        Error::TransportError(_) | Error::IoError(_) | Error::WatchError(_) => Class::Lost,
        _ => Class::Final,
    }
}

/// An etcd error in a few words: gRPC's message and its innermost cause.
fn describe(error: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = error else {
        return error.to_string();
    };
    let mut text = status.message().to_string();
    let mut innermost = None;
    let mut cause = std::error::Error::source(status);
    // A source chain is finite.
    while let Some(error) = cause {
        innermost = Some(error.to_string());
        cause = error.source();
    }
    match innermost {
        Some(innermost) if !text.contains(&innermost) => {
            text.push_str(": ");
            text.push_str(&innermost);
        }
        _ => {}
    }
    text
}

struct Cluster {
    members: Vec<Member>,
    /// The member calls go to first; moved on when it fails.
    preferred: AtomicUsize,
    /// "etcd at host:port,host:port", for messages.
    named: String,
    timeout: Duration,
    /// `PREFIX/objects/`, under which every object's key is.
    objects: String,
    /// `PREFIX/last-write`, rewritten by every write.
    marker: String,
    /// `PREFIX/leader`, the key the control planes' election creates (a fenced write's term).
    leader_key: String,
    /// `PREFIX/`, what `changes_since` watches.
    watched: String,
    /// The newest changes, followed by one live watch.
    cache: cache::Cache,
}

impl Cluster {
    /// Tries `op` on the preferred member, then on the others by the retry rules, until it
    /// answers or the deadline passes.
    async fn call<T, F, Fut>(&self, what: &str, retry: Retry, op: F) -> Result<T, StoreError>
    where
        F: Fn(Member) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(20);
        // What each member last said, for the message if none answers.
        let mut said: Vec<Option<String>> = vec![None; self.members.len()];
        let mut attempt = 0usize;
        // Bounded by the deadline: every attempt runs under it, and so does every pause.
        loop {
            attempt += 1;
            let index = self.preferred.load(Ordering::Relaxed) % self.members.len();
            let member = self.members[index].clone();
            let error = match tokio::time::timeout_at(deadline, op(member)).await {
                Err(_) => {
                    said[index] = Some("no answer".into());
                    let outcome = match retry {
                        Retry::Reads => "",
                        Retry::Writes => ", so it may or may not have happened",
                    };
                    return Err(self.unavailable(
                        what,
                        &format!(
                            "no answer within {:?}{outcome} ({attempt} attempts; {})",
                            self.timeout,
                            self.what_members_said(&said)
                        ),
                    ));
                }
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(Failure::Final(error))) => return Err(error),
                Ok(Err(Failure::Etcd(error))) => error,
            };
            said[index] = Some(describe(&error));
            match classify(&error) {
                Class::Final => {
                    return Err(StoreError::Storage(format!(
                        "{}: {what}: {}",
                        self.named,
                        self.what_members_said(&said)
                    )))
                }
                Class::Lost if retry == Retry::Writes => {
                    return Err(self.unavailable(
                        what,
                        &format!(
                            "the answer was lost, so it may or may not have happened ({})",
                            self.what_members_said(&said)
                        ),
                    ))
                }
                Class::Lost | Class::NotSent => {}
            }
            // Move on to the next member (unless another call already did).
            let next = (index + 1) % self.members.len();
            let _ =
                self.preferred
                    .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
            if attempt.is_multiple_of(self.members.len()) {
                // Every member failed once: wait before the next round.
                if Instant::now() + pause >= deadline {
                    return Err(self.unavailable(
                        what,
                        &format!(
                            "no member answered within {:?} ({attempt} attempts; {})",
                            self.timeout,
                            self.what_members_said(&said)
                        ),
                    ));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }

    /// "127.0.0.1:2379 said: ...; 127.0.0.1:22379 said: ..." for the members tried.
    fn what_members_said(&self, said: &[Option<String>]) -> String {
        let lines: Vec<String> = self
            .members
            .iter()
            .zip(said)
            .filter_map(|(member, said)| {
                said.as_ref()
                    .map(|said| format!("{} said: {said}", member.endpoint))
            })
            .collect();
        lines.join("; ")
    }

    fn unavailable(&self, what: &str, detail: &str) -> StoreError {
        StoreError::Unavailable(format!("{} is unavailable: {what}: {detail}", self.named))
    }
}

/// The writes, each made under the leader fence when one is given.
impl EtcdStore {
    fn create_in(
        &self,
        fence: Option<Fence>,
        key: &ObjectKey,
        object: Value,
    ) -> Result<Versioned, StoreError> {
        let value = encode_object(key, object.clone())?;
        let (stored, marker, key) = (
            self.cluster.object_key(key),
            self.cluster.marker.clone(),
            key.clone(),
        );
        self.run(format!("create {key}"), Retry::Writes, move |mut member| {
            let txn = Fence::guard(
                fence.as_ref(),
                vec![Compare::create_revision(
                    stored.clone(),
                    CompareOp::Equal,
                    0,
                )],
                vec![
                    TxnOp::put(stored.clone(), value.clone(), None),
                    TxnOp::put(marker.clone(), "", None),
                ],
                vec![],
            );
            let (key, object, fence) = (key.clone(), object.clone(), fence.clone());
            async move {
                let answer = member.kv.txn(txn).await?;
                if !answer.succeeded() {
                    Fence::check(fence.as_ref(), &answer)?;
                    return Err(StoreError::AlreadyExists(key).into());
                }
                Ok(stamp(&key, object, written_at(&key, &answer)?)?)
            }
        })
    }

    fn update_in(
        &self,
        fence: Option<Fence>,
        key: &ObjectKey,
        expected_version: u64,
        object: Value,
    ) -> Result<Versioned, StoreError> {
        let value = encode_object(key, object.clone())?;
        let (stored, marker, key) = (
            self.cluster.object_key(key),
            self.cluster.marker.clone(),
            key.clone(),
        );
        self.run(format!("update {key}"), Retry::Writes, move |mut member| {
            let txn = Fence::guard(
                fence.as_ref(),
                vec![
                    Compare::version(stored.clone(), CompareOp::Greater, 0),
                    Compare::mod_revision(
                        stored.clone(),
                        CompareOp::Equal,
                        revision(expected_version),
                    ),
                ],
                vec![
                    TxnOp::put(stored.clone(), value.clone(), None),
                    TxnOp::put(marker.clone(), "", None),
                ],
                vec![TxnOp::get(stored.clone(), None)],
            );
            let (key, object, fence) = (key.clone(), object.clone(), fence.clone());
            async move {
                let answer = member.kv.txn(txn).await?;
                if !answer.succeeded() {
                    Fence::check(fence.as_ref(), &answer)?;
                    return Err(refusal(&key, expected_version, &answer).into());
                }
                Ok(stamp(&key, object, written_at(&key, &answer)?)?)
            }
        })
    }

    fn delete_in(
        &self,
        fence: Option<Fence>,
        key: &ObjectKey,
        expected_version: Option<u64>,
    ) -> Result<Versioned, StoreError> {
        let (stored, marker, key) = (
            self.cluster.object_key(key),
            self.cluster.marker.clone(),
            key.clone(),
        );
        self.run(format!("delete {key}"), Retry::Writes, move |mut member| {
            let mut conditions = vec![Compare::version(stored.clone(), CompareOp::Greater, 0)];
            if let Some(expected) = expected_version {
                conditions.push(Compare::mod_revision(
                    stored.clone(),
                    CompareOp::Equal,
                    revision(expected),
                ));
            }
            let txn = Fence::guard(
                fence.as_ref(),
                conditions,
                vec![
                    TxnOp::delete(stored.clone(), Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::put(marker.clone(), "", None),
                ],
                vec![TxnOp::get(stored.clone(), None)],
            );
            let (key, fence) = (key.clone(), fence.clone());
            async move {
                let answer = member.kv.txn(txn).await?;
                if !answer.succeeded() {
                    Fence::check(fence.as_ref(), &answer)?;
                    return Err(refusal(&key, expected_version.unwrap_or(0), &answer).into());
                }
                let version = written_at(&key, &answer)?;
                let last = answer
                    .op_responses()
                    .into_iter()
                    .find_map(|response| match response {
                        TxnOpResponse::Delete(deleted) => deleted.prev_kvs().first().cloned(),
                        _ => None,
                    });
                let last = last.ok_or_else(|| {
                    StoreError::Storage(format!(
                        "deleting {key}: etcd did not return its last state"
                    ))
                })?;
                Ok(stamp(&key, decode_value(&key, last.value())?, version)?)
            }
        })
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &ObjectKey) -> Result<Option<Versioned>, StoreError> {
        let stored = self.cluster.object_key(key);
        let key = key.clone();
        self.run(format!("get {key}"), Retry::Reads, move |mut member| {
            let (stored, key) = (stored.clone(), key.clone());
            async move {
                let answer = member.kv.get(stored, None).await?;
                Ok(answer
                    .kvs()
                    .first()
                    .map(|found| decode_object(&key, found))
                    .transpose()?)
            }
        })
    }

    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Versioned>, StoreError> {
        let prefix = match namespace {
            Some(namespace) => format!("{}{kind}/{namespace}/", self.cluster.objects),
            None => format!("{}{kind}/", self.cluster.objects),
        };
        let objects = self.cluster.objects.clone();
        self.run(format!("list {kind}"), Retry::Reads, move |mut member| {
            let (prefix, objects) = (prefix.clone(), objects.clone());
            async move {
                let options = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Ascend);
                let answer = member.kv.get(prefix, Some(options)).await?;
                let mut found = Vec::with_capacity(answer.kvs().len());
                for stored in answer.kvs() {
                    let key = parse_key(&objects, stored.key())?;
                    found.push(decode_object(&key, stored)?);
                }
                Ok(found)
            }
        })
    }

    fn create(&self, key: &ObjectKey, object: Value) -> Result<Versioned, StoreError> {
        self.create_in(None, key, object)
    }

    fn update(
        &self,
        key: &ObjectKey,
        expected_version: u64,
        object: Value,
    ) -> Result<Versioned, StoreError> {
        self.update_in(None, key, expected_version, object)
    }

    fn delete(
        &self,
        key: &ObjectKey,
        expected_version: Option<u64>,
    ) -> Result<Versioned, StoreError> {
        self.delete_in(None, key, expected_version)
    }

    fn changes_since(&self, version: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let cluster = self.cluster.clone();
        self.run(
            format!("changes since {version}"),
            Retry::Reads,
            move |member| {
                let cluster = cluster.clone();
                async move { cluster.changes_since(member, version, limit).await }
            },
        )
    }

    fn current_version(&self) -> Result<u64, StoreError> {
        let marker = self.cluster.marker.clone();
        self.run(
            "read the current version".into(),
            Retry::Reads,
            move |mut member| {
                let marker = marker.clone();
                async move { last_write(&mut member.kv, marker).await }
            },
        )
    }

    fn fenced(&self, term: i64) -> Option<Box<dyn Store + '_>> {
        Some(Box::new(Fenced {
            store: self,
            fence: Fence {
                leader_key: self.cluster.leader_key.clone(),
                term,
            },
        }))
    }

    /// Has etcd forget its history before `version` (etcd keeps every revision until someone
    /// compacts: the leading control plane does, `--compaction-interval`). Compaction is
    /// cluster-wide: it covers every prefix on this etcd.
    fn compact(&self, version: u64) -> Result<(), StoreError> {
        self.run(
            format!("compact at {version}"),
            Retry::Writes,
            move |mut member| async move {
                let options = CompactionOptions::new().with_physical();
                match member.kv.compact(revision(version), Some(options)).await {
                    Ok(_) => Ok(()),
                    // Compacted further already (by another cluster sharing this etcd).
                    Err(etcd_client::Error::GRpcStatus(status))
                        if status.code() == tonic::Code::OutOfRange =>
                    {
                        Ok(())
                    }
                    Err(error) => Err(error.into()),
                }
            },
        )
    }

    /// What the watch cache's live etcd watch has seen: every process's writes.
    fn versions(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.cluster.cache.progress())
    }
}

impl Cluster {
    fn object_key(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.objects, key.encoded())
    }

    /// What one watch event is to this store: its revision and the change to an object, or
    /// None for the last-write marker; nothing for keys not its own.
    fn read_event(&self, event: &Event) -> Result<Option<(u64, Option<Change>)>, StoreError> {
        let Some(stored) = event.kv() else {
            return Ok(None);
        };
        let at = stored.mod_revision() as u64;
        if stored.key() == self.marker.as_bytes() {
            return Ok(Some((at, None)));
        }
        if !stored.key().starts_with(self.objects.as_bytes()) {
            return Ok(None);
        }
        let key = parse_key(&self.objects, stored.key())?;
        let change = match event.event_type() {
            EventType::Put => Change {
                kind: if stored.version() == 1 {
                    ChangeKind::Added
                } else {
                    ChangeKind::Modified
                },
                object: decode_object(&key, stored)?,
            },
            EventType::Delete => {
                let last = event.prev_kv().ok_or_else(|| {
                    StoreError::Storage(format!(
                        "the deletion of {key} at {at} came without its last state"
                    ))
                })?;
                Change {
                    kind: ChangeKind::Deleted,
                    object: stamp(&key, decode_value(&key, last.value())?, at)?,
                }
            }
        };
        Ok(Some((at, Some(change))))
    }

    /// The changes after `version` up to this store's last write when the call began: from the
    /// watch cache when it holds them, else replayed from etcd's history.
    async fn changes_since(
        &self,
        mut member: Member,
        version: u64,
        limit: usize,
    ) -> Result<Vec<Change>, Failure> {
        let current = last_write(&mut member.kv, self.marker.clone()).await?;
        if version >= current {
            return Ok(Vec::new());
        }
        if let Some(found) = self.cache.read(version, current, limit).await {
            return Ok(found);
        }
        // Etcd replays from a compacted revision itself but may have dropped deletions made at
        // it, so start at `version` (skipping its events): a compaction at `version` or later
        // then cancels the watch and the caller lists again.
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision(version.max(1)))
            .with_prev_key();
        let mut stream = member
            .watch
            .watch(self.watched.clone(), Some(options))
            .await?;
        let mut found = Vec::new();
        // Each write is one revision, delivered whole in one answer; the marker's event at
        // `current` ends the replay. The deadline bounds the loop.
        loop {
            let Some(answer) = stream.message().await? else {
                return Err(
                    etcd_client::Error::WatchError("etcd ended the watch early".into()).into(),
                );
            };
            if answer.compact_revision() > 0 {
                return Err(StoreError::Expired {
                    requested: version,
                    oldest: answer.compact_revision() as u64 + 1,
                }
                .into());
            }
            if answer.canceled() {
                return Err(etcd_client::Error::WatchError(format!(
                    "etcd cancelled the watch: {}",
                    answer.cancel_reason()
                ))
                .into());
            }
            let mut done = false;
            for event in answer.events() {
                let Some((at, change)) = self.read_event(event)? else {
                    continue;
                };
                if at <= version {
                    continue;
                }
                match change {
                    // The marker: every write of this store up to `current` has been seen.
                    None => done |= at >= current,
                    Some(change) => {
                        found.push(change);
                        done |= found.len() >= limit;
                    }
                }
            }
            if done {
                found.truncate(limit);
                return Ok(found);
            }
        }
    }
}

/// The mod revision of the last-write marker: this store's newest version (0 before any write).
async fn last_write(kv: &mut KvClient, marker: String) -> Result<u64, Failure> {
    let answer = kv.get(marker, None).await?;
    Ok(answer
        .kvs()
        .first()
        .map_or(0, |found| found.mod_revision() as u64))
}

/// Why a conditional write was refused, from the key as its `or_else` read it (the last read:
/// a fenced write reads the leader key first).
fn refusal(key: &ObjectKey, expected: u64, answer: &TxnResponse) -> StoreError {
    let current = answer
        .op_responses()
        .into_iter()
        .rev()
        .find_map(|response| match response {
            TxnOpResponse::Get(read) => Some(read.kvs().first().map(KeyValue::mod_revision)),
            _ => None,
        })
        .flatten();
    match current {
        None => StoreError::NotFound(key.clone()),
        Some(actual) => StoreError::Conflict {
            key: key.clone(),
            expected,
            actual: actual as u64,
        },
    }
}

/// The revision a successful write transaction made.
fn written_at(key: &ObjectKey, answer: &TxnResponse) -> Result<u64, StoreError> {
    answer
        .header()
        .map(|header| header.revision() as u64)
        .ok_or_else(|| StoreError::Storage(format!("writing {key}: etcd's answer has no revision")))
}

/// An etcd revision for a version (versions are revisions, which etcd keeps below 2^63).
fn revision(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// The object as stored: its JSON without the resource version, which is the key's revision.
fn encode_object(key: &ObjectKey, mut object: Value) -> Result<Vec<u8>, StoreError> {
    metadata_mut(key, &mut object)?.remove("resourceVersion");
    serde_json::to_vec(&object).map_err(|e| StoreError::Storage(format!("encode {key}: {e}")))
}

fn decode_value(key: &ObjectKey, bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Storage(format!("decode {key} from etcd: {e}")))
}

fn decode_object(key: &ObjectKey, stored: &KeyValue) -> Result<Versioned, StoreError> {
    stamp(
        key,
        decode_value(key, stored.value())?,
        stored.mod_revision() as u64,
    )
}

/// `PREFIX/objects/<kind>/<namespace>/<name>` back into its key.
fn parse_key(objects: &str, stored: &[u8]) -> Result<ObjectKey, StoreError> {
    let bad = || {
        StoreError::Storage(format!(
            "etcd key {:?} is not {objects}<kind>/<namespace>/<name>",
            String::from_utf8_lossy(stored)
        ))
    };
    let text = std::str::from_utf8(stored).map_err(|_| bad())?;
    let rest = text.strip_prefix(objects).ok_or_else(bad)?;
    let mut parts = rest.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(kind), Some(namespace), Some(name)) if !kind.is_empty() && !name.is_empty() => {
            Ok(ObjectKey::new(kind, namespace, name))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_stored_key_when_parsed_then_kind_namespace_and_name_come_back() {
        let key = parse_key("/t/objects/", b"/t/objects/CStorPool//pool-a").unwrap();
        assert_eq!(key, ObjectKey::new("CStorPool", "", "pool-a"));
        for bad in [
            &b"/t/objects/Kind"[..],
            b"/t/objects/Kind/ns",
            b"/other/Kind/ns/name",
            b"/t/objects/\xff/ns/name",
        ] {
            assert!(parse_key("/t/objects/", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn given_etcd_errors_when_classified_then_only_unsent_ones_are_safe_to_resend() {
        use etcd_client::Error;
        let status = |code, message: &str| Error::GRpcStatus(tonic::Status::new(code, message));
        assert_eq!(
            classify(&status(
                tonic::Code::Unavailable,
                "tcp connect error: Connection refused (os error 111)"
            )),
            Class::NotSent
        );
        assert_eq!(
            classify(&status(tonic::Code::Unavailable, "etcdserver: no leader")),
            Class::NotSent
        );
        assert_eq!(
            classify(&status(
                tonic::Code::Unavailable,
                "etcdserver: request timed out"
            )),
            Class::Lost
        );
        assert_eq!(
            classify(&status(tonic::Code::Cancelled, "Timeout expired")),
            Class::Lost
        );
        assert_eq!(
            classify(&status(
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )),
            Class::Final
        );
    }

    #[test]
    fn given_an_object_when_encoded_then_its_resource_version_is_left_out() {
        let key = ObjectKey::new("K", "ns", "a");
        let bytes = encode_object(
            &key,
            serde_json::json!({"metadata": {"name": "a", "resourceVersion": "7"}}),
        )
        .unwrap();
        assert_eq!(
            decode_value(&key, &bytes).unwrap(),
            serde_json::json!({"metadata": {"name": "a"}})
        );
        assert!(matches!(
            encode_object(&key, serde_json::json!({"kind": "K"})),
            Err(StoreError::Invalid { .. })
        ));
    }
}
