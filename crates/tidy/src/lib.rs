//! Tandem's tidy checks live in `tests/tidy.rs`; this crate has no code of its own.
//!
//! The checks are tests (as rust-analyzer's `xtask tidy`), so `cargo test` is all of CI: every
//! `.rs` file starts with a `//!` line, `tandem-core` depends only on an allow-list of crates, no
//! source file is over 1,000 lines outside its tests, and library crates return typed errors,
//! never `Result<_, String>`.
