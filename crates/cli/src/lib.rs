//! The parts of the `tandem` command that tests and tools reuse: the verifying workload
//! ([`workload`]: an application writing a volume over NBD, and the read-back of every block)
//! and the one way to wait for something with a deadline ([`wait`]).

pub mod wait;
pub mod workload;
