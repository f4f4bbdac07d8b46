//! Redaction of what the audit trail records (never of what runs): a database can ask
//! that statement literals and bind parameters are kept out of the trail, for sensitive
//! columns. Records say what was redacted, so an auditor knows the text is not verbatim.

use serde::{Deserialize, Serialize};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer, Whitespace};

/// What replaces a literal, a comment's text or a parameter value.
pub const MASK: &str = "?";

/// A statement whose text could not be tokenized is not recorded at all: a lexer that
/// cannot find the literals cannot promise to have hidden them.
pub const UNREADABLE: &str = "[redacted: statement text could not be tokenized]";

/// Per-database redaction settings (`[databases.redaction]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redaction {
    /// Record bind parameters as `"?"` (NULL stays null: it carries no value).
    #[serde(default)]
    pub parameters: bool,
    /// Record statements with every literal (string, number, dollar-quoted…) and comment
    /// replaced by `?`.
    #[serde(default)]
    pub literals: bool,
}

impl Redaction {
    pub fn any(&self) -> bool {
        self.parameters || self.literals
    }

    /// The names recorded in a statement record's `redacted` field.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.literals {
            names.push("literals");
        }
        if self.parameters {
            names.push("parameters");
        }
        names
    }
}

/// `sql` with literals and comment texts masked, keeping every other byte as written.
pub fn mask_literals(sql: &str) -> String {
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize_with_location() else {
        return UNREADABLE.to_owned();
    };
    let lines = LineStarts::of(sql);
    let mut out = String::with_capacity(sql.len());
    for token in tokens {
        let (Some(start), Some(end)) = (
            lines.byte_offset(sql, token.span.start),
            lines.byte_offset(sql, token.span.end),
        ) else {
            return UNREADABLE.to_owned();
        };
        let original = sql.get(start..end).unwrap_or_default();
        match &token.token {
            Token::Whitespace(Whitespace::SingleLineComment { .. }) => {
                out.push_str("/*");
                out.push_str(MASK);
                out.push_str("*/");
                if original.ends_with('\n') {
                    out.push('\n');
                }
            }
            Token::Whitespace(Whitespace::MultiLineComment(_)) => {
                out.push_str("/*");
                out.push_str(MASK);
                out.push_str("*/");
            }
            t if is_literal(t) => out.push_str(MASK),
            _ => out.push_str(original),
        }
    }
    out
}

fn is_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// Parameters with every value masked; NULLs stay null.
pub fn mask_parameters(params: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    params
        .into_iter()
        .map(|p| match p {
            serde_json::Value::Null => serde_json::Value::Null,
            _ => serde_json::Value::String(MASK.into()),
        })
        .collect()
}

/// Byte offsets of line starts, to turn the tokenizer's line/column (in characters) into
/// byte offsets of the original text.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn of(sql: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        LineStarts(starts)
    }

    fn byte_offset(&self, sql: &str, at: Location) -> Option<usize> {
        let line_start = *self.0.get(usize::try_from(at.line).ok()?.checked_sub(1)?)?;
        let column = usize::try_from(at.column).ok()?.checked_sub(1)?;
        let rest = sql.get(line_start..)?;
        match rest.char_indices().nth(column) {
            Some((i, _)) => Some(line_start + i),
            None if rest.chars().count() == column => Some(sql.len()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_comments_are_masked_and_the_rest_kept() {
        let sql = "SELECT name, 'sé' AS x -- ssn 123-45\nFROM t WHERE ssn = E'12\\'3' AND n > 42.5 /* 999 */ AND d = $q$x$q$";
        assert_eq!(
            mask_literals(sql),
            "SELECT name, ? AS x /*?*/\nFROM t WHERE ssn = ? AND n > ? /*?*/ AND d = ?"
        );
        assert_eq!(
            mask_literals("SELECT $1, \"col 7\""),
            "SELECT $1, \"col 7\""
        );
    }

    #[test]
    fn unreadable_text_is_not_recorded() {
        assert_eq!(mask_literals("SELECT 'unterminated"), UNREADABLE);
    }

    #[test]
    fn parameters_keep_their_count_and_nulls() {
        let masked = mask_parameters(vec![
            serde_json::json!("123-45-6789"),
            serde_json::Value::Null,
            serde_json::json!({"binary_hex": "00ff"}),
        ]);
        assert_eq!(
            masked,
            vec![
                serde_json::json!("?"),
                serde_json::Value::Null,
                serde_json::json!("?")
            ]
        );
    }
}
