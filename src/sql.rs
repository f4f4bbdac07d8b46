//! SQL text as PostgreSQL reads it: one parse by PostgreSQL's own grammar (libpg_query,
//! through the `pg_query` crate) splits a query string into statements, keeping each one's
//! original text, and hands each parse tree to `guard` for classification.
//!
//! No other SQL parser decides anything: a string PostgreSQL's grammar rejects is one
//! statement of kind `unknown` (the server will reject it whole, and runs none of it), and
//! a string with no statement (empty, or only comments) is one statement of kind `empty`,
//! so every query string the server receives has a record.

use std::ops::Range;

use pg_query::protobuf::RawStmt;
use serde::{Deserialize, Serialize};

/// What a statement does, as the audit reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Ddl,
    Other,
    Unknown,
    /// A query string with no statement in it: empty, or only comments and semicolons.
    Empty,
}

/// One query string, split the way the server's parser splits it.
#[derive(Debug)]
pub enum Parsed {
    /// Each statement's byte range in the original text and its parse tree.
    Statements(Vec<(Range<usize>, RawStmt)>),
    /// Nothing but whitespace, comments and semicolons.
    Empty,
    /// The grammar rejects the string (the server will too, before running any of it).
    Rejected(String),
}

/// Parses `sql` with PostgreSQL's grammar.
pub fn parse(sql: &str) -> Parsed {
    let result = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(result) => result,
        Err(e) => return Parsed::Rejected(e.to_string()),
    };
    let raw = result.protobuf.stmts;
    if raw.is_empty() {
        return Parsed::Empty;
    }
    match statement_ranges(sql, &raw) {
        Some(ranges) => Parsed::Statements(ranges.into_iter().zip(raw).collect()),
        // Cannot happen for UTF-8 text; if it did, nothing would be decided on a guess.
        None => Parsed::Rejected("statement boundaries inside a character".into()),
    }
}

/// The text of each statement. A statement's text runs from just after the previous
/// statement's semicolon to its own end, so comments written before it stay with it;
/// whitespace and stray semicolons around it are dropped. The parser's locations are byte
/// offsets; `None` if one would not fall on a character boundary.
fn statement_ranges(sql: &str, raw: &[RawStmt]) -> Option<Vec<Range<usize>>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut previous_end = 0usize;
    for stmt in raw {
        let start = usize::try_from(stmt.stmt_location).unwrap_or(0);
        let end = match usize::try_from(stmt.stmt_len) {
            // 0 means "to the end of the string".
            Ok(0) | Err(_) => sql.len(),
            Ok(len) => start.saturating_add(len).min(sql.len()),
        };
        let from = previous_end.min(start);
        let range = trim_range(sql, from..end);
        sql.get(range.clone())?;
        out.push(range);
        previous_end = end;
    }
    Some(out)
}

/// `range` without leading whitespace and semicolons and without trailing whitespace.
fn trim_range(sql: &str, range: Range<usize>) -> Range<usize> {
    let bytes = sql.as_bytes();
    let (mut start, mut end) = (range.start, range.end.min(bytes.len()));
    while start < end && (bytes[start].is_ascii_whitespace() || bytes[start] == b';') {
        start += 1;
    }
    while end > start && bytes[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    start..end
}

/// The statements of `sql` as slices of the original text: what the audit records one by
/// one. A rejected string is one piece (the whole string); an empty one is one piece too.
pub fn split_statements(sql: &str) -> Vec<&str> {
    match parse(sql) {
        Parsed::Statements(list) => list
            .into_iter()
            .filter_map(|(range, _)| sql.get(range))
            .collect(),
        Parsed::Empty | Parsed::Rejected(_) => vec![sql],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_split(sql: &str, expected: &[&str]) {
        assert_eq!(split_statements(sql), expected, "splitting {sql:?}");
    }

    #[test]
    fn splits_where_postgresql_splits() {
        check_split("select 1", &["select 1"]);
        check_split("select 1; select 2;", &["select 1", "select 2"]);
        check_split("select ';'; select 2", &["select ';'", "select 2"]);
        check_split("select $$a;b$$; select 2", &["select $$a;b$$", "select 2"]);
        check_split(
            "select $a$;$$;$a$; select 2",
            &["select $a$;$$;$a$", "select 2"],
        );
        check_split("select 'é;'; select 'ü'", &["select 'é;'", "select 'ü'"]);
        check_split(
            "select 1;\n  -- note; here\n select 2",
            &["select 1", "-- note; here\n select 2"],
        );
        // PostgreSQL's C comments nest; a lexer that does not nest them sees `select 2`
        // as code.
        check_split(
            "select 1 /* a /* b */ ; */ ; select 2",
            &["select 1 /* a /* b */ ; */", "select 2"],
        );
        // `*/*` is an operator followed by a comment start, not a comment end.
        check_split(
            "select 2 */* x; */ 3; select 4",
            &["select 2 */* x; */ 3", "select 4"],
        );
        // A SQL-standard function body holds semicolons of its own.
        check_split(
            "create function f() returns int language sql begin atomic select 1; end; select 2",
            &[
                "create function f() returns int language sql begin atomic select 1; end",
                "select 2",
            ],
        );
    }

    #[test]
    fn strings_with_no_statement_are_one_piece() {
        check_split("", &[""]);
        check_split(" ; ;", &[" ; ;"]);
        check_split("/* only; a comment */", &["/* only; a comment */"]);
        assert!(matches!(parse("-- nothing"), Parsed::Empty));
    }

    #[test]
    fn a_rejected_string_is_kept_whole() {
        let sql = "select 1; frobnicate the database; delete from t";
        assert_eq!(split_statements(sql), [sql]);
        assert!(matches!(parse(sql), Parsed::Rejected(_)));
        // An unterminated quote swallows the rest for the server as for us.
        assert!(matches!(
            parse("select 'a; delete from t"),
            Parsed::Rejected(_)
        ));
    }

    #[test]
    fn splitting_is_linear_in_the_input() {
        // 20k statements in one string would take minutes with a per-statement rescan.
        let sql = "select 1;".repeat(20_000);
        assert_eq!(split_statements(&sql).len(), 20_000);
    }
}
