//! Fenced writes: a request that carries a leader term ([`TERM_HEADER`], sent by the controllers)
//! writes only while that term still leads. The middleware puts the term in a task-local for the
//! request; [`FencedStore`], the store every handler sees, makes each write of such a request
//! through the backend's fenced view (etcd checks the term in the write's own transaction).

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tandem_client::TERM_HEADER;
use tandem_store::{Change, ObjectKey, Store, StoreError, Versioned};

use crate::error::ApiError;

tokio::task_local! {
    /// The leader term of the request being served, if it carries one.
    static TERM: i64;
}

/// Serves the request with its leader term (if any) in scope for [`FencedStore`].
pub async fn layer(request: Request, next: Next) -> Response {
    let Some(value) = request.headers().get(TERM_HEADER) else {
        return next.run(request).await;
    };
    match value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
    {
        Some(term) => TERM.scope(term, next.run(request)).await,
        None => ApiError::bad_request(format!(
            "the {TERM_HEADER} header must be a leader term (an integer), not {value:?}"
        ))
        .into_response(),
    }
}

/// The API's store: reads go straight through; a write made for a request with a leader term
/// goes through the backend's fenced view.
pub struct FencedStore(pub Arc<dyn Store>);

impl FencedStore {
    fn write<T>(
        &self,
        write: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match TERM
            .try_with(|term| *term)
            .ok()
            .and_then(|term| self.0.fenced(term))
        {
            Some(fenced) => write(fenced.as_ref()),
            None => write(self.0.as_ref()),
        }
    }
}

impl Store for FencedStore {
    fn get(&self, key: &ObjectKey) -> Result<Option<Versioned>, StoreError> {
        self.0.get(key)
    }

    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Versioned>, StoreError> {
        self.0.list(kind, namespace)
    }

    fn create(&self, key: &ObjectKey, object: Value) -> Result<Versioned, StoreError> {
        self.write(|store| store.create(key, object))
    }

    fn update(
        &self,
        key: &ObjectKey,
        expected_version: u64,
        object: Value,
    ) -> Result<Versioned, StoreError> {
        self.write(|store| store.update(key, expected_version, object))
    }

    fn delete(
        &self,
        key: &ObjectKey,
        expected_version: Option<u64>,
    ) -> Result<Versioned, StoreError> {
        self.write(|store| store.delete(key, expected_version))
    }

    fn changes_since(&self, version: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.0.changes_since(version, limit)
    }

    fn current_version(&self) -> Result<u64, StoreError> {
        self.0.current_version()
    }

    fn fenced(&self, term: i64) -> Option<Box<dyn Store + '_>> {
        self.0.fenced(term)
    }

    fn versions(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.0.versions()
    }

    fn compact(&self, version: u64) -> Result<(), StoreError> {
        self.0.compact(version)
    }
}
