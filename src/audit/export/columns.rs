//! The flat columns of CSV and Parquet exports, shared with `audit list --format csv`, and
//! RFC 4180 quoting (plus the reader `verify-export` uses to take a CSV part back apart).

use serde_json::Value;

/// Columns of a CSV or Parquet part, in order. `record` is the original line, byte for
/// byte, so the hash chain can be recomputed from any format.
pub const COLUMNS: &[&str] = &[
    "seq",
    "time",
    "type",
    "event",
    "request_id",
    "session_id",
    "engineer",
    "database",
    "kind",
    "statement",
    "status",
    "sqlstate",
    "rows",
    "reason",
    "record",
];

/// The flat columns without `record`, then the record's `node` (what `audit list --format
/// csv` and the admin center's download print: the fleet's trail mixes nodes, and `seq`
/// counts within one node's trail).
pub const LIST_COLUMNS: &[&str] = &[
    "seq",
    "time",
    "type",
    "event",
    "request_id",
    "session_id",
    "engineer",
    "database",
    "kind",
    "statement",
    "status",
    "sqlstate",
    "rows",
    "reason",
    "node",
];

/// Index of the `record` column.
pub const RECORD_COLUMN: usize = COLUMNS.len() - 1;

/// A field of `record` as text: strings as they are, numbers and the rest as JSON; `None`
/// when absent or null.
pub fn cell(record: &Value, column: &str) -> Option<String> {
    match record.get(column) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// Characters that make a spreadsheet read a cell as a formula when it starts with one.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Characters that make a cell quoted: RFC 4180's, and the separators other readers use.
const QUOTE_IF_HELD: [char; 6] = [',', '"', '\n', '\r', ';', '\t'];

/// A CSV cell as written: neutralised against formula injection, then quoted (RFC 4180).
/// Statement text is whatever an engineer typed (`-- …`, `=cmd|…`), and auditors open
/// these files in spreadsheets, so a cell that would start a formula gets a leading `'`
/// (OWASP's advice): the spreadsheet shows it as text. The `record` column is JSON and
/// starts with `{`, so the exact line (what `verify-export` reads back) is never changed.
///
/// Beyond RFC 4180's comma, a cell holding `;` or a tab is quoted too: spreadsheets in
/// locales whose list separator is `;` (most of Europe), and tab-separated imports, split
/// an unquoted line there, and the piece after it (`SELECT 1;=cmd|…`) would start a
/// formula the check above never saw.
pub fn csv_field(value: &str) -> String {
    let neutralised;
    let value = if value.starts_with(FORMULA_STARTS) {
        neutralised = format!("'{value}");
        neutralised.as_str()
    } else {
        value
    };
    if value.contains(QUOTE_IF_HELD) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// The header line, CRLF-terminated as RFC 4180 asks.
pub fn csv_header() -> String {
    format!("{}\r\n", COLUMNS.join(","))
}

/// One CSV row for the record `value` whose original line is `line`.
pub fn csv_row(value: &Value, line: &str) -> String {
    let mut fields: Vec<String> = COLUMNS[..RECORD_COLUMN]
        .iter()
        .map(|c| csv_field(&cell(value, c).unwrap_or_default()))
        .collect();
    fields.push(csv_field(line));
    format!("{}\r\n", fields.join(","))
}

/// Splits RFC 4180 text into rows of fields. Quoted fields may hold commas, doubled quotes
/// and line breaks; rows end with CRLF or LF.
pub fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut line = 1usize;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                if !matches!(chars.peek(), None | Some(',' | '\r' | '\n')) {
                    return Err(format!("line {line}: text after a closing quote"));
                }
            }
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                line += 1;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(format!("line {line}: a quoted field is not closed"));
    }
    if !field.is_empty() || !row.is_empty() {
        return Err(format!(
            "line {line}: the last row does not end with a line break"
        ));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_columns_are_the_export_columns_without_the_record_and_with_the_node() {
        assert_eq!(
            LIST_COLUMNS[..LIST_COLUMNS.len() - 1],
            COLUMNS[..RECORD_COLUMN]
        );
        assert_eq!(LIST_COLUMNS.last(), Some(&"node"));
    }

    #[test]
    fn rows_with_quotes_commas_and_line_breaks_read_back_as_written() {
        let value = serde_json::json!({
            "seq": 7, "type": "statement", "statement": "SELECT 'a,b', \"x\"\nFROM t", "rows": 3
        });
        let line = r#"{"seq":7,"statement":"SELECT 'a,b', \"x\"\nFROM t"}"#;
        let text = csv_header() + &csv_row(&value, line);
        let rows = parse_csv(&text).expect("parse");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], COLUMNS);
        assert_eq!(rows[1][0], "7");
        assert_eq!(rows[1][9], "SELECT 'a,b', \"x\"\nFROM t");
        assert_eq!(rows[1][12], "3");
        assert_eq!(rows[1][RECORD_COLUMN], line);
    }

    #[test]
    fn cells_that_would_start_a_formula_are_neutralised() {
        let check = |value: &str, expected: &str| assert_eq!(csv_field(value), expected);
        check("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0");
        check("+1", "'+1");
        check("-- drop", "'-- drop");
        check("@SUM(A1)", "'@SUM(A1)");
        check("\tx", "\"'\tx\"");
        check("\rx", "\"'\rx\"");
        check("=1,2", "\"'=1,2\"");
        check("SELECT 1", "SELECT 1");
        check("a=b", "a=b");
        check("", "");
    }

    #[test]
    fn a_neutralised_row_reads_back_with_its_record_intact() {
        let value =
            serde_json::json!({"seq": 3, "type": "statement", "statement": "=HYPERLINK(1)"});
        let line = r#"{"seq":3,"statement":"=HYPERLINK(1)"}"#;
        let rows = parse_csv(&(csv_header() + &csv_row(&value, line))).expect("parse");
        assert_eq!(rows[1][9], "'=HYPERLINK(1)");
        assert_eq!(rows[1][0], "3");
        assert_eq!(rows[1][RECORD_COLUMN], line);
    }

    #[test]
    fn cells_holding_another_locales_separator_are_quoted() {
        let check = |value: &str, expected: &str| assert_eq!(csv_field(value), expected);
        check(
            "SELECT 1;=cmd|' /C calc'!A0",
            "\"SELECT 1;=cmd|' /C calc'!A0\"",
        );
        check("a\t=1", "\"a\t=1\"");
        let value = serde_json::json!({"seq": 4, "statement": "SELECT 1;=1+1"});
        let line = r#"{"seq":4,"statement":"SELECT 1;=1+1"}"#;
        let rows = parse_csv(&(csv_header() + &csv_row(&value, line))).expect("parse");
        assert_eq!(rows[1][9], "SELECT 1;=1+1");
        assert_eq!(rows[1][RECORD_COLUMN], line);
    }

    #[test]
    fn broken_csv_is_named_not_guessed() {
        assert!(parse_csv("a,\"b\n").is_err());
        assert!(parse_csv("a,b").is_err());
        assert!(parse_csv("\"a\"x,b\n").is_err());
    }
}
