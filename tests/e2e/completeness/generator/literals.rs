//! String constants and identifiers in every form PostgreSQL's scanner reads, with
//! contents made to trip a lexer that reads them differently.

use super::{kw, Rng, Toks};

/// Characters and snippets string contents are made of: quotes, backslashes, dollars,
/// comment starts and ends, SQL, line breaks and multibyte text.
const UNITS: &[&str] = &[
    "a",
    "b",
    "Q",
    " ",
    ";",
    "'",
    "\"",
    "\\",
    "$",
    "-",
    "--",
    "/*",
    "*/",
    "\n",
    "\r",
    "\t",
    "é",
    "日本",
    "🦀",
    "👩‍💻",
    "ß",
    "\u{a0}",
    "$$",
    "$a$",
    "; DELETE FROM probe; --",
    "E'",
    "U&",
    "::",
];

fn content(rng: &mut Rng, max: usize) -> String {
    (0..rng.below(max + 1)).map(|_| *rng.pick(UNITS)).collect()
}

/// A string constant in one of PostgreSQL's forms. `sconst`: only the forms the grammar
/// takes where it wants a plain string constant (SET's value), so no `N'…'`.
pub(super) fn text_literal(rng: &mut Rng, sconst: bool) -> Toks {
    let body = content(rng, 8);
    let mut t = Toks::default();
    match rng.below(if sconst { 5 } else { 6 }) {
        0 => {
            t.w(standard(&body));
        }
        1 => {
            let text = escaped(rng, &body);
            t.w(text);
        }
        2 => {
            let escape = *rng.pick(&['\\', '\\', '!', '#', '~', '?', '*', '%']);
            t.w(unicode(rng, &body, escape, '\''));
            if escape != '\\' || rng.percent(20) {
                t.w(kw(rng, "UESCAPE")).w(format!("'{escape}'"));
            }
        }
        3 => {
            let text = dollar(rng, &body);
            t.w(text);
        }
        5 => {
            t.w(format!("N{}", standard(&body)));
        }
        _ => {
            t.w(standard(&body));
        }
    }
    t
}

fn standard(body: &str) -> String {
    format!("'{}'", body.replace('\'', "''"))
}

/// `E'…'`: backslash escapes (`\\`, `\'`, `\n`, `\t`, `\xHH`, `\ooo`, `\uXXXX`,
/// `\UXXXXXXXX`), or the character itself.
fn escaped(rng: &mut Rng, body: &str) -> String {
    let mut out = String::from("E'");
    for c in body.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str(if rng.percent(50) { "\\'" } else { "''" }),
            '\n' if rng.percent(50) => out.push_str("\\n"),
            '\t' if rng.percent(50) => out.push_str("\\t"),
            'a'..='z' | 'A'..='Z' if rng.percent(30) => {
                if rng.percent(50) {
                    out.push_str(&format!("\\x{:02X}", c as u32));
                } else {
                    out.push_str(&format!("\\{:03o}", c as u32));
                }
            }
            c if !c.is_ascii() && rng.percent(50) => {
                if (c as u32) <= 0xFFFF {
                    out.push_str(&format!("\\u{:04X}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08X}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `U&'…'` or `U&"…"` (by `quote`) with `escape` as the escape character.
fn unicode(rng: &mut Rng, body: &str, escape: char, quote: char) -> String {
    let mut out = format!("U&{quote}");
    for c in body.chars() {
        if c == escape {
            out.push(escape);
            out.push(escape);
        } else if c == quote {
            out.push(quote);
            out.push(quote);
        } else if (!c.is_ascii() || c.is_ascii_alphabetic()) && rng.percent(50) {
            if (c as u32) <= 0xFFFF && rng.percent(60) {
                out.push_str(&format!("{escape}{:04X}", c as u32));
            } else {
                out.push_str(&format!("{escape}+{:06X}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    out.push(quote);
    out
}

/// `$tag$…$tag$` with a tag that looks like something else where possible; the body must
/// not hold the closing delimiter, nor end where a `$` would complete it.
fn dollar(rng: &mut Rng, body: &str) -> String {
    const TAGS: &[&str] = &["", "a", "_", "a1", "select", "DELETE", "é", "日本", "Q"];
    let first = rng.below(TAGS.len());
    for k in 0..TAGS.len() {
        let tag = TAGS[(first + k) % TAGS.len()];
        let delimiter = format!("${tag}$");
        if format!("{body}{delimiter}").find(&delimiter) == Some(body.len()) {
            return format!("{delimiter}{body}{delimiter}");
        }
    }
    let body = body.replace('$', "S");
    format!("$zz9${body}$zz9$")
}

/// A column alias: unquoted (with `$`, non-ASCII), quoted, or `U&"…"`.
pub(super) fn identifier(rng: &mut Rng) -> Toks {
    const PLAIN: &[&str] = &[
        "c1", "café", "日本", "🦀", "x$a$", "y$$", "z$_$1", "ñandú", "_under", "MiXeD", "q$",
    ];
    let mut t = Toks::default();
    let mut body = content(rng, 5);
    if body.is_empty() {
        body.push('v');
    }
    match rng.below(6) {
        0..=2 => {
            t.w(*rng.pick(PLAIN));
        }
        3 | 4 => {
            t.w(format!("\"{}\"", body.replace('"', "\"\"")));
        }
        _ => {
            let escape = *rng.pick(&['\\', '!', '#']);
            t.w(unicode(rng, &body, escape, '"'));
            if escape != '\\' {
                t.w(kw(rng, "UESCAPE")).w(format!("'{escape}'"));
            }
        }
    }
    t
}
