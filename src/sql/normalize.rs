//! A cheap key under which query strings that differ only in numeric literals meet, for the
//! analysis cache (`guard::cache`). PostgreSQL's own fingerprint needs a parse, which is the
//! cost the cache exists to save; this is one pass over the bytes.
//!
//! The key is the text with every numeric literal replaced by a byte that names the token
//! PostgreSQL's scanner makes of it: ICONST (a decimal integer that fits in int4) or FCONST
//! (a larger integer, or `digits.digits`). Everything else stays as written, string literals
//! included. So two texts with one key scan into the same token sequence, differing only in
//! the values of those literals and in byte offsets (the bytes between literals are equal).
//!
//! That holds only where lexing is plain, so the scan is conservative: a text with anything
//! whose reading is subtle has no key at all (the cache then keys it by its exact text).
//! Subtle is: a backslash (escape strings, standard_conforming_strings), a non-ASCII byte or
//! a control character other than space, tab, CR and LF, a double quote (identifiers),
//! `$` other than a positional parameter (dollar quotes, `$` inside identifiers), comments,
//! `U&` (Unicode escapes), and any number that is not plain digits or `digits.digits`
//! followed by something that cannot continue it (`1e5`, `.5`, `0x1F`, `1_000`, `123abc`,
//! `1.`, `1..2`).

use std::ops::Range;

/// The key byte of a literal the scanner reads as ICONST.
const ICONST: char = '\u{1}';
/// The key byte of a literal the scanner reads as FCONST.
const FCONST: char = '\u{2}';

/// A text's key and where its numeric literals are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The text with each numeric literal replaced by [`ICONST`] or [`FCONST`]; neither can
    /// appear in a text that has a key, so the key says where every literal was.
    pub key: String,
    /// In order of position.
    pub literals: Vec<Literal>,
}

/// One numeric literal of a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Literal {
    pub span: Range<usize>,
    /// Where its byte is in the key.
    pub key_at: usize,
    pub number: Number,
}

/// What the scanner makes of a literal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Number {
    /// ICONST with this value.
    Int(i32),
    /// FCONST, whose value is the literal's text.
    Float,
}

/// The key of `sql`, if its lexing is plain and it has at least one numeric literal (without
/// one the exact text is as good a key).
pub(crate) fn shape(sql: &str) -> Option<Shape> {
    let mut shape = Shape::default();
    shape_into(sql, &mut shape).then_some(shape)
}

/// [`shape`] into `shape`, whose buffers are reused (the hot path keeps one per thread):
/// whether `sql` has a shape. When it has none, `shape` holds nothing of use.
pub(crate) fn shape_into(sql: &str, shape: &mut Shape) -> bool {
    shape.key.clear();
    shape.literals.clear();
    fill_shape(sql, &mut shape.key, &mut shape.literals).is_some() && !shape.literals.is_empty()
}

fn fill_shape(sql: &str, key: &mut String, literals: &mut Vec<Literal>) -> Option<()> {
    let bytes = sql.as_bytes();
    if !bytes.iter().copied().all(plain_byte) {
        return None;
    }
    key.reserve(sql.len());
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        let next = bytes.get(at + 1).copied();
        let end = match b {
            b'\'' => string_end(bytes, at)?,
            b'"' => return None,
            b'$' => parameter_end(bytes, at)?,
            b'-' if next == Some(b'-') => return None,
            b'/' if next == Some(b'*') => return None,
            b'.' if next.is_some_and(|n| n.is_ascii_digit()) => return None,
            b'0'..=b'9' => {
                let (end, number) = number_end(bytes, at)?;
                literals.push(Literal {
                    span: at..end,
                    key_at: key.len(),
                    number,
                });
                key.push(match number {
                    Number::Int(_) => ICONST,
                    Number::Float => FCONST,
                });
                at = end;
                continue;
            }
            b if b.is_ascii_alphabetic() || b == b'_' => identifier_end(bytes, at)?,
            _ => at + 1,
        };
        key.push_str(sql.get(at..end)?);
        at = end;
    }
    Some(())
}

/// Printable ASCII but the backslash, and the whitespace every lexer agrees on.
fn plain_byte(b: u8) -> bool {
    matches!(b, b' '..=b'~' | b'\t' | b'\n' | b'\r') && b != b'\\'
}

/// A byte that would continue a number or identifier token (or make one junk).
fn continues_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.')
}

/// The end of the standard string starting at `start` (`''` is a quote inside it); `None`
/// if it is not terminated.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        let quote = at + bytes.get(at..)?.iter().position(|&b| b == b'\'')?;
        if bytes.get(quote + 1) == Some(&b'\'') {
            at = quote + 2;
        } else {
            return Some(quote + 1);
        }
    }
}

/// The end of a positional parameter (`$1`); anything else starting with `$` (a dollar
/// quote) has no key.
fn parameter_end(bytes: &[u8], start: usize) -> Option<usize> {
    let digits = digits_end(bytes, start + 1);
    let ends_cleanly = !bytes.get(digits).copied().is_some_and(continues_token);
    (digits > start + 1 && ends_cleanly).then_some(digits)
}

/// The end of an identifier or keyword; `None` for one holding `$` or a `U&` prefix.
fn identifier_end(bytes: &[u8], start: usize) -> Option<usize> {
    let end = start
        + bytes[start..]
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or(bytes.len() - start);
    let unicode = end == start + 1
        && bytes[start].eq_ignore_ascii_case(&b'u')
        && bytes.get(end) == Some(&b'&');
    (!unicode && bytes.get(end) != Some(&b'$')).then_some(end)
}

fn digits_end(bytes: &[u8], start: usize) -> usize {
    start
        + bytes.get(start..).map_or(0, |rest| {
            rest.iter().take_while(|b| b.is_ascii_digit()).count()
        })
}

/// The end of the number starting at `start` and the token it is; `None` unless it is plain
/// digits or `digits.digits` and nothing after it could continue it.
fn number_end(bytes: &[u8], start: usize) -> Option<(usize, Number)> {
    let integer = digits_end(bytes, start);
    let fraction = match (bytes.get(integer), bytes.get(integer + 1)) {
        (Some(b'.'), Some(d)) if d.is_ascii_digit() => Some(digits_end(bytes, integer + 1)),
        _ => None,
    };
    let end = fraction.unwrap_or(integer);
    if bytes.get(end).copied().is_some_and(continues_token) {
        return None;
    }
    let number = match fraction {
        Some(_) => Number::Float,
        None => int4(bytes.get(start..end)?).map_or(Number::Float, Number::Int),
    };
    Some((end, number))
}

/// The value of a decimal integer if it fits in int4, as the scanner decides between ICONST
/// and FCONST (leading zeros allowed).
fn int4(digits: &[u8]) -> Option<i32> {
    let significant = digits
        .iter()
        .position(|&d| d != b'0')
        .map_or(&[][..], |first| &digits[first..]);
    if significant.len() > 10 {
        return None;
    }
    let value = significant
        .iter()
        .fold(0u64, |value, d| value * 10 + u64::from(d - b'0'));
    i32::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> Option<String> {
        shape(sql).map(|s| s.key.replace(ICONST, "<i>").replace(FCONST, "<f>"))
    }

    #[test]
    fn numbers_are_replaced_by_their_token() {
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = <i>;")
        );
        assert_eq!(
            key("select 1.5, 2147483647, 2147483648, 007, -3").as_deref(),
            Some("select <f>, <i>, <f>, <i>, -<i>")
        );
        assert_eq!(
            key("select a[1:2], 1::int, 1+2, x<>3 from t1").as_deref(),
            Some("select a[<i>:<i>], <i>::int, <i>+<i>, x<><i> from t1")
        );
    }

    #[test]
    fn identifiers_strings_and_parameters_stay_as_written() {
        assert_eq!(
            key("select col2x, t1.c3, 'a 12 '' 3', b'0101', x'1f', e'7' from t9 where a = $1 and b = 4")
                .as_deref(),
            Some("select col2x, t1.c3, 'a 12 '' 3', b'0101', x'1f', e'7' from t9 where a = $1 and b = <i>")
        );
        // Texts without a number have no key: their exact text is the key.
        assert_eq!(key("select 'x', $1 from t1"), None);
    }

    #[test]
    fn subtle_lexing_has_no_key() {
        for sql in [
            "select 1e5",
            "select 1.5e3",
            "select .5",
            "select t.5",
            "select 1.",
            "select 1..2",
            "select 0x1F",
            "select 0o17",
            "select 0b101",
            "select 1_000",
            "select 123abc",
            "select 1$",
            "select $$1$$",
            "select $a$1$a$",
            "select a$b, 1",
            "select $1a, 2",
            "select $1.x, 2",
            "select \"c1\" from t where a = 1",
            "select 1 -- 2",
            "select /* 2 */ 1",
            "select E'\\'', 1",
            "select 'é', 1",
            "select U&'x', 1",
            "select u&\"x\", 1",
            "select 1\x0c",
            "select 1\0",
            "select 'unterminated 1",
        ] {
            assert_eq!(key(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn literals_are_where_the_key_says() {
        let sql = "update t set a = a + -15 where id = 7.25";
        let shape = shape(sql).unwrap();
        let texts: Vec<&str> = shape
            .literals
            .iter()
            .map(|l| &sql[l.span.clone()])
            .collect();
        assert_eq!(texts, ["15", "7.25"]);
        let in_key: Vec<char> = shape
            .literals
            .iter()
            .map(|l| shape.key.as_bytes()[l.key_at] as char)
            .collect();
        assert_eq!(in_key, [ICONST, FCONST]);
        assert_eq!(shape.literals[0].number, Number::Int(15));
        assert_eq!(shape.literals[1].number, Number::Float);
    }
}
