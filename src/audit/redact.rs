//! Redaction of what the audit trail records (never of what runs): a database can ask
//! that statement literals and bind parameters are kept out of the trail, for sensitive
//! columns. Records say what was redacted, so an auditor knows the text is not verbatim.

use serde::{Deserialize, Serialize};

/// What replaces a literal, a comment's text or a parameter value.
pub const MASK: &str = "?";

/// What the audit records of a statement whose text PostgreSQL's scanner cannot read (such
/// a statement is refused, so this text never stands for something that ran).
pub const UNREADABLE: &str = "[redacted: statement text could not be scanned]";

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

/// PostgreSQL's scanner could not read a statement's text, so its literals cannot be found:
/// the statement is refused rather than recorded with its values in clear.
#[derive(Debug, thiserror::Error)]
#[error("the statement text cannot be scanned for literals: {0}")]
pub struct Unscannable(String);

/// `sql` with literals and comment texts masked, keeping every other byte as written. The
/// literals are found by PostgreSQL's own scanner, so no spelling of a value (`E'…'`,
/// `U&'…'`, `$tag$…$tag$`, `x'…'`) is missed.
pub fn mask_literals(sql: &str) -> Result<String, Unscannable> {
    use pg_query::protobuf::Token;
    if crate::sql::longest_operator_run(sql) > crate::sql::MAX_OPERATOR_RUN {
        return Err(Unscannable(
            "a run of operator characters too long to lex".into(),
        ));
    }
    // `scan` rather than `scan_tokens`: the latter builds a slice from a null pointer when
    // there is no token (undefined behaviour, caught by the fuzz target).
    let tokens = pg_query::scan(sql)
        .map_err(|e| Unscannable(e.to_string()))?
        .tokens;
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0usize;
    for token in tokens {
        let (Ok(start), Ok(end)) = (usize::try_from(token.start), usize::try_from(token.end))
        else {
            return Err(Unscannable("token out of range".into()));
        };
        let (Some(between), Some(original)) = (sql.get(copied..start), sql.get(start..end)) else {
            return Err(Unscannable("token not on a character boundary".into()));
        };
        out.push_str(between);
        copied = end;
        match Token::try_from(token.token) {
            Ok(Token::SqlComment) => {
                out.push_str("/*");
                out.push_str(MASK);
                out.push_str("*/");
            }
            Ok(Token::CComment) => {
                out.push_str("/*");
                out.push_str(MASK);
                out.push_str("*/");
            }
            Ok(
                Token::Sconst
                | Token::Usconst
                | Token::Iconst
                | Token::Fconst
                | Token::Bconst
                | Token::Xconst,
            ) => out.push_str(MASK),
            _ => out.push_str(original),
        }
    }
    out.push_str(sql.get(copied..).unwrap_or_default());
    Ok(out)
}

/// Parameters with every value masked; NULLs stay null.
pub fn mask_parameters(params: &[serde_json::Value]) -> std::sync::Arc<[serde_json::Value]> {
    params
        .iter()
        .map(|p| match p {
            serde_json::Value::Null => serde_json::Value::Null,
            _ => serde_json::Value::String(MASK.into()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_comments_are_masked_and_the_rest_kept() {
        let sql = "SELECT name, 'sé' AS x -- ssn 123-45\nFROM t WHERE ssn = E'12\\'3' AND n > 42.5 /* 999 */ AND d = $q$x$q$";
        assert_eq!(
            mask_literals(sql).expect("scans"),
            "SELECT name, ? AS x /*?*/\nFROM t WHERE ssn = ? AND n > ? /*?*/ AND d = ?"
        );
        assert_eq!(
            mask_literals("SELECT $1, \"col 7\"").expect("scans"),
            "SELECT $1, \"col 7\""
        );
        // Spellings another lexer misreads: a Unicode-escaped string with its own escape
        // character, a nested comment, a bit string, a tagged dollar quote.
        assert_eq!(
            mask_literals(
                "SELECT U&'d!0061t!+000061' UESCAPE '!', b'101', /* a /* b */ c */ $_$x$_$"
            )
            .expect("scans"),
            "SELECT ? UESCAPE ?, ?, /*?*/ ?"
        );
    }

    #[test]
    fn text_without_tokens_is_masked_as_is() {
        // Found by the fuzz target: no token at all must not reach undefined behaviour.
        assert_eq!(mask_literals("").expect("scans"), "");
        assert_eq!(mask_literals("  ").expect("scans"), "  ");
        assert_eq!(mask_literals("-- note").expect("scans"), "/*?*/");
    }

    #[test]
    fn unreadable_text_is_not_recorded() {
        assert!(mask_literals("SELECT 'unterminated").is_err());
    }

    #[test]
    fn parameters_keep_their_count_and_nulls() {
        let masked = mask_parameters(&[
            serde_json::json!("123-45-6789"),
            serde_json::Value::Null,
            serde_json::json!({"binary_hex": "00ff"}),
        ]);
        assert_eq!(
            masked[..],
            [
                serde_json::json!("?"),
                serde_json::Value::Null,
                serde_json::json!("?")
            ]
        );
    }
}
