//! Constants in a parse tree, read as the server will use them: a literal through the
//! casts that keep it, the text of a name's `String` node.

use serde_json::Value;

/// The text of a `String` node (`{"node": {"String": {"sval": …}}}`).
pub(crate) fn string_node(node: &Value) -> Option<String> {
    node.pointer("/node/String/sval")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The strings of a list of String nodes (a name's parts: `["hr", "pay"]`), skipping
/// anything else in it; empty where there is no list.
pub(crate) fn string_nodes(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(string_node)
        .collect()
}

/// A literal as PostgreSQL reads it, whatever its spelling (`'x'`, `E'x'`, `U&'x'`,
/// `$$x$$`, a number, a boolean), looking through casts (`'x'::text`). `None` for anything
/// computed.
pub(crate) fn literal(node: &Value) -> Option<String> {
    let inner = node.get("node").unwrap_or(node);
    if let Some(cast) = inner.get("TypeCast") {
        let value = literal(cast.get("arg")?)?;
        return keeps_literal(cast.get("type_name")?, &value).then_some(value);
    }
    // Option values (`EXPLAIN (ANALYZE false)`, transaction modes) are bare value nodes.
    if let Some(bare) = scalar(inner, ["String", "Integer", "Float", "Boolean"]) {
        return Some(bare);
    }
    let constant = inner.get("AConst").or_else(|| {
        // An AConst in a typed field comes untagged.
        inner.get("val").map(|_| inner)
    })?;
    if constant.get("isnull").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    scalar(constant.get("val")?, ["Sval", "Ival", "Fval", "Boolval"])
}

/// Whether a cast to `type_name` leaves the literal `value` as the server will use it. Many
/// casts change it: `varchar(n)`, `char(n)` and `bit(n)` cut it, `name` cuts it at 63 bytes,
/// `::int` rounds `10.7`, an array type parses it. An attack review had the guard read a
/// setting's or a table's name as written while the server read it cut
/// (`set_config('search_path_x'::varchar(11), 'hr', false)`). Only types that keep text as
/// it is, or an integer's digits, are looked through; any other cast makes the value unknown.
fn keeps_literal(type_name: &Value, value: &str) -> bool {
    let Some(names) = plain_type_names(type_name) else {
        return false;
    };
    // Not the `reg*` types: cast back to text they print the object's name, which need not
    // be what was written (`'16407'::regnamespace::text` is a schema's name).
    match names[..] {
        // Text types of pg_catalog's own only: a domain of that name elsewhere can cut the
        // value (`'hrx'::pg_temp.text` over `varchar(2)`), and an unqualified name finds
        // such a domain first where the search path names pg_catalog after its schema.
        ["pg_catalog", "text" | "varchar" | "unknown"] => true,
        // A domain over any type can keep an integer's digits or refuse them, not change
        // them.
        ["int2" | "int4" | "int8" | "oid"] | ["pg_catalog", "int2" | "int4" | "int8" | "oid"] => {
            value.parse::<i64>().is_ok()
        }
        _ => false,
    }
}

/// The text of a regclass argument: a literal, or one cast to `pg_catalog.regclass`, whose
/// input reads a relation's name as SQL does (pg_dump writes `nextval('s'::regclass)`; an
/// unqualified `regclass` may be a domain of the search path that changes the text).
pub(crate) fn regclass_literal(node: &Value) -> Option<String> {
    let inner = node.get("node").unwrap_or(node);
    let Some(cast) = inner.get("TypeCast") else {
        return literal(node);
    };
    let names = plain_type_names(cast.get("type_name")?)?;
    (names == ["pg_catalog", "regclass"])
        .then(|| literal(cast.get("arg")?))
        .flatten()
}

/// A cast's type name as written, when it has no modifiers and no array bounds (which
/// change a value: `varchar(2)`, `text[]`).
fn plain_type_names(type_name: &Value) -> Option<Vec<&str>> {
    let empty = |key: &str| {
        type_name
            .get(key)
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    };
    if !empty("typmods") || !empty("array_bounds") {
        return None;
    }
    Some(
        type_name
            .get("names")
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| {
                        let n = n.get("node").unwrap_or(n);
                        n.get("String").unwrap_or(n).get("sval")?.as_str()
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// The text of a value node, given its tags for a string, an integer, a float and a boolean
/// (bare nodes and an A_Const's `val` name them differently); booleans read `on`/`off`.
/// This is the one place the guard reads a number's value: reading one is noted, so a
/// verdict that may depend on it is cached for its exact text only.
fn scalar(node: &Value, [string, integer, float, boolean]: [&str; 4]) -> Option<String> {
    let field = |tag: &str, key: &str| node.get(tag).and_then(|v| v.get(key));
    if let Some(s) = field(string, "sval").and_then(Value::as_str) {
        return Some(s.to_owned());
    }
    if let Some(i) = field(integer, "ival") {
        super::numbers::note_number_read();
        return Some(i.as_i64().unwrap_or(0).to_string());
    }
    if let Some(f) = field(float, "fval") {
        super::numbers::note_number_read();
        return f.as_str().map(str::to_owned);
    }
    let b = field(boolean, "boolval")?;
    Some(
        if b.as_bool() == Some(true) {
            "on"
        } else {
            "off"
        }
        .to_owned(),
    )
}

/// The schema a qualified name in text names (`'hr.cfg'`, `'"HR".cfg'`), lowercased as the
/// rules compare schemas; `None` for an unqualified name or text that is no name.
pub(crate) fn schema_of_name(text: &str) -> Option<String> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    other => part.push(other),
                }
            },
            '.' => parts.push(std::mem::take(&mut part).trim().to_owned()),
            other => part.extend(other.to_lowercase()),
        }
    }
    parts.push(part.trim().to_owned());
    match parts.len() {
        0 | 1 => None,
        n => parts.get(n - 2).map(|schema| schema.to_lowercase()),
    }
}

/// `'hr.pay'::regclass`, `'hr.cfg'::regconfig`, `'hr.f(int)'::regprocedure`: the schema of
/// the object a cast of a literal to an object identifier type names.
pub(crate) fn object_cast_schema(cast: &Value) -> Option<String> {
    let names = plain_type_names(cast.get("type_name")?)?;
    let object = |name: &str| {
        matches!(
            name,
            "regclass"
                | "regproc"
                | "regprocedure"
                | "regtype"
                | "regoper"
                | "regoperator"
                | "regcollation"
                | "regconfig"
                | "regdictionary"
        )
    };
    let names_object = match names[..] {
        [name] | ["pg_catalog", name] => object(name),
        _ => false,
    };
    names_object
        .then(|| schema_of_name(&literal(cast.get("arg")?)?))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::schema_of_name;

    #[test]
    fn the_schema_of_a_name_in_text_is_read_as_sql_reads_names() {
        assert_eq!(schema_of_name("hr.cfg").as_deref(), Some("hr"));
        assert_eq!(schema_of_name(" HR . cfg ").as_deref(), Some("hr"));
        assert_eq!(schema_of_name("\"Hr\".cfg").as_deref(), Some("hr"));
        assert_eq!(schema_of_name("\"h.r\".cfg").as_deref(), Some("h.r"));
        assert_eq!(schema_of_name("db.hr.cfg").as_deref(), Some("hr"));
        assert_eq!(schema_of_name("english"), None);
        assert_eq!(schema_of_name("\"a.b\""), None);
        assert_eq!(schema_of_name("\"unterminated.x"), None);
    }
}
