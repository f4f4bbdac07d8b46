//! Per-database statement rules (`[databases.guardrails]`): what a statement's facts may
//! not show on a database, whatever the access level, and the database's own functions
//! that put a statement out of their sight.

use super::{Facts, Guardrails, Refusal};

/// Per-database rules, on top of what the access level allows; they bind every level.
pub fn check_rules(rules: &Guardrails, facts: &Facts) -> Result<(), Refusal> {
    let refuse = |rule: &'static str, what: String| {
        Err(Refusal {
            rule,
            message: format!("lockbox: {what} is not allowed on this database (rule {rule})"),
        })
    };
    if rules.deny_drop && facts.drop {
        // Not only DROP: a type change, a disabled trigger, a loosened policy (see
        // `tree::ALTER_TABLE_DROPS` and the rest), so the message says what the rule is about.
        return refuse(
            "deny_drop",
            "dropping an object, or losing data or a check the data is held to,".into(),
        );
    }
    if rules.deny_truncate && facts.truncate {
        return refuse(
            "deny_truncate",
            "TRUNCATE (or emptying a large object or materialized view)".into(),
        );
    }
    if rules.deny_delete_without_where && facts.delete_without_where {
        return refuse("delete_without_where", "DELETE without WHERE".into());
    }
    if rules.deny_update_without_where && facts.update_without_where {
        return refuse("update_without_where", "UPDATE without WHERE".into());
    }
    // A share lock reads and runs nothing of what it names (pg_dump locks every table).
    let touched: &[String] = match facts.share_lock_only {
        true => &[],
        false => &facts.relations,
    };
    if let Some(relation) = touched.iter().find(|r| {
        rules
            .off_limits
            .iter()
            .any(|pattern| off_limits_match(pattern, r))
    }) {
        return refuse("off_limits", format!("touching {relation}"));
    }
    // A schema off limits as a whole (`schema.*`; `schema.table` patterns match unqualified
    // names by table name already): an unqualified name resolves through the search path,
    // so it may not be put on it, and its privileges, owner and description are not to be
    // changed through lockbox (`GRANT ALL ON SCHEMA hr` undoes the database's own defence).
    let schema_off_limits = |schema: &String| {
        rules.off_limits.iter().any(|pattern| {
            let pattern = pattern.to_lowercase();
            pattern
                .strip_suffix(".*")
                .is_some_and(|off| schema.as_str() == "*" || off == schema.as_str())
        })
    };
    if let Some(schema) = facts.search_path.iter().find(|s| schema_off_limits(s)) {
        return refuse("off_limits", format!("putting {schema} on the search path"));
    }
    if let Some(schema) = facts.schemas.iter().find(|s| schema_off_limits(s)) {
        return refuse("off_limits", format!("touching schema {schema}"));
    }
    if !rules.off_limits.is_empty() && facts.schema_wide {
        return refuse(
            "off_limits",
            "a statement on whole schemas, on everything a role owns, or dropping with CASCADE (it may reach tables that are off limits)".into(),
        );
    }
    if !rules.off_limits.is_empty() && facts.sequence_unknown {
        return refuse(
            "off_limits",
            "changing a sequence named by an expression or cast (name it as a plain literal: nextval('schema.sequence'))".into(),
        );
    }
    if !rules.off_limits.is_empty() && facts.reads_tables_by_name {
        return refuse(
            "off_limits",
            "a function that reads tables named in a string".into(),
        );
    }
    if !rules.off_limits.is_empty() && facts.shows_every_tables_values {
        return refuse(
            "off_limits",
            "a catalog view that shows every table's values (statistics, sequences)".into(),
        );
    }
    if facts.reads_tables_by_name && has_guardrails(rules) {
        // Catalog reach finds what a relation runs (a view's calls, a column type's cast) by
        // the relation's name; one computed at run time (`schema_to_xml`) goes unseen.
        return refuse(
            "opaque_statement",
            "a function that reads tables named in a string (they may run this database's functions)".into(),
        );
    }
    if let Some(what) = facts.opaque.filter(|_| has_guardrails(rules)) {
        // The rules above look at what a statement names; a DO block, a procedure or a
        // user function can do anything out of sight, so with rules in force it may not run.
        return refuse(
            "opaque_statement",
            format!("{what}, whose effect lockbox cannot check against this database's rules,"),
        );
    }
    Ok(())
}

/// pg_dump's `set_config(name, …) FROM pg_settings WHERE name = '<setting>'` changes that
/// setting only while `pg_settings` finds the catalog's view: refused where the session may
/// have shadowed it, `catalog_shadowed` (see `Facts::setting_named_by_catalog_row`).
pub fn check_setting_from_catalog_row(
    facts: &Facts,
    catalog_shadowed: bool,
) -> Result<(), Refusal> {
    if facts.setting_named_by_catalog_row && catalog_shadowed {
        return Err(Refusal {
            rule: "lexer_setting",
            message: "lockbox: set_config(name, …) FROM pg_settings takes the setting's name from whatever pg_settings finds, which this session may have shadowed (a temporary relation, a schema searched before pg_catalog) or, prepared, may yet shadow; name pg_catalog.pg_settings (rule lexer_setting)".into(),
        });
    }
    Ok(())
}

/// With rules in force, a statement that may call one of the database's own functions
/// (`database_functions`: not built in) is refused: what such a function does is out of
/// sight. This catches what the parse tree alone cannot tell: `t.f` calling `f(t)`, and a
/// database's overload of a built-in name (`lower(int)`).
pub fn check_database_functions(
    rules: &Guardrails,
    facts: &Facts,
    database_functions: &std::collections::HashSet<String>,
) -> Result<(), Refusal> {
    if !has_guardrails(rules) {
        return Ok(());
    }
    if let Some((_, why)) = DATABASE_WIDE
        .iter()
        .find(|(entry, _)| database_functions.contains(*entry))
    {
        return Err(Refusal {
            rule: "opaque_statement",
            message: format!("lockbox: this database {why}, so no statement is allowed on it while it has rules (rule opaque_statement)"),
        });
    }
    let message = match database_function_used(facts, database_functions) {
        None => return Ok(()),
        Some(name) => match name.strip_prefix(TYPE_PREFIX) {
            Some(type_name) => format!(
                "lockbox: a use of the type {type_name}, whose casts, checks or operators run a function of this database whose effect lockbox cannot check against its rules, is not allowed on this database (rule opaque_statement)"
            ),
            None => format!(
                "lockbox: a call of {name}, a function of this database whose effect lockbox cannot check against its rules, is not allowed on this database (rule opaque_statement)"
            ),
        },
    };
    Err(Refusal {
        rule: "opaque_statement",
        message,
    })
}

/// The first of the database's own functions (`database_functions`, read at login) the
/// statement may call: by a name (`f(x)`, `c.f`, an overload of a built-in's name) or
/// through an operator the database defines outside an extension, which runs its function
/// whatever symbol it borrows (`public.+(text, text)`; the list holds it as `operator +`).
pub fn database_function_used(
    facts: &Facts,
    database_functions: &std::collections::HashSet<String>,
) -> Option<String> {
    let called = facts
        .maybe_called
        .iter()
        .find(|name| database_functions.contains(name.as_str()))
        .cloned();
    called.or_else(|| {
        // Every statement with a `=` asks this: the key is built on the stack (operator
        // symbols are at most NAMEDATALEN - 1 bytes), not in a new String each time.
        let mut key = [0u8; OPERATOR_KEY_CAPACITY];
        key[..OPERATOR_PREFIX.len()].copy_from_slice(OPERATOR_PREFIX.as_bytes());
        facts
            .operators
            .iter()
            .find(|symbol| {
                let end = OPERATOR_PREFIX.len() + symbol.len();
                match key.get_mut(OPERATOR_PREFIX.len()..end) {
                    Some(room) => {
                        room.copy_from_slice(symbol.as_bytes());
                        std::str::from_utf8(&key[..end])
                            .is_ok_and(|key| database_functions.contains(key))
                    }
                    None => database_functions.contains(&format!("{OPERATOR_PREFIX}{symbol}")),
                }
            })
            .map(|symbol| format!("{OPERATOR_PREFIX}{symbol}"))
    })
}

/// The entry among a database's functions that says it has a cast of its own between
/// built-in types, implicit or not (not a function's name: it has a blank).
pub const IMPLICIT_CAST: &str = "implicit cast";

/// The entry that says a built-in type has an I/O function of the database's own (`ALTER
/// TYPE xid8 SET (SEND = …)`): binary results and parameters run it, naming no type.
pub const BUILT_IN_TYPE_IO: &str = "built-in type io";

/// The entry that says the database changed an object PostgreSQL made (a function, an
/// aggregate, a view, a domain) or made relations of its own among the catalogs.
pub const BUILT_IN_CHANGED: &str = "built-in changed";

/// The entries that refuse every statement under rules, and why: the database's code runs
/// where no statement names it.
const DATABASE_WIDE: [(&str, &str); 3] = [
    (
        IMPLICIT_CAST,
        "has a cast of its own between built-in types, whose function any expression or built-in may run out of lockbox's sight (`host(7)` casts an integer implicitly, `'a' || 5` casts it to text inside a built-in)",
    ),
    (
        BUILT_IN_CHANGED,
        "changed objects PostgreSQL made (a built-in function, aggregate, view or domain) or has relations of its own in pg_catalog or information_schema, whose code may run where no statement names it",
    ),
    (
        BUILT_IN_TYPE_IO,
        "gave a built-in type an input, output, send or receive function of its own, which any result or parameter of that type may run out of lockbox's sight",
    ),
];

/// How the database's own operators are listed among its functions: `operator ===`.
const OPERATOR_PREFIX: &str = "operator ";
const OPERATOR_KEY_CAPACITY: usize = OPERATOR_PREFIX.len() + 64;

/// How types whose casts or checks run a function of the database are listed among its
/// functions (`type posint`): using one runs that function as a call would.
pub(crate) const TYPE_PREFIX: &str = "type ";

/// The entry of `database_functions` a use of the type `name` matches.
pub(crate) fn type_entry(name: &str) -> String {
    format!("{TYPE_PREFIX}{name}")
}

/// The entry of `database_functions` for the same type by OID: a Parse gives its
/// parameters types by OID, naming none in the text.
pub(crate) fn type_oid_entry(oid: impl std::fmt::Display) -> String {
    format!("{TYPE_PREFIX}oid {oid}")
}

/// With rules in force, a Parse that gives a parameter one of the types whose use runs a
/// function of the database (see [`type_entry`]) is refused like a statement naming it.
pub fn check_parameter_types(
    rules: &Guardrails,
    types: &[u32],
    database_functions: &std::collections::HashSet<String>,
) -> Result<(), Refusal> {
    // Drivers give types with every Parse (JDBC does): nothing is looked up without rules.
    if !has_guardrails(rules) || database_functions.is_empty() {
        return Ok(());
    }
    // Built-in types (OIDs below FirstNormalObjectId) are looked up too: a database may
    // give one a cast of its own.
    let flagged = types
        .iter()
        .filter(|oid| **oid != 0)
        .find(|oid| database_functions.contains(&type_oid_entry(oid)));
    match flagged {
        Some(oid) => Err(Refusal {
            rule: "opaque_statement",
            message: format!(
                "lockbox: a parameter of the type with OID {oid}, whose casts, checks or operators run a function of this database whose effect lockbox cannot check against its rules, is not allowed on this database (rule opaque_statement)"
            ),
        }),
        None => Ok(()),
    }
}

/// Whether the database has any statement rule configured.
pub fn has_guardrails(rules: &Guardrails) -> bool {
    rules.deny_drop
        || rules.deny_truncate
        || rules.deny_delete_without_where
        || rules.deny_update_without_where
        || !rules.off_limits.is_empty()
}

/// `table` matches that table in any schema, `schema.table` exactly, `schema.*` every
/// table of the schema.
pub(super) fn off_limits_match(pattern: &str, relation: &str) -> bool {
    let pattern = pattern.to_lowercase();
    match pattern.strip_suffix(".*") {
        Some(schema) => relation
            .strip_prefix(schema)
            .is_some_and(|rest| rest.starts_with('.')),
        // An unqualified name may resolve into that schema (the search path decides), so it
        // matches by table name.
        None if pattern.contains('.') => {
            relation == pattern
                || (!relation.contains('.') && pattern.rsplit('.').next() == Some(relation))
        }
        None => relation == pattern || relation.rsplit('.').next() == Some(pattern.as_str()),
    }
}
