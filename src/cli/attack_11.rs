//! attack-11: human output and CSV cells.

use crate::audit::export::columns::csv_field;

/// Excel in most European locales (list separator `;`) splits an unquoted CSV line at
/// `;`: a statement such as `SELECT ';=HYPERLINK("http://evil","x")'` becomes a cell
/// that starts with `=`. A cell holding `;` must be quoted.
#[test]
fn attack_11_csv_cell_with_semicolon_then_formula_is_not_quoted() {
    let cell = csv_field(r#"SELECT 'x;=HYPERLINK(""http://evil/"",""open"")'"#);
    assert!(
        cell.starts_with('"'),
        "a `;` separates cells in semicolon locales: {cell}"
    );
    let cell = csv_field("SELECT 1;=cmd|' /C calc'!A0");
    assert!(cell.starts_with('"'), "unquoted: {cell}");
}

/// Invisible format characters (zero-width space/joiners, word joiner, BOM, soft hyphen,
/// tag characters, line/paragraph separators) pass `clean` as they are: `adm\u{200b}in`
/// reads as `admin`, `read\u{2028}` breaks a line in some terminals.
#[test]
fn attack_11_invisible_characters_are_not_escaped() {
    for text in [
        "adm\u{200b}in",
        "adm\u{200d}in",
        "adm\u{2060}in",
        "\u{feff}admin",
        "adm\u{00ad}in",
        "admin\u{e0041}\u{e0042}",
        "read\u{2028}admin",
        "read\u{2029}admin",
    ] {
        let shown = super::display::clean(text);
        assert_ne!(shown, text, "shown as is: {:?}", text);
    }
}

/// The binary prints an API error's message as the server sent it: an escape sequence in
/// it (a hostile or compromised API, or a message that echoes a value) reaches the
/// terminal unescaped.
#[test]
fn attack_11_error_messages_are_printed_unescaped() {
    let e = crate::client::ClientError::Api {
        status: 400,
        code: "invalid".into(),
        message:
            "unknown database `\u{1b}]8;;http://evil/\u{1b}\\\\sales\u{1b}]8;;\u{1b}\\\\\u{202e}`"
                .into(),
    };
    let printed = super::report(&anyhow::Error::new(e));
    assert!(
        !printed.contains('\u{1b}') && !printed.contains('\u{202e}'),
        "printed raw: {printed:?}"
    );
}
