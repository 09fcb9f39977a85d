//! Fenced writes on etcd: a leader's term as a condition in the write's own transaction (the
//! leader key still exists and was created at the term's revision, see `election`), and the
//! store view whose every write carries it.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse};
use serde_json::Value;

use super::EtcdStore;
use crate::{Change, ObjectKey, Store, StoreError, Versioned};

/// A leader's term as a write condition: the leader key still exists and was created at the
/// term's revision (see `election`).
#[derive(Clone, Debug)]
pub(super) struct Fence {
    pub(super) leader_key: String,
    pub(super) term: i64,
}

impl Fence {
    /// `when` -> `then`, else `otherwise`; fenced, also the term's condition, and the leader
    /// key read first on refusal so [`Fence::check`] can tell a lost term from other refusals.
    pub(super) fn guard(
        fence: Option<&Fence>,
        mut when: Vec<Compare>,
        then: Vec<TxnOp>,
        mut otherwise: Vec<TxnOp>,
    ) -> Txn {
        if let Some(fence) = fence {
            when.push(Compare::create_revision(
                fence.leader_key.clone(),
                CompareOp::Equal,
                fence.term,
            ));
            otherwise.insert(0, TxnOp::get(fence.leader_key.clone(), None));
        }
        Txn::new().when(when).and_then(then).or_else(otherwise)
    }

    /// On a refused fenced write: [`StoreError::Fenced`] if the term no longer leads. The
    /// leader key's read is then taken out of the answer's reads.
    pub(super) fn check(fence: Option<&Fence>, answer: &TxnResponse) -> Result<(), StoreError> {
        let Some(fence) = fence else {
            return Ok(());
        };
        let leader = answer.op_responses().into_iter().next();
        let holds = matches!(
            leader,
            Some(TxnOpResponse::Get(read))
                if read.kvs().first().is_some_and(|kv| kv.create_revision() == fence.term)
        );
        if holds {
            Ok(())
        } else {
            Err(StoreError::Fenced { term: fence.term })
        }
    }
}

/// An [`EtcdStore`] whose writes hold only while a leader term does.
pub(super) struct Fenced<'a> {
    pub(super) store: &'a EtcdStore,
    pub(super) fence: Fence,
}

impl Store for Fenced<'_> {
    fn get(&self, key: &ObjectKey) -> Result<Option<Versioned>, StoreError> {
        self.store.get(key)
    }

    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Versioned>, StoreError> {
        self.store.list(kind, namespace)
    }

    fn create(&self, key: &ObjectKey, object: Value) -> Result<Versioned, StoreError> {
        self.store.create_in(Some(self.fence.clone()), key, object)
    }

    fn update(
        &self,
        key: &ObjectKey,
        expected_version: u64,
        object: Value,
    ) -> Result<Versioned, StoreError> {
        self.store
            .update_in(Some(self.fence.clone()), key, expected_version, object)
    }

    fn delete(
        &self,
        key: &ObjectKey,
        expected_version: Option<u64>,
    ) -> Result<Versioned, StoreError> {
        self.store
            .delete_in(Some(self.fence.clone()), key, expected_version)
    }

    fn changes_since(&self, version: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.store.changes_since(version, limit)
    }

    fn current_version(&self) -> Result<u64, StoreError> {
        self.store.current_version()
    }

    fn versions(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.store.versions()
    }

    fn compact(&self, version: u64) -> Result<(), StoreError> {
        self.store.compact(version)
    }
}
