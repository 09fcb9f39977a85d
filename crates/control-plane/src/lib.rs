//! Tandem's control plane: the API that stores cStor objects (`api`, with Kubernetes discovery in
//! `discovery` so kubectl finds its way), and the controllers that
//! reconcile them (`controllers`: observe, plan, execute), and its Prometheus metrics
//! (`metrics`, `GET /metrics`). It is never on the data path: volumes keep serving I/O while it
//! is down.

pub mod api;
pub mod controllers;
pub mod discovery;
pub mod metrics;

pub use api::{router, Api};
