//! Settings a statement may not change. Two families:
//! - lexer settings (`client_encoding`, `standard_conforming_strings`, `backslash_quote`)
//!   change how the server splits and reads query text; if they changed, the proxy's reading
//!   and the server's would differ and statements could hide from the audit. They are pinned
//!   at login and a change to another value is refused at every level, in every form (SET,
//!   set_config with any literal spelling, a function's or role's SET clause). Setting the
//!   pinned value again (psql's `\encoding UTF8`, pg_dump's `SET client_encoding = 'UTF8'`)
//!   changes nothing and is allowed; RESET returns to the pinned value and is allowed too.
//! - settings that hold the grant in place: the role, and read-only mode.

use serde_json::Value;

use super::tree::{literal, string_node, Call, SetClause};
use super::Class;
use crate::policy::AccessLevel;

/// `VariableSetKind` values of the parse tree.
const SET_VALUE: i64 = 1;
const SET_DEFAULT: i64 = 2;
const SET_CURRENT: i64 = 3;
const SET_MULTI: i64 = 4;
const RESET: i64 = 5;

/// What changing `name` to `value` (`None`: computed, or several values) means.
pub(crate) fn class_of_change(name: &str, value: Option<&str>) -> Class {
    match name {
        "client_encoding" | "names" => match value {
            Some(v) if is_utf8(v) => Class::Session,
            _ => Class::Forbidden("lexer_setting"),
        },
        "standard_conforming_strings" => match value {
            Some(v) if is_on(v) => Class::Session,
            _ => Class::Forbidden("lexer_setting"),
        },
        "backslash_quote" => match value {
            Some(v) if v.eq_ignore_ascii_case("safe_encoding") => Class::Session,
            _ => Class::Forbidden("lexer_setting"),
        },
        "role" | "session_authorization" => Class::Escalation("role_change"),
        "default_transaction_read_only" | "transaction_read_only" => match value {
            Some(v) if is_on(v) => Class::Session,
            _ => Class::ReadOnlyEscape("read_only_setting"),
        },
        _ => Class::Session,
    }
}

/// The class of one SET clause (a SET statement, or a SET inside a function or role).
pub(crate) fn class_of_set(set: &SetClause<'_>) -> Class {
    match set.kind {
        SET_VALUE => {
            let value = match set.args {
                [one] => literal(one),
                _ => None,
            };
            class_of_change(&set.name, value.as_deref())
        }
        // `SET TRANSACTION …` and `SET SESSION CHARACTERISTICS AS TRANSACTION …`.
        SET_MULTI => transaction_modes(set.args),
        // `SET x FROM CURRENT` copies the current value: nothing changes.
        SET_CURRENT => Class::Session,
        // DEFAULT and RESET return to the value fixed at login, which lockbox pins; only the
        // role may not be reset (RESET ROLE after an admin's SET ROLE, say).
        SET_DEFAULT | RESET => match set.name.as_str() {
            "role" | "session_authorization" => Class::Escalation("role_change"),
            // transaction_read_only resets to its boot value (off), not to the session's
            // default_transaction_read_only: a reset inside a transaction leaves read-only.
            "transaction_read_only" => Class::ReadOnlyEscape("read_only_setting"),
            _ => Class::Session,
        },
        // RESET ALL returns every setting to its login value.
        _ => Class::Session,
    }
}

/// `BEGIN`/`START TRANSACTION`/`SET TRANSACTION` modes: `READ WRITE` leaves read-only mode.
pub(crate) fn transaction_modes(options: &[Value]) -> Class {
    let read_write = options.iter().any(|option| {
        let Some(def) = option.pointer("/node/DefElem") else {
            return false;
        };
        def.get("defname").and_then(Value::as_str) == Some("transaction_read_only")
            && def
                .get("arg")
                .and_then(literal)
                .is_none_or(|v| !is_on(&v) && v != "1")
    });
    if read_write {
        Class::ReadOnlyEscape("read_write_transaction")
    } else {
        Class::Session
    }
}

/// `set_config(name, value, is_local)`: the setting it changes, if it can be read from the
/// call, and its class. `pg_dump` sends `set_config(name, …) FROM pg_settings WHERE name =
/// '…'`; `where_name` is that literal when the statement has that shape.
pub(crate) fn class_of_set_config(
    call: &Call<'_>,
    where_name: Option<&str>,
) -> (Option<String>, Class) {
    let arg = |position: usize, name: &str| {
        call.args.get(position).copied().or_else(|| {
            call.named
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, value)| *value)
        })
    };
    let name = match arg(0, "setting_name") {
        Some(node) => literal(node).or_else(|| {
            is_column(node, "name")
                .then(|| where_name.map(str::to_owned))
                .flatten()
        }),
        None => None,
    };
    let Some(name) = name.map(|n| n.to_lowercase()) else {
        // A computed name could be any setting, the lexer's included.
        return (None, Class::Forbidden("lexer_setting"));
    };
    let value = arg(1, "new_value").and_then(literal);
    let class = class_of_change(&name, value.as_deref());
    (Some(name), class)
}

fn is_column(node: &Value, column: &str) -> bool {
    node.pointer("/node/ColumnRef/fields")
        .and_then(Value::as_array)
        .is_some_and(|fields| {
            matches!(fields.as_slice(), [only] if string_node(only).as_deref() == Some(column))
        })
}

fn is_on(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y"
    )
}

fn is_utf8(value: &str) -> bool {
    matches!(encoding_key(value).as_str(), "utf8" | "unicode")
}

/// An encoding name as PostgreSQL compares them: letters and digits only, any case.
fn encoding_key(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Client-only encodings whose multibyte characters can end in a backslash or quote byte
/// make the proxy and the server split a query string differently; they are refused.
pub fn client_encoding_is_safe(name: &str) -> bool {
    !matches!(
        encoding_key(name).as_str(),
        "sjis"
            | "shiftjis"
            | "shiftjis2004"
            | "mskanji"
            | "win932"
            | "windows932"
            | "big5"
            | "win950"
            | "windows950"
            | "gbk"
            | "win936"
            | "windows936"
            | "cp936"
            | "uhc"
            | "win949"
            | "windows949"
            | "gb18030"
            | "johab"
    )
}

/// Whether a setting the server reports (ParameterStatus) keeps the session within its
/// access level: a read session's `default_transaction_read_only` stays on. The backstop
/// behind the checks of every way to change it.
pub fn reported_setting_keeps_access(access: AccessLevel, name: &str, value: &str) -> bool {
    access != AccessLevel::Read
        || name != "default_transaction_read_only"
        || value.eq_ignore_ascii_case("on")
}

/// Whether a setting the server reports (ParameterStatus) keeps the proxy's reading of
/// query text the same as the server's: the backstop behind the parse-tree checks.
pub fn reported_setting_is_safe(name: &str, value: &str) -> bool {
    match name {
        "standard_conforming_strings" => value.eq_ignore_ascii_case("on"),
        "client_encoding" => is_utf8(value),
        _ => true,
    }
}
