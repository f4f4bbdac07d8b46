//! The names a statement's nodes give relations and schemas by lists of parts (`DROP TABLE
//! hr.pay`, `ALTER TABLE x SET SCHEMA hr`, `OWNED BY secret.id`): the part of the tree walk
//! that turns them into the relations and schemas the rules and the record see.

use serde_json::Value;

use super::{string_node, string_nodes, Found};

/// The relation a name list of an object of `kind` names (`DROP TABLE hr.pay`, `COMMENT
/// ON COLUMN pay.amount`, `DROP TRIGGER t ON secret`), if it names one: a relation it
/// touches like any other, for the rules and the record.
pub(super) fn listed_relation(kind: i64, object: &Value, found: &mut Found<'_>) {
    use pg_query::protobuf::ObjectType as O;
    let relation_kinds = [
        O::ObjectTable,
        O::ObjectView,
        O::ObjectMatview,
        O::ObjectSequence,
        O::ObjectIndex,
        O::ObjectForeignTable,
        // A type a table's column is of reaches the table (the catalog's links).
        O::ObjectType,
        O::ObjectDomain,
    ];
    // `DROP TRIGGER t ON secret`, `COMMENT ON COLUMN secret.c`: the name's last part is
    // the object, the rest its table.
    let on_table_kinds = [
        O::ObjectTrigger,
        O::ObjectPolicy,
        O::ObjectRule,
        O::ObjectColumn,
        O::ObjectTabconstraint,
    ];
    let is = |kinds: &[O]| kinds.iter().any(|k| *k as i64 == kind);
    if is(&[O::ObjectSchema]) {
        found
            .schemas
            .extend(string_node(object).map(|s| s.to_lowercase()));
        return;
    }
    let on_table = is(&on_table_kinds);
    if !on_table && !is(&relation_kinds) {
        return;
    }
    // A type is named by a TypeName (`COMMENT ON DOMAIN d`, `DROP TYPE t`), the rest by a
    // name list.
    let names = object
        .pointer("/node/List/items")
        .or_else(|| object.pointer("/node/TypeName/names"));
    let mut parts = string_nodes(names);
    if on_table {
        parts.pop();
    }
    push_qualified(&parts, found);
}

/// Keys of name lists that are not qualified names: lists of columns, aliases or tokens.
const UNQUALIFIED_LISTS: &[&str] = &[
    "fields",
    "colnames",
    "col_names",
    "aliascolnames",
    "aliases",
    "attlist",
    "va_cols",
    "keys",
    "including",
    "fk_attrs",
    "pk_attrs",
    "fk_del_set_cols",
    "using_clause",
    "indirection",
    "columns",
    "tokentype",
    // Enum labels, a column privilege's columns, a recursive CTE's SEARCH and CYCLE
    // columns, a subscription's publications.
    "vals",
    "cols",
    "search_col_list",
    "cycle_col_list",
    "publication",
];

/// The schema of every qualified name that is not a column's: `hr.f()` called, created,
/// dropped, owned or granted, `hr.d` as a type, `OPERATOR(hr.===)`, `hr.s` as statistics
/// or a conversion. A schema off limits as a whole covers every object in it, not only its
/// relations (an attack review dropped, re-owned and made `SECURITY DEFINER` functions of
/// one). A column reference (`hr.name`) is left out: its first part is most often an
/// alias. Every part but the last counts (`db.hr.f`, `hr.t.column`), which at worst
/// refuses an object named like a protected schema.
pub(super) fn note_qualifiers(key: &str, items: &[Value], found: &mut Found<'_>) {
    if items.len() < 2 || UNQUALIFIED_LISTS.contains(&key) {
        return;
    }
    let parts: Vec<String> = items.iter().map_while(string_node).collect();
    if parts.len() != items.len() {
        return;
    }
    if let Some((_, qualifiers)) = parts.split_last() {
        found
            .schemas
            .extend(qualifiers.iter().map(|s| s.to_lowercase()));
    }
}

pub(super) fn note_schema(name: Option<&Value>, found: &mut Found<'_>) {
    if let Some(schema) = name.and_then(Value::as_str).filter(|s| !s.is_empty()) {
        found.schemas.push(schema.to_lowercase());
    }
}

/// `ALTER TABLE x SET SCHEMA hr` (and views, sequences…): the relation as it will be named.
pub(super) fn moved_relation(node: &Value, found: &mut Found<'_>) {
    let schema = node.get("newschema").and_then(Value::as_str);
    let name = node.pointer("/relation/relname").and_then(Value::as_str);
    if let (Some(schema), Some(name)) = (schema, name) {
        push_listed(schema, name, found);
    }
}

/// `ALTER TABLE f RENAME TO secret` (any relation, `ALTER TABLE` renames a foreign table
/// too): the relation as it will be named, which a foreign table's server reads when no
/// option names its remote table (an attack review read a protected table so).
pub(super) fn renamed_relation(node: &Value, found: &mut Found<'_>) {
    use pg_query::protobuf::ObjectType as O;
    let kind = node.get("rename_type").and_then(Value::as_i64);
    let relation_kinds = [
        O::ObjectTable,
        O::ObjectView,
        O::ObjectMatview,
        O::ObjectForeignTable,
        O::ObjectSequence,
        O::ObjectIndex,
    ];
    if !relation_kinds.iter().any(|k| Some(*k as i64) == kind) {
        return;
    }
    let schema = node
        .pointer("/relation/schemaname")
        .and_then(Value::as_str)
        .unwrap_or("");
    if let Some(name) = node.get("newname").and_then(Value::as_str) {
        push_listed(schema, name, found);
    }
}

/// `ALTER TYPE mood SET SCHEMA hr`: the type by its name now and as it will be named.
pub(super) fn moved_type(node: &Value, found: &mut Found<'_>) {
    let Some(kind) = node.get("object_type").and_then(Value::as_i64) else {
        return;
    };
    let Some(object) = node.get("object") else {
        return;
    };
    let before = found.listed_relations.len();
    listed_relation(kind, object, found);
    let listed = found.listed_relations.get(before).cloned();
    let schema = node.get("newschema").and_then(Value::as_str);
    if let (Some(listed), Some(schema)) = (listed, schema) {
        let name = listed.rsplit('.').next().unwrap_or(&listed).to_owned();
        push_listed(schema, &name, found);
    }
}

/// `ALTER SEQUENCE s OWNED BY secret.id`: the table a sequence is to belong to, whose
/// name is only in an option (then the sequence goes with the table, and its values count
/// the table's rows).
pub(super) fn sequence_owner(node: &Value, found: &mut Found<'_>) {
    let owner = node
        .get("options")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|option| option.pointer("/node/DefElem"))
        .filter(|option| option.get("defname").and_then(Value::as_str) == Some("owned_by"))
        .find_map(|option| {
            option
                .pointer("/arg/node/List/items")
                .filter(|items| items.is_array())
        });
    let mut parts = string_nodes(owner);
    // `[schema.]table.column`; `OWNED BY NONE` is one part.
    if parts.len() >= 2 {
        parts.pop();
        push_qualified(&parts, found);
    }
}

/// The type an `ALTER DOMAIN`/`ALTER TYPE` changes, as a name the rules and the catalog's
/// links see.
pub(super) fn altered_type(node: &Value, found: &mut Found<'_>) {
    let parts = string_nodes(node.get("type_name"));
    push_qualified(&parts, found);
}

/// A name written as parts (`[catalog.][schema.]name`), if any.
fn push_qualified(parts: &[String], found: &mut Found<'_>) {
    match parts {
        [] => {}
        [name] => push_listed("", name, found),
        [.., schema, name] => push_listed(schema, name, found),
    }
}

pub(super) fn push_listed(schema: &str, name: &str, found: &mut Found<'_>) {
    let written = if schema.is_empty() {
        name.to_owned()
    } else {
        format!("{schema}.{name}")
    };
    found.temporary_relations |= schema.starts_with("pg_temp");
    found.listed_relations.push(written.to_lowercase());
    found.written_relations.push(written);
}
