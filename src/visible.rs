//! Text a person reads (in a terminal or a web page) that someone else wrote: a ticket, a
//! reason, an engineer's name, a SQL statement. Control characters would make a terminal
//! obey them; Unicode format characters are invisible (`adm\u{200b}in` reads as `admin`) or
//! reorder what is shown (bidi overrides, "Trojan Source"). Both the CLI and the admin
//! center show such characters as escapes, and a request's own fields may not hold them.

use std::borrow::Cow;

/// `text` with every character [`needs_escape`] names escaped: `\n`, `\r`, `\t`, else
/// `\u{1b}`-style; with `keep_newlines`, line breaks stay as they are.
pub(crate) fn escape(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let kept = |c: char| keep_newlines && c == '\n';
    if !text.chars().any(|c| needs_escape(c) && !kept(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if kept(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `c` must not be shown as it is: a control character (C0, DEL, C1), a format
/// character, a letter that draws nothing, or a line or paragraph separator.
pub(crate) fn needs_escape(c: char) -> bool {
    c.is_control()
        || is_format(c)
        || is_blank_filler(c)
        // Line and paragraph separators break a line in some terminals, not in others.
        || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Letters that draw nothing (Hangul fillers, the combining grapheme joiner, Khmer
/// inherent vowels): Unicode lists them as default-ignorable, and `T-\u{3164}` reads as
/// `T-`.
fn is_blank_filler(c: char) -> bool {
    matches!(
        c,
        '\u{034f}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}' | '\u{3164}' | '\u{ffa0}'
    )
}

/// Variation selectors: they choose how the character before them is drawn (an emoji's
/// colour form), and alone draw nothing. Shown as they are in free text, where they follow
/// emoji; no part of a ticket.
pub(crate) fn is_variation_selector(c: char) -> bool {
    matches!(c, '\u{180b}'..='\u{180f}' | '\u{fe00}'..='\u{fe0f}' | '\u{e0100}'..='\u{e01ef}')
}

/// Unicode's format characters (general category Cf, Unicode 15): invisible, so
/// `adm\u{200b}in` reads as `admin`, and the bidirectional ones reorder what is shown
/// (Trojan Source). Listed by hand: std has no general categories, and the list changes
/// rarely.
pub(crate) fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061c}'
            | '\u{06dd}'
            | '\u{070f}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}
