//! Tandem's data path: the replication core (`tandem-core`) driven by tokio tasks that turn its
//! outputs into real socket and file I/O and feed the completions back. The core stays pure;
//! everything here is the glue around it.
//!
//! * `replica` — the replica host: one per node, serving every replica in its pool over TCP.
//! * `target` — the volume target: sequences client I/O and fans it out to the replicas.
//! * `security` — [`security::LinkSecurity`]: mutual TLS with the cluster CA on the links
//!   between targets and replica hosts, or plain TCP.

pub mod replica;
pub mod security;
pub mod target;
