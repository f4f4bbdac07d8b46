//! What a long statement does, in few bytes: its text without comments, each run of
//! whitespace one space, each long token (a string constant, a quoted identifier) cut to a
//! stand-in. A record keeps a prefix of a statement over `[audit] max_field_bytes`, and
//! padding (a comment, a long literal, whitespace) can push everything the statement does
//! past that prefix; an attack review dropped a table behind 1 MiB of comment, recorded as a
//! prefix of `x` and a hash, and replaced a function behind 70 KB. Read with PostgreSQL's own
//! scanner, as the server reads it; a text it cannot scan has none (its record then holds the
//! prefix, the hash and the parser's names only).

use pg_query::protobuf::Token;

/// Longest text given a skeleton (as long as the guard parses).
const MAX_SCANNED_LEN: usize = 1024 * 1024;

/// Tokens longer than this (in bytes, quotes included) are cut to a stand-in.
const LONG_TOKEN: usize = 64;

/// `sql` with every comment and run of whitespace made one space (padding of tabs, each two
/// bytes in a record, hid the end of an UPDATE from an attack review), and every token
/// longer than [`LONG_TOKEN`] replaced by `'…'` (a constant) or `"…"` (anything else, a
/// quoted identifier) followed by a comment of its length (`/* 70000 bytes */`); `None`
/// where the scanner rejects the text. `every_constant`: where the database has its
/// literals masked in the record, every constant is replaced, numbers too. Never longer
/// than `sql` but for the stand-ins.
pub(crate) fn skeleton(sql: &str, every_constant: bool) -> Option<String> {
    // The scanner's token list is a few dozen bytes per token: past the size the guard
    // parses at all, a text of one-byte tokens would cost the proxy too much memory.
    if sql.len() > MAX_SCANNED_LEN {
        return None;
    }
    let tokens = pg_query::scan_tokens(sql).ok()?;
    let mut out = String::with_capacity(sql.len().min(4096));
    let mut at = 0usize;
    for token in tokens {
        let (start, end) = (
            usize::try_from(token.start).ok()?,
            usize::try_from(token.end).ok()?,
        );
        // Whitespace and comments between tokens: one space.
        if start > at && !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        at = end;
        let kind = Token::try_from(token.token).ok();
        if matches!(kind, Some(Token::SqlComment | Token::CComment)) {
            continue;
        }
        let constant = matches!(
            kind,
            Some(Token::Sconst | Token::Usconst | Token::Bconst | Token::Xconst)
        );
        let number = matches!(kind, Some(Token::Iconst | Token::Fconst));
        if every_constant && (constant || number) {
            // No length either: masked means nothing of the value.
            out.push_str(if number { "…" } else { "'…'" });
        } else if end - start > LONG_TOKEN {
            let quote = if constant { "'…'" } else { "\"…\"" };
            out.push_str(&format!("{quote} /* {} bytes */", end - start));
        } else {
            out.push_str(sql.get(start..end)?);
        }
    }
    Some(out.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_taken_out_and_what_the_statement_does_is_left() {
        let padded = format!("/*{}*/ DROP TABLE victim", "x".repeat(100_000));
        assert_eq!(
            skeleton(&padded, false).as_deref(),
            Some("DROP TABLE victim")
        );
        let literal = format!("SELECT '{}' -- note\n, f(1)", "y".repeat(200));
        assert_eq!(
            skeleton(&literal, false).as_deref(),
            Some("SELECT '…' /* 202 bytes */ , f(1)")
        );
        let tabs = format!(
            "UPDATE t SET a = 0 WHERE id = 5{} OR true",
            "\t".repeat(100_000)
        );
        assert_eq!(
            skeleton(&tabs, false).as_deref(),
            Some("UPDATE t SET a = 0 WHERE id = 5 OR true")
        );
        let identifier = format!("SELECT \"{}\" FROM t", "\t".repeat(1000));
        assert_eq!(
            skeleton(&identifier, false).as_deref(),
            Some("SELECT \"…\" /* 1002 bytes */ FROM t")
        );
        // Short tokens stay as written; a dollar-quoted body is a constant too.
        assert_eq!(
            skeleton("SELECT 'a  b',$$x$$", false).as_deref(),
            Some("SELECT 'a  b',$$x$$")
        );
        let body = format!(
            "CREATE FUNCTION f() RETURNS int AS $b${}$b$ LANGUAGE sql",
            "1".repeat(100)
        );
        assert_eq!(
            skeleton(&body, false).as_deref(),
            Some("CREATE FUNCTION f() RETURNS int AS '…' /* 106 bytes */ LANGUAGE sql")
        );
        assert_eq!(skeleton("SELECT 'unterminated", false), None);
        assert_eq!(skeleton(&"1,".repeat(MAX_SCANNED_LEN), false), None);
        // Masked literals stay masked.
        assert_eq!(
            skeleton("SELECT 'ab', 42, 1.5 FROM t", true).as_deref(),
            Some("SELECT '…', …, … FROM t")
        );
    }
}
