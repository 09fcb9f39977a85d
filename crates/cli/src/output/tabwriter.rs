//! Column alignment as Go's `text/tabwriter` does it, which is what kubectl runs its tables and
//! `describe` output through; the `tabwriter` crate is a port of it. Unlike Go, trailing spaces
//! (left when a line's last value is empty) are removed.

use std::io::Write;

use tabwriter::TabWriter;

/// How wide the columns are: Go's `minwidth` and `padding`.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub min_width: usize,
    pub padding: usize,
}

/// `kubectl get` tables (cli-runtime's `GetNewTabWriter`: minwidth 6, padding 3).
pub const TABLE: Layout = Layout {
    min_width: 6,
    padding: 3,
};

/// `kubectl describe` (its `tabbedString`: minwidth 0, padding 2).
pub const DESCRIBE: Layout = Layout {
    min_width: 0,
    padding: 2,
};

/// Aligns `text` (lines separated by '\n', cells ended by '\t').
pub fn align(text: &str, layout: Layout) -> String {
    // Go makes a column max(minwidth, widest cell + padding) wide; the crate makes it
    // max(minwidth, widest cell) + padding.
    let mut writer = TabWriter::new(Vec::with_capacity(text.len() * 2))
        .minwidth(layout.min_width.saturating_sub(layout.padding))
        .padding(layout.padding);
    // Writing to memory cannot fail, and the text is UTF-8 in and out.
    let aligned = writer
        .write_all(text.as_bytes())
        .and_then(|()| writer.flush())
        .ok()
        .and_then(|()| writer.into_inner().ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| text.replace('\t', " "));
    aligned
        .split('\n')
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}
