//! The replica host: every replica in a pool, served over TCP to the volumes' targets.
//!
//! * `storage` — a replica's on-disk format: the `meta` file, atomic writes, creation and
//!   removal of a replica directory, allocation measurement, and the geometry a volume gets
//!   ([`storage::geometry_for`], which targets and agents must both use).
//! * `disk` — [`ReplicaDisk`]: the core's disk operations on a replica's real files.
//! * `host` — [`ReplicaHost`]: the listener, one task per replica owning its
//!   [`tandem_core::Replica`], and the routing of frames between connections and replicas.
//! * `connection` — one target connection's reader and writer, and [`LocalHost`]: connections
//!   in memory from the targets of the same process.

mod connection;
mod disk;
mod host;
pub mod storage;

pub use connection::LocalHost;
pub use disk::{
    Allocation, DiskCompletion, DiskOpenError, OpError, ReplicaDisk, ALLOCATION_LEN_MAX,
    READ_LEN_MAX,
};
pub use host::{HostError, HostOptions, ReplicaHost, ReplicaStatus};
