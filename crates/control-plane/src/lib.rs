//! Tandem's control plane: the API that stores cStor objects (`api`; reads, selectors and
//! server-side Tables in `read`, `selector` and `table`; patches in `patch`; `Status` errors in
//! `error`; Kubernetes discovery in `discovery` and the OpenAPI documents in `openapi`, so
//! kubectl finds its way), the controllers that reconcile them (`controllers`: observe, plan,
//! execute) while this control plane leads (`leader`: always alone on redb, by election among
//! several on etcd; a deposed leader's writes are refused by `fence`), and its Prometheus
//! metrics (`metrics`, `GET /metrics`). It is never on the data path: volumes keep serving I/O
//! while it is down.

pub mod api;
pub mod auth;
pub mod compaction;
pub mod controllers;
pub mod discovery;
pub mod error;
pub mod fence;
pub mod leader;
pub mod metrics;
mod openapi;
mod patch;
mod read;
mod selector;
mod table;

pub use api::{router, Api};
