//! Human output of the CLI: tables that fit 100 columns (`--wide` shows every column at
//! full width), and user-supplied text with its control characters escaped.
//!
//! Escaping is unconditional in human output, not only when stdout is a terminal: text
//! redirected to a file or piped into `less -R` reaches a terminal later all the same, and
//! a requester's escape sequences must never make an approver read something else (`read`
//! over `admin`, a line that was never written). `--json` stays exact (JSON escapes control
//! characters itself).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

/// Widest line a table prints without `--wide`.
pub(crate) const MAX_WIDTH: usize = 100;

/// `--wide`, set once from the command line before anything is printed. A process-wide
/// switch so that every table (some printed far from the parsed arguments) honours it.
static WIDE: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_wide(wide: bool) {
    WIDE.store(wide, Ordering::Relaxed);
}

fn limit() -> Option<usize> {
    (!WIDE.load(Ordering::Relaxed)).then_some(MAX_WIDTH)
}

pub(crate) fn wide() -> bool {
    WIDE.load(Ordering::Relaxed)
}

/// `text` with every control character (C0, DEL, C1), every Unicode format character
/// (bidi overrides, zero-width spaces and joiners, BOM, soft hyphen, tag characters) and the
/// line and paragraph separators escaped: `\n`, `\r`, `\t`, else `\u{1b}`-style. Printable
/// text is left as it is.
pub(crate) fn clean(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// [`clean`], keeping line breaks: for text that is ours to lay out on several lines (an
/// error chain, whose parse errors show the offending line under a caret), where a `\n`
/// printed as two characters would hide what it says. A carriage return is still escaped:
/// it would let what follows overwrite the line.
pub(crate) fn clean_keeping_lines(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

use crate::visible::{escape, needs_escape};

/// A JSON text with every character [`clean`] escapes written as a `\uXXXX` escape:
/// the same JSON value (a parser reads back the exact text), but nothing in it a terminal
/// obeys or hides. serde_json escapes C0 controls only; DEL, C1 (`\u{9b}` is CSI to many
/// terminals), bidi overrides and invisible characters it writes as they are. Outside
/// strings JSON holds ASCII punctuation and whitespace only, and inside strings serde_json
/// escapes every C0 control, so a line break or tab is pretty-printing's (kept as is) and
/// every other such character is inside a string.
pub(crate) fn json_text(json: &str) -> Cow<'_, str> {
    let escaped = |c: char| needs_escape(c) && !matches!(c, '\n' | '\r' | '\t');
    if !json.chars().any(escaped) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    let mut units = [0u16; 2];
    for c in json.chars() {
        if escaped(c) {
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Prints `value` as pretty JSON (`--json`), escaped by [`json_text`]: what a requester
/// wrote reaches a terminal as escapes, and a parser still reads the exact text.
pub(crate) fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<()> {
    outln!("{}", json_text(&serde_json::to_string_pretty(value)?));
    Ok(())
}

/// A table column: its header, whether its cells may be cut short (with `…`) to fit,
/// and the narrowest it may get.
pub(crate) struct Column {
    pub header: &'static str,
    pub flexible: bool,
    pub min: usize,
}

impl Column {
    /// A column that keeps its width (ids, times, states: cutting them loses meaning).
    pub(crate) const fn fixed(header: &'static str) -> Column {
        Column {
            header,
            flexible: false,
            min: 0,
        }
    }

    /// A column whose cells are cut short when the table is too wide, never below its
    /// header.
    pub(crate) const fn flexible(header: &'static str) -> Column {
        Column {
            header,
            flexible: true,
            min: header.len(),
        }
    }
}

/// Prints a table (see [`layout`]) at the width `--wide` asks for.
pub(crate) fn print_table(columns: &[Column], rows: &[Vec<String>]) {
    for line in layout(columns, rows, limit()) {
        outln!("{line}");
    }
}

/// The lines of a table: left-aligned columns two spaces apart, each as wide as its
/// widest cell; within `limit`, the widest flexible columns are narrowed first, their
/// cells cut short with `…`. Cells are escaped (see [`clean`]).
pub(crate) fn layout(
    columns: &[Column],
    rows: &[Vec<String>],
    limit: Option<usize>,
) -> Vec<String> {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, col)| {
            cells
                .iter()
                .filter_map(|r| r.get(i).map(|c| c.chars().count()))
                .chain([col.header.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    if let Some(limit) = limit {
        narrow(columns, &mut widths, limit);
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{:<w$}", cut(c, *w)))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(columns.iter().map(|c| c.header).collect())];
    out.extend(
        cells
            .iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out
}

/// Takes a character at a time off the widest flexible column until the table fits.
fn narrow(columns: &[Column], widths: &mut [usize], limit: usize) {
    let gaps = 2 * widths.len().saturating_sub(1);
    let mut total: usize = widths.iter().sum::<usize>() + gaps;
    while total > limit {
        let widest = columns
            .iter()
            .zip(widths.iter())
            .enumerate()
            .filter(|(_, (col, w))| col.flexible && **w > col.min.max(2))
            .max_by_key(|(_, (_, w))| **w)
            .map(|(i, _)| i);
        let Some(i) = widest else {
            return; // as narrow as it gets
        };
        widths[i] -= 1;
        total -= 1;
    }
}

/// `text` in at most `width` characters: cut short with `…` when longer.
fn cut(text: &str, width: usize) -> Cow<'_, str> {
    if text.chars().count() <= width {
        return Cow::Borrowed(text);
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        for (raw, shown) in [
            ("plain text, ünïcode", "plain text, ünïcode"),
            ("\x1b[2K\rread", "\\u{1b}[2K\\rread"),
            ("two\nlines\ttab", "two\\nlines\\ttab"),
            (
                "bell\x07 del\x7f c1\u{9b}",
                "bell\\u{7} del\\u{7f} c1\\u{9b}",
            ),
            ("\u{202e}nimda", "\\u{202e}nimda"),
            ("adm\u{200b}in", "adm\\u{200b}in"),
            ("\u{feff}admin\u{e0041}", "\\u{feff}admin\\u{e0041}"),
            ("read\u{2028}admin", "read\\u{2028}admin"),
            ("so\u{ad}ft", "so\\u{ad}ft"),
        ] {
            assert_eq!(clean(raw), shown, "{raw:?}");
        }
    }

    #[test]
    fn json_keeps_its_value_and_loses_its_escapes() {
        let value =
            serde_json::json!({"s": "\u{1b}[2K del\u{7f} csi\u{9b} \u{202e}x\u{e0041} ü\n"});
        let text = serde_json::to_string(&value).expect("json");
        let shown = json_text(&text);
        assert!(
            !shown.chars().any(needs_escape),
            "{shown:?} still holds a character a terminal obeys"
        );
        assert!(
            shown.contains("\\u202e") && shown.contains("\\udb40\\udc41"),
            "{shown}"
        );
        assert!(
            shown.contains('ü'),
            "printable text stays as it is: {shown}"
        );
        let back: serde_json::Value = serde_json::from_str(&shown).expect("still JSON");
        assert_eq!(back, value);
    }

    #[test]
    fn pretty_json_keeps_its_layout_and_loses_its_escapes() {
        let value = serde_json::json!({"reason": "\u{1b}[2K\u{9b}1A \u{202e}x", "n": [1, 2]});
        let pretty = serde_json::to_string_pretty(&value).expect("json");
        let shown = json_text(&pretty);
        assert_eq!(
            shown.lines().count(),
            pretty.lines().count(),
            "pretty-printing's line breaks stay: {shown}"
        );
        assert!(
            !shown.contains(['\u{1b}', '\u{9b}', '\u{202e}']),
            "{shown:?} still holds a character a terminal obeys"
        );
        let back: serde_json::Value = serde_json::from_str(&shown).expect("still JSON");
        assert_eq!(back, value);
    }

    #[test]
    fn line_breaks_can_be_kept_and_nothing_else() {
        for (raw, shown) in [
            ("a\nb", "a\nb"),
            ("a\r\nb\x1b[2K", "a\\r\nb\\u{1b}[2K"),
            ("tab\there\u{202e}", "tab\\there\\u{202e}"),
        ] {
            assert_eq!(clean_keeping_lines(raw), shown, "{raw:?}");
        }
    }

    fn table(limit: Option<usize>) -> Vec<String> {
        let columns = [
            Column::fixed("ID"),
            Column::flexible("NOTE"),
            Column::fixed("STATE"),
        ];
        let rows = vec![
            vec!["req-1".into(), "x".repeat(200), "active".into()],
            vec![
                "req-2".into(),
                "short\x1b[31m".into(),
                "pending_customer".into(),
            ],
        ];
        layout(&columns, &rows, limit)
    }

    #[test]
    fn tables_fit_the_limit_by_cutting_flexible_cells() {
        let lines = table(Some(60));
        assert!(lines.iter().all(|l| l.chars().count() <= 60), "{lines:#?}");
        assert!(lines[1].contains("x…  active"), "{}", lines[1]);
        assert!(lines[2].contains("short\\u{1b}[31m"), "{}", lines[2]);
        assert!(
            lines[2].ends_with("pending_customer"),
            "fixed cells stay whole"
        );
        let wide = table(None);
        assert!(wide[1].contains(&"x".repeat(200)), "--wide cuts nothing");
    }

    #[test]
    fn a_table_too_wide_to_fit_stops_at_its_narrowest() {
        let lines = table(Some(10));
        assert_eq!(lines[0], "ID     NOTE  STATE");
        assert!(lines[1].starts_with("req-1  xxx…  active"), "{}", lines[1]);
    }
}
