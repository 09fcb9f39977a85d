//! The parts of the `tandem` command that tests and tools reuse: the one way to wait for
//! something with a deadline ([`wait`]).

pub mod wait;
