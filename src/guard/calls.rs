//! The function calls of one statement, classified: what they read, write, set and reach
//! (a `set_config('search_path', …)`, a `lo_get`, a query run from text), so that
//! `classify` can weigh a statement's calls beside its own kind.

use pg_query::protobuf::{self, node::Node as N};

use super::classify::{schemas_in, search_path_text_shadows};
use super::functions::{self, Effect};
use super::settings;
use super::tree::{self, Found};
use super::Class;

/// What the function calls of a statement add up to.
#[derive(Default)]
pub(super) struct Calls {
    pub(super) search_path: Vec<String>,
    pub(super) class: Class,
    pub(super) settings: Vec<String>,
    pub(super) relations: Vec<String>,
    pub(super) opaque: bool,
    /// A conversion to a type given by OID (`domain_in`): opaque, and said so.
    pub(super) converts_by_oid: bool,
    pub(super) reads_tables_by_name: bool,
    /// A query run from text reads a catalog view of every table's values (`pg_stats`).
    pub(super) shows_every_tables_values: bool,
    /// `nextval`/`setval` of a sequence named by an expression.
    pub(super) sequence_unknown: bool,
    /// A `set_config('search_path', …)` may put a schema before pg_catalog.
    pub(super) search_path_shadows: bool,
    /// A built-in that returns stored data without naming a table (`lo_get`): its rows
    /// are customer data whatever relations the statement reads.
    pub(super) reads_data: bool,
    /// `relations` as the server resolves them (see `Facts::written_relations`).
    pub(super) written_relations: Vec<String>,
    /// What a query run from text (`query_to_xml('…')`) may call, uses as fields and
    /// operators: its calls are the statement's own.
    pub(super) maybe_called: Vec<String>,
    pub(super) functions: Vec<String>,
    pub(super) fields: Vec<String>,
    pub(super) operators: Vec<String>,
    /// What a query run from text does beyond the calls' own effects (see
    /// [`Calls::take_in`]).
    pub(super) drop: bool,
    pub(super) truncate: bool,
    pub(super) changes_rows: bool,
    pub(super) delete_without_where: bool,
    pub(super) update_without_where: bool,
    pub(super) schema_wide: bool,
    pub(super) schemas: Vec<String>,
    pub(super) setting_named_by_catalog_row: bool,
}

impl Calls {
    /// Makes what a query run from text does (`query_to_xml('…')`) the statement's own:
    /// every fact of it, since the rules look at each (an attack review put an off-limits
    /// schema on the search path, and read whole schemas, through facts left behind).
    ///
    /// Every field is named here, so a fact added to [`super::Facts`] later cannot be left
    /// out without a compile error (a third review changed a protected sequence through a
    /// `nextval` whose unknown name was left behind).
    fn take_in(&mut self, inner: &super::Facts) {
        let super::Facts {
            drop,
            truncate,
            changes_rows,
            delete_without_where,
            update_without_where,
            relations,
            schema_wide,
            schemas,
            settings,
            opaque,
            reads_tables_by_name,
            shows_every_tables_values,
            sequence_unknown,
            names,
            catalog_only,
            // What the statement's own rows are (EXPLAIN, catalog reads under a row limit)
            // is the outer statement's to say; `catalog_only` above covers the rows.
            plan_only: _,
            catalog_unqualified: _,
            may_shadow_catalog,
            copy_in,
            // Only a LOCK statement locks without reading; a query run from text is none.
            share_lock_only: _,
            setting_named_by_catalog_row,
            search_path,
            maybe_called,
            functions,
            written_relations,
            fields,
            operators,
        } = inner;
        self.relations.extend(relations.iter().cloned());
        self.written_relations
            .extend(written_relations.iter().cloned());
        self.maybe_called.extend(maybe_called.iter().cloned());
        self.functions.extend(functions.iter().cloned());
        self.fields.extend(fields.iter().cloned());
        self.operators.extend(operators.iter().cloned());
        self.settings.extend(settings.iter().cloned());
        self.search_path.extend(search_path.iter().cloned());
        self.schemas.extend(schemas.iter().cloned());
        self.search_path_shadows |= may_shadow_catalog;
        self.reads_tables_by_name |= reads_tables_by_name;
        self.shows_every_tables_values |= shows_every_tables_values;
        self.sequence_unknown |= sequence_unknown;
        self.setting_named_by_catalog_row |= setting_named_by_catalog_row;
        // Its rows are the statement's: customer data unless it reads catalogs only.
        self.reads_data |= !catalog_only;
        self.drop |= drop;
        self.truncate |= truncate;
        self.changes_rows |= changes_rows;
        self.delete_without_where |= delete_without_where;
        self.update_without_where |= update_without_where;
        self.schema_wide |= schema_wide;
        // The server runs only a query from text; anything else it would do is unseen.
        self.opaque |= opaque.is_some() || names.is_some() || *copy_in;
    }
}

pub(super) fn classify_calls(found: &Found<'_>, where_name: Option<&str>) -> Calls {
    let mut out = Calls::default();
    out.opaque |= found
        .operators
        .iter()
        .any(|(schema, symbol)| !functions::is_builtin_operator(schema.as_deref(), symbol));
    // `(x).lo_create` and `t.lo_create` call lo_create(x) when no column has that name: a
    // side-effecting built-in named that way is judged as a call whose arguments are
    // unknown.
    // `(expr).name` that names no built-in may be a call of a function of the database.
    out.opaque |= found
        .indirection_names
        .iter()
        .any(|name| !functions::is_builtin_name(name));
    for name in &found.field_names {
        note_loss(name, &mut out);
        // `('secret_id_seq'::regclass).nextval`: the relation is an expression.
        if names_a_relation_first(name) {
            note_unknown_relation(name, &mut out);
        }
        let class = match functions::effect(name) {
            Effect::None if name == "lo_open" => Class::Write,
            Effect::None => continue,
            // `('select …'::text).ts_stat`, `('hr.seq'::regclass).pg_sequence_last_value`:
            // the argument is an expression, so what runs or is read is unknown, as for a
            // query computed at run time (an attack review ran any SQL through `ts_stat`
            // this way, writes and role changes included).
            Effect::ReadsTablesByName | Effect::RunsQueryText => {
                out.reads_tables_by_name = true;
                out.opaque = true;
                Class::Write
            }
            Effect::ReadsData => {
                out.reads_data = true;
                continue;
            }
            Effect::ConvertsToTypeByOid => {
                out.opaque = true;
                out.converts_by_oid = true;
                continue;
            }
            Effect::Write => Class::Write,
            Effect::Escalation(rule) => Class::Escalation(rule),
            Effect::SetsConfig => Class::Forbidden("lexer_setting"),
            Effect::FetchesPortalByName => functions::FETCHES_PORTAL_BY_NAME,
        };
        out.class = out.class.worst(class);
    }
    for call in &found.calls {
        if let Some(rule) = functions::extension_escalation(&call.name) {
            out.class = out.class.worst(Class::Escalation(rule));
            out.opaque = true;
            continue;
        }
        if !functions::is_builtin(call) {
            out.opaque = true;
            continue;
        }
        if names_a_relation_first(&call.name) {
            note_relation_named_first(call, &mut out);
        }
        note_loss(&call.name, &mut out);
        out.schemas.extend(text_search_object_schema(call));
        let class = match functions::effect(&call.name) {
            Effect::None if call.name == "lo_open" => functions::lo_open_class(call),
            Effect::ReadsData => {
                out.reads_data = true;
                Class::Read
            }
            Effect::None => Class::Read,
            Effect::ConvertsToTypeByOid => {
                out.opaque = true;
                out.converts_by_oid = true;
                Class::Read
            }
            Effect::FetchesPortalByName => functions::FETCHES_PORTAL_BY_NAME,
            Effect::Write => Class::Write,
            Effect::Escalation(rule) => Class::Escalation(rule),
            Effect::SetsConfig => {
                let (name, class) = settings::class_of_set_config(call, where_name);
                if name.as_deref() == Some("search_path") {
                    let value = call.args.get(1).and_then(|v| tree::literal(v));
                    match value {
                        Some(value) => {
                            out.search_path_shadows |= search_path_text_shadows(&value);
                            out.search_path.extend(schemas_in(&value));
                        }
                        None => {
                            out.search_path_shadows = true;
                            out.search_path.push("*".into());
                        }
                    }
                }
                if name.as_deref() == Some("default_text_search_config") {
                    let value = call.args.get(1).and_then(|v| tree::literal(v));
                    out.schemas
                        .extend(value.and_then(|v| super::literals::schema_of_name(&v)));
                }
                if name.is_none() {
                    out.settings.push("*".into());
                }
                out.settings.extend(name);
                // Changing the role or read-only mode through a function keeps the rule
                // name it has always had.
                match class {
                    Class::ReadOnlyEscape(_) => Class::ReadOnlyEscape(functions::ESCAPING),
                    Class::Escalation(_) => Class::Escalation(functions::ESCAPING),
                    other => other,
                }
            }
            // ts_rewrite(query, target, substitute) runs nothing.
            Effect::RunsQueryText if call.name == "ts_rewrite" && call.args.len() != 2 => {
                Class::Read
            }
            Effect::RunsQueryText => {
                // ts_rewrite(query, 'SELECT …') runs its second argument.
                let position = usize::from(call.name == "ts_rewrite");
                let text = call.args.get(position).and_then(|a| tree::literal(a));
                match text.map(|t| super::analyze(&t)) {
                    Some(inner) => {
                        out.take_in(&inner.facts);
                        inner.class.worst(Class::Read)
                    }
                    // SQL computed at run time: nothing can be said about it.
                    None => {
                        out.reads_tables_by_name = true;
                        out.opaque = true;
                        Class::Write
                    }
                }
            }
            Effect::ReadsTablesByName => {
                // A whole schema or database; one relation was noted above.
                out.reads_tables_by_name |= !names_a_relation_first(&call.name);
                Class::Read
            }
        };
        out.class = out.class.worst(class);
    }
    out
}

/// `SELECT set_config(name, …) FROM pg_settings WHERE name = '<setting>'` (pg_dump's form):
/// the literal the statement restricts `name` to, when it has exactly that shape, and
/// whether `pg_settings` is written without its schema.
///
/// The literal says which setting changes only if `pg_settings` is the catalog's view (its
/// `name` is text, compared exactly): an attack review shadowed it with a CTE of a `char(20)`
/// column, whose comparison ignores trailing blanks, and set `search_path` while the literal
/// read `'search_path  '`. So no WITH clause, and the literal must be a setting's name as
/// the server spells one; an unqualified name may still find a temporary relation or one in
/// a schema searched before pg_catalog, which only the session knows of (see
/// `Facts::setting_named_by_catalog_row`).
pub(super) fn pg_settings_where_name(node: &N) -> Option<(String, bool)> {
    let N::SelectStmt(select) = node else {
        return None;
    };
    // Exactly `SELECT … FROM … WHERE …`: a sort, a grouping or a limit evaluates the WHERE
    // for every row before any row's set_config runs, which a relation whose `name` is an
    // expression turned into a different name than the one its WHERE saw (a third review).
    let only_select_from_where = select.with_clause.is_none()
        && select.distinct_clause.is_empty()
        && select.into_clause.is_none()
        && select.group_clause.is_empty()
        && select.having_clause.is_none()
        && select.window_clause.is_empty()
        && select.values_lists.is_empty()
        && select.sort_clause.is_empty()
        && select.limit_offset.is_none()
        && select.limit_count.is_none()
        && select.locking_clause.is_empty()
        && select.larg.is_none()
        && select.rarg.is_none();
    if !only_select_from_where {
        return None;
    }
    let [from] = select.from_clause.as_slice() else {
        return None;
    };
    let Some(N::RangeVar(range)) = from.node.as_ref() else {
        return None;
    };
    let unqualified = range.schemaname.is_empty() && range.catalogname.is_empty();
    let schema_ok = unqualified || range.schemaname == "pg_catalog";
    if !schema_ok || range.relname != "pg_settings" {
        return None;
    }
    let [target] = select.target_list.as_slice() else {
        return None;
    };
    let Some(N::ResTarget(target)) = target.node.as_ref() else {
        return None;
    };
    let Some(N::FuncCall(call)) = target.val.as_deref().and_then(|v| v.node.as_ref()) else {
        return None;
    };
    let called = call.funcname.last().and_then(|n| match n.node.as_ref() {
        Some(N::String(s)) => Some(s.sval.as_str()),
        _ => None,
    });
    if called != Some("set_config") {
        return None;
    }
    let Some(N::AExpr(expr)) = select.where_clause.as_deref().and_then(|w| w.node.as_ref()) else {
        return None;
    };
    let operator = expr.name.iter().filter_map(|n| match n.node.as_ref() {
        Some(N::String(s)) => Some(s.sval.as_str()),
        _ => None,
    });
    if expr.kind != protobuf::AExprKind::AexprOp as i32 || !operator.eq(["="]) {
        return None;
    }
    let column =
        |side: &Option<Box<protobuf::Node>>| match side.as_deref().and_then(|n| n.node.as_ref()) {
            Some(N::ColumnRef(c)) => matches!(
                c.fields.as_slice(),
                [f] if matches!(f.node.as_ref(), Some(N::String(s)) if s.sval == "name")
            ),
            _ => false,
        };
    let constant = |side: &Option<Box<protobuf::Node>>| {
        side.as_deref()
            .and_then(|n| serde_json::to_value(n).ok())
            .and_then(|v| tree::literal(&v))
    };
    let name = if column(&expr.lexpr) {
        constant(&expr.rexpr)
    } else if column(&expr.rexpr) {
        constant(&expr.lexpr)
    } else {
        None
    }?;
    let spelled_as_a_setting = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    spelled_as_a_setting.then_some((name, unqualified))
}

/// Whether a built-in's first argument names the one relation it reads or changes, as a
/// regclass or text (the other calls that read by name read a whole schema or database).
fn names_a_relation_first(function: &str) -> bool {
    function.starts_with("table_to_")
        || matches!(
            function,
            "pg_sequence_last_value"
                | "nextval"
                | "setval"
                | "currtid2"
                // They write the index they name (an attack review summarised an
                // off-limits schema's BRIN index by its name in a string).
                | "brin_summarize_new_values"
                | "brin_summarize_range"
                | "brin_desummarize_range"
                | "gin_clean_pending_list"
                // It runs the hash functions of the partition key of the table it names,
                // which may be the database's (a review ran one by the table's OID).
                | "satisfies_hash_partition"
        )
}

/// The schema of a text search configuration or dictionary a call names in a string as its
/// first argument (`to_tsvector('hr.cfg', …)`, `ts_lexize('hr.dict', …)`); a cast of one
/// (`'hr.cfg'::regconfig`) is seen as a cast.
fn text_search_object_schema(call: &tree::Call<'_>) -> Option<String> {
    let takes_one_first = match call.name.as_str() {
        "ts_lexize" => true,
        "to_tsvector"
        | "to_tsquery"
        | "plainto_tsquery"
        | "phraseto_tsquery"
        | "websearch_to_tsquery"
        | "ts_debug"
        | "ts_headline"
        | "json_to_tsvector"
        | "jsonb_to_tsvector" => call.args.len() >= 2,
        _ => false,
    };
    if !takes_one_first {
        return None;
    }
    super::literals::schema_of_name(&tree::literal(call.args.first()?)?)
}

/// The relation a call names in its first argument, as the statement's own; one it cannot
/// tell (an expression, an OID) is unknown.
fn note_relation_named_first(call: &tree::Call<'_>, out: &mut Calls) {
    let named = call
        .args
        .first()
        .and_then(|a| super::literals::regclass_literal(a))
        .and_then(|name| relation_named(&name));
    match named {
        Some(written) => {
            out.relations.push(written.to_lowercase());
            out.written_relations.push(written);
        }
        None => note_unknown_relation(&call.name, out),
    }
}

/// A call of `function` names a relation lockbox cannot tell: a sequence changed
/// (`nextval`, `setval`: refused under `off_limits`), else a table read by name.
fn note_unknown_relation(function: &str, out: &mut Calls) {
    match function {
        "nextval" | "setval" => out.sequence_unknown = true,
        _ => out.reads_tables_by_name = true,
    }
}

/// The relation a text names, read the way a relation name in SQL is (quotes, case,
/// blanks around the dot): `None` for an OID or anything that is not one plain name.
fn relation_named(text: &str) -> Option<String> {
    let probe = super::analyze(&format!("SELECT FROM {text}"));
    match (&probe.class, &probe.facts.written_relations[..]) {
        (Class::Read, [only]) if probe.facts.opaque.is_none() => Some(only.clone()),
        _ => None,
    }
}

/// A call of a built-in that drops or empties a stored object counts for `deny_drop` or
/// `deny_truncate` as the statement that does so would.
fn note_loss(name: &str, out: &mut Calls) {
    match functions::loss(name) {
        Some(functions::Loss::Drop) => out.drop = true,
        Some(functions::Loss::Truncate) => out.truncate = true,
        None => {}
    }
}
