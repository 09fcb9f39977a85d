//! Tandem's replication core: the target and replica state machines, with no I/O, clock or randomness.
//!
//! Both machines are driven the same way: the caller feeds an input (a message, a client request,
//! a disk completion, a tick) and collects the outputs (messages to send, disk operations, client
//! replies, events). Production wraps them in tokio tasks that do real I/O; the simulator wraps
//! them in a seeded, fault-injecting world. Assertions that guard data safety are `assert!`, not
//! `debug_assert!`: they stay on in release builds.

pub mod message;
pub mod types;

pub use message::{Envelope, HelloAck, Message, Refusal, RequestId};
pub use types::{
    Generation, Geometry, Incarnation, IoFailure, RegionSet, ReplicaId, Seq, SessionId, Stamp,
};
