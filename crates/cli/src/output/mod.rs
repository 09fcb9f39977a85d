//! What the `tandem` verbs print, in kubectl's formats: `get` tables ([`render_table`], with
//! [`no_resources`] for an empty list) and `describe` ([`describe`]); each kind's columns,
//! cells and ages come from `tandem_objects::print`.
//!
//! Everything here is a pure function of objects and a `now` the caller passes in: nothing reads
//! the clock, the network or the terminal, so the output is reproducible and tested against
//! golden files.
//!
//! Code map:
//!
//! * `tabwriter` — Go's `text/tabwriter` column alignment, which both formats go through.
//! * `table` — the columns of each kind and of `-o wide`, `-A`, `--no-headers`.
//! * `describe` — kubectl's generic describer: header, fields in "Title Case", events.
//!
//! Golden files: the tests render the seed's cluster (`fixtures`) and compare the text with
//! `golden/*.txt`. After an intended change of output, run
//! `TANDEM_UPDATE_GOLDEN=1 cargo test -p tandem output` to rewrite them, read the diff, then
//! run the tests again without the variable (the files are compiled in).

mod describe;
mod table;
mod tabwriter;

#[cfg(test)]
mod fixtures;

pub use self::{
    describe::describe,
    table::{no_resources, render_table},
};
