//! Column alignment as Go's `text/tabwriter` does it (padding with spaces, no flags), which is
//! what kubectl runs its tables and `describe` output through.
//!
//! The input is text whose cells end with a tab. A column block is a run of consecutive lines
//! that all have a tab-terminated cell in that column; each cell of a block is padded to the
//! widest cell of the block plus `padding`, and to at least `min_width`. The text after a line's
//! last tab is not a cell of any column and is never padded, and a line without a tab ends every
//! block it interrupts. Widths count characters. Unlike Go, trailing spaces (left when a line's
//! last value is empty) are removed.

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
    let lines: Vec<Vec<&str>> = text
        .split('\n')
        .map(|line| line.split('\t').collect())
        .collect();
    let mut writer = Writer {
        lines: &lines,
        layout,
        widths: Vec::new(),
        output: String::with_capacity(text.len() * 2),
    };
    writer.format(0, lines.len());
    writer.output
}

struct Writer<'a> {
    /// Each line's cells; the last one is the unterminated text after the last tab.
    lines: &'a [Vec<&'a str>],
    layout: Layout,
    /// The widths of the columns of the block being written, leftmost first.
    widths: Vec<usize>,
    output: String,
}

impl Writer<'_> {
    /// Whether `line` has a tab-terminated cell in `column`.
    fn has_cell(&self, line: usize, column: usize) -> bool {
        column + 1 < self.lines[line].len()
    }

    /// Go's `Writer.format`: finds the blocks of the next column within `line0..line1`, sizes
    /// each, and recurses into it; lines outside any block are written with the widths known.
    fn format(&mut self, mut line0: usize, line1: usize) {
        let column = self.widths.len();
        let mut line = line0;
        while line < line1 {
            if !self.has_cell(line, column) {
                line += 1;
                continue;
            }
            self.write_lines(line0, line);
            line0 = line;
            let mut width = self.layout.min_width;
            while line < line1 && self.has_cell(line, column) {
                let cell_width = self.lines[line][column].chars().count();
                width = width.max(cell_width + self.layout.padding);
                line += 1;
            }
            self.widths.push(width);
            self.format(line0, line);
            self.widths.pop();
            line0 = line;
        }
        self.write_lines(line0, line1);
    }

    fn write_lines(&mut self, line0: usize, line1: usize) {
        for index in line0..line1 {
            let start = self.output.len();
            for (column, cell) in self.lines[index].iter().enumerate() {
                self.output.push_str(cell);
                if let Some(width) = self.widths.get(column) {
                    let padding = width.saturating_sub(cell.chars().count());
                    self.output.extend(std::iter::repeat_n(' ', padding));
                }
            }
            let trimmed = self.output[start..].trim_end_matches(' ').len();
            self.output.truncate(start + trimmed);
            if index + 1 < self.lines.len() {
                self.output.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_each_column_to_its_widest_cell() {
        let text = "NAME\tSTATUS\tAGE\nlonger-name\tBound\t5m\n";
        assert_eq!(
            align(text, TABLE),
            "NAME          STATUS   AGE\nlonger-name   Bound    5m\n"
        );
    }

    #[test]
    fn narrow_columns_get_the_minimum_width() {
        assert_eq!(
            align("RF\tCF\tX\n2\t2\ty\n", TABLE),
            "RF    CF    X\n2     2     y\n"
        );
    }

    #[test]
    fn a_line_without_tabs_ends_the_block() {
        let text = "Name:\tpvc-1\nAnnotations:\t<none>\nSpec:\n  Size:\t5Gi\n  Replica Count:\t2\n";
        assert_eq!(
            align(text, DESCRIBE),
            "Name:         pvc-1\nAnnotations:  <none>\nSpec:\n  Size:           5Gi\n  Replica Count:  2\n"
        );
    }

    #[test]
    fn empty_leading_cells_align_continuation_lines() {
        let text = "Labels:\ta=1\n\tb=2\nKind:\tX\n";
        assert_eq!(
            align(text, DESCRIBE),
            "Labels:  a=1\n         b=2\nKind:    X\n"
        );
    }

    #[test]
    fn nested_blocks_and_no_trailing_spaces() {
        let text = "a\tb\tc\naaa\t\t\nx\n";
        assert_eq!(align(text, DESCRIBE), "a    b  c\naaa\nx\n");
        assert_eq!(align("", TABLE), "");
        assert_eq!(align("no tabs", TABLE), "no tabs");
    }

    #[test]
    fn widths_count_characters() {
        assert_eq!(align("é\tx\nab\ty\n", DESCRIBE), "é   x\nab  y\n");
    }
}
