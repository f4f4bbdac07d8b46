//! What a long statement does, in few bytes: its text without comments, each long string
//! constant cut to a stand-in. A record keeps a prefix of a statement over
//! `[audit] max_field_bytes`, and padding (a comment, a long literal) can push everything
//! the statement does past that prefix; an attack review dropped a table behind 1 MiB of
//! comment, recorded as a prefix of `x` and a hash, and replaced a function behind 70 KB.
//! Read with PostgreSQL's own scanner, as the server reads it; a text it cannot scan has
//! none (its record then holds the prefix, the hash and the parser's names only).

use pg_query::protobuf::Token;

/// Longest text given a skeleton (as long as the guard parses).
const MAX_SCANNED_LEN: usize = 1024 * 1024;

/// String constants longer than this (in bytes, quotes included) are cut to a stand-in.
const LONG_CONSTANT: usize = 64;

/// `sql` with every comment replaced by a space and every string constant longer than
/// [`LONG_CONSTANT`] by `'…'` followed by a comment of its length (`/* 70000 bytes */`),
/// or `None` where the scanner rejects the text. `every_constant`: where the database has
/// its literals masked in the record, every constant is replaced, numbers too.
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
        let kind = Token::try_from(token.token).ok();
        let comment = matches!(kind, Some(Token::SqlComment | Token::CComment));
        let constant = matches!(
            kind,
            Some(Token::Sconst | Token::Usconst | Token::Bconst | Token::Xconst)
        );
        let number = matches!(kind, Some(Token::Iconst | Token::Fconst));
        let cut =
            constant && (every_constant || end - start > LONG_CONSTANT) || number && every_constant;
        if !(comment || cut) {
            continue;
        }
        out.push_str(sql.get(at..start)?);
        if comment {
            out.push(' ');
        } else if every_constant {
            // No length either: masked means nothing of the value.
            out.push_str(if number { "…" } else { "'…'" });
        } else {
            out.push_str(&format!("'…' /* {} bytes */", end - start));
        }
        at = end;
    }
    out.push_str(sql.get(at..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_taken_out_and_what_the_statement_does_is_left() {
        let padded = format!("/*{}*/ DROP TABLE victim", "x".repeat(100_000));
        assert_eq!(
            skeleton(&padded, false).as_deref(),
            Some("  DROP TABLE victim")
        );
        let literal = format!("SELECT '{}' -- note\n, f(1)", "y".repeat(200));
        assert_eq!(
            skeleton(&literal, false).as_deref(),
            Some("SELECT '…' /* 202 bytes */  \n, f(1)")
        );
        // Short constants and everything else stay as written; a dollar-quoted body is a
        // constant too.
        assert_eq!(
            skeleton("SELECT 'ab', $$x$$", false).as_deref(),
            Some("SELECT 'ab', $$x$$")
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
