//! Tandem's control plane: the API that stores cStor objects (`api`), and the controllers that
//! reconcile them (`controllers`: observe, plan, execute). It is never on the data path:
//! volumes keep serving I/O while it is down.

pub mod api;
pub mod controllers;

pub use api::{router, Api};
