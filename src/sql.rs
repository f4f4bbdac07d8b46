//! SQL text: split a query string into its statements (keeping each one's original text),
//! and the audit kind of a parsed statement. `guard::analyze` parses each statement once for
//! both its kind and its guardrail class.
//!
//! A statement sqlparser cannot parse is still returned, with kind `unknown`: the audit
//! records everything the client sent, parsable or not.

use serde::{Deserialize, Serialize};
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

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
}

/// The audit kind of one parsed statement.
pub fn kind_of(statement: &Statement) -> StatementKind {
    use Statement as S;
    match statement {
        S::Query { .. } => StatementKind::Select,
        S::Insert { .. } => StatementKind::Insert,
        S::Update { .. } => StatementKind::Update,
        S::Delete { .. } => StatementKind::Delete,
        S::CreateView { .. }
        | S::CreateTable { .. }
        | S::CreateIndex { .. }
        | S::CreateRole { .. }
        | S::CreatePolicy { .. }
        | S::AlterTable { .. }
        | S::AlterSchema { .. }
        | S::AlterIndex { .. }
        | S::AlterView { .. }
        | S::AlterType { .. }
        | S::AlterRole { .. }
        | S::AlterPolicy { .. }
        | S::Drop { .. }
        | S::DropFunction { .. }
        | S::DropDomain { .. }
        | S::DropProcedure { .. }
        | S::DropPolicy { .. }
        | S::DropTrigger { .. }
        | S::DropExtension { .. }
        | S::CreateExtension { .. }
        | S::CreateSchema { .. }
        | S::CreateDatabase { .. }
        | S::CreateFunction { .. }
        | S::CreateTrigger { .. }
        | S::CreateProcedure { .. }
        | S::CreateSequence { .. }
        | S::CreateDomain { .. }
        | S::CreateType { .. }
        | S::Truncate { .. }
        | S::Comment { .. }
        | S::Grant { .. }
        | S::Revoke { .. }
        | S::RenameTable { .. } => StatementKind::Ddl,
        _ => StatementKind::Other,
    }
}

/// The statements of `sql` as slices of the original text.
pub fn split_statements(sql: &str) -> Vec<&str> {
    // Fast path: without a semicolon there is at most one statement.
    if !sql.contains(';') {
        return non_empty(sql).into_iter().collect();
    }
    let dialect = PostgreSqlDialect {};
    let tokens = match Tokenizer::new(&dialect, sql).tokenize_with_location() {
        Ok(tokens) => tokens,
        // Unterminated quote or the like: PostgreSQL will reject the whole string, and
        // the audit records it whole.
        Err(_) => return non_empty(sql).into_iter().collect(),
    };
    let semicolons: Vec<(u64, u64)> = tokens
        .iter()
        .filter(|t| t.token == Token::SemiColon)
        .map(|t| (t.span.start.line, t.span.start.column))
        .collect();
    let mut pieces = Vec::new();
    let mut start = 0;
    for at in byte_offsets(sql, &semicolons) {
        pieces.extend(non_empty(&sql[start..at]));
        start = at + 1;
    }
    pieces.extend(non_empty(&sql[start..]));
    pieces
}

/// Byte offsets of (line, column) locations given in text order, where sqlparser counts
/// both from 1 and columns in characters. One pass over the text, however many targets.
fn byte_offsets(text: &str, targets: &[(u64, u64)]) -> Vec<usize> {
    let mut out = Vec::with_capacity(targets.len());
    let mut targets = targets.iter().peekable();
    let (mut line, mut column) = (1u64, 1u64);
    for (at, c) in text.char_indices() {
        while let Some(&&(l, col)) = targets.peek() {
            if (l, col) == (line, column) {
                out.push(at);
                targets.next();
            } else if (l, col) < (line, column) {
                // A location that is not on a character boundary: skip it.
                targets.next();
            } else {
                break;
            }
        }
        if targets.peek().is_none() {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    out
}

/// `Some(trimmed)` unless the piece holds only whitespace and comments.
fn non_empty(piece: &str) -> Option<&str> {
    let trimmed = piece.trim();
    if trimmed.is_empty() {
        return None;
    }
    let dialect = PostgreSqlDialect {};
    match Tokenizer::new(&dialect, trimmed).tokenize() {
        Ok(tokens) if tokens.iter().all(|t| matches!(t, Token::Whitespace(_))) => None,
        _ => Some(trimmed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_split(sql: &str, expected: &[&str]) {
        assert_eq!(split_statements(sql), expected, "splitting {sql:?}");
    }

    #[test]
    fn splits_on_top_level_semicolons_only() {
        check_split("select 1", &["select 1"]);
        check_split("select 1; select 2;", &["select 1", "select 2"]);
        check_split("select ';'; select 2", &["select ';'", "select 2"]);
        check_split("select $$a;b$$; select 2", &["select $$a;b$$", "select 2"]);
        check_split("select 'é;'; select 'ü'", &["select 'é;'", "select 'ü'"]);
        check_split(
            "select 1;\n  -- note; here\n select 2",
            &["select 1", "-- note; here\n select 2"],
        );
        check_split(" ; ;", &[]);
        check_split("/* only; a comment */", &[]);
        check_split("", &[]);
    }

    #[test]
    fn splitting_is_linear_in_the_input() {
        // 100k statements would take minutes with a per-statement rescan of the line.
        let sql = "a;".repeat(100_000);
        assert_eq!(split_statements(&sql).len(), 100_000);
    }

    #[test]
    fn classifies_statements() {
        let check = |sql: &str, kind: StatementKind| {
            assert_eq!(crate::guard::analyze(sql).kind, kind, "{sql}")
        };
        check("select * from t", StatementKind::Select);
        check(
            "with x as (select 1) select * from x",
            StatementKind::Select,
        );
        check("insert into t values (1)", StatementKind::Insert);
        check("update t set a = 1 where b = 2", StatementKind::Update);
        check("delete from t", StatementKind::Delete);
        check("create table t (a int)", StatementKind::Ddl);
        check("drop table t", StatementKind::Ddl);
        check("alter table t add column b int", StatementKind::Ddl);
        check("begin", StatementKind::Other);
        check("set search_path = public", StatementKind::Other);
        check("this is not sql", StatementKind::Unknown);
    }

    #[test]
    fn unparsable_statements_are_kept() {
        let all = split_statements("select 1; frobnicate the database; delete from t");
        let kinds: Vec<_> = all.iter().map(|s| crate::guard::analyze(s).kind).collect();
        assert_eq!(
            kinds,
            [
                StatementKind::Select,
                StatementKind::Unknown,
                StatementKind::Delete
            ]
        );
        assert_eq!(all[1], "frobnicate the database");
    }
}
