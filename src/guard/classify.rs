//! One statement's parse tree → its audit kind, its class and its facts.
//!
//! Under a read grant a statement is allowed only when its tree is a read; so anything not
//! placed here explicitly is DDL at best, and the statement types that reach outside the
//! grant (roles, the server's configuration, extensions, other servers) are escalations.

use pg_query::protobuf::{self, node::Node as N};
use serde_json::Value;

use super::calls::{classify_calls, pg_settings_where_name, Calls};
use super::settings;
use super::tree::{self, Found};
use super::{Analysis, Class, Facts, NameChange};
use crate::sql::StatementKind;

/// `CURSOR_OPT_HOLD` of DeclareCursorStmt's options.
const CURSOR_OPT_HOLD: i32 = 0x0020;
/// `AccessShareLock`, the lock any SELECT takes (LockStmt's mode).
const ACCESS_SHARE_LOCK: i32 = 1;

/// Analyses one parsed statement.
pub(crate) fn analyze_stmt(stmt: Option<&protobuf::Node>) -> Analysis {
    let Some(node) = stmt.and_then(|n| n.node.as_ref()) else {
        return Analysis::rejected();
    };
    let Ok(serialized) = serde_json::to_value(node) else {
        return Analysis::rejected();
    };
    let found = tree::walk(&serialized);
    // pg_dump's form has exactly one call, set_config, as its only output column.
    let where_name = pg_settings_where_name(node).filter(|_| found.calls.len() == 1);
    let calls = classify_calls(&found, where_name.as_ref().map(|(name, _)| name.as_str()));
    let sets = found
        .sets
        .iter()
        .map(settings::class_of_set)
        .fold(Class::Session, Class::worst);
    let (kind, own, names) = statement(node, &found);
    let mut class = own.worst(calls.class).worst(sets);
    if found.writes_pg_settings {
        // pg_settings' rules call set_config with whatever name the row has.
        class = class.worst(Class::Forbidden("lexer_setting"));
    }
    let mut changed: Vec<String> = found.sets.iter().map(|s| s.name.clone()).collect();
    changed.extend(calls.settings.iter().cloned());
    let mut opaque = match node {
        N::DoStmt(_) => Some("a DO block"),
        N::CallStmt(_) => Some("CALL of a procedure"),
        // Code whose body is a string runs later, out of sight: through an operator, a
        // trigger, a rule, a cast, an aggregate, a type's I/O.
        N::CreateFunctionStmt(f) if f.sql_body.is_none() => {
            Some("a function whose body lockbox cannot read")
        }
        N::DefineStmt(_)
        | N::CreateTrigStmt(_)
        | N::RuleStmt(_)
        | N::CreateCastStmt(_)
        | N::CreateRangeStmt(_) => Some("installing code that runs later"),
        N::RenameStmt(r) if renames_routine(r) => Some("renaming a function"),
        // An index, exclusion or partition key naming its operator class runs that class's
        // support functions, which may be the database's own (a fifth review ran one in
        // `CREATE INDEX … (id public.harm_ops)`); only the type's default class is known.
        _ if found.operator_class_named => {
            Some("an operator class named, whose functions may be the database's")
        }
        _ if calls.converts_by_oid => Some(
            "a conversion to a type given by OID (its input and a domain's checks may call the database's functions)",
        ),
        _ => calls
            .opaque
            .then_some("a call of a function that is not built in"),
    };
    // `CREATE SCHEMA s CREATE VIEW … CREATE TRIGGER …`: each element is a statement of its
    // own, judged as one (a fourth review made a view over pg_settings and a trigger so,
    // which the checks of a CREATE VIEW and a CREATE TRIGGER did not see nested).
    if let N::CreateSchemaStmt(schema) = node {
        for element in &schema.schema_elts {
            let inner = analyze_stmt(Some(element));
            class = class.worst(inner.class);
            opaque = opaque.or(inner.facts.opaque);
        }
    }
    let relations: Vec<String> = found
        .relations
        .iter()
        .cloned()
        .chain(calls.relations.iter().cloned())
        .collect();
    // A view over pg_settings is written through its rule, which calls set_config with
    // whatever name the row has (a third review updated such a view, made in the session,
    // to put an off-limits schema on the search path). Views the database has already are
    // reached through the catalog's links (`CatalogReach`).
    if matches!(node, N::ViewStmt(_) | N::RuleStmt(_))
        && relations
            .iter()
            .any(|r| r.rsplit('.').next() == Some("pg_settings"))
    {
        class = class.worst(Class::Forbidden("lexer_setting"));
    }
    let reads_statistics =
        calls.shows_every_tables_values || relations.iter().any(|r| shows_every_tables_values(r));
    let calls_reads_by_name = calls.reads_tables_by_name || reads_statistics;
    // Relations named in call arguments (`table_to_xml('…')`) are read as the server reads
    // a regclass, which the lowercased names here do not tell exactly: never catalogs.
    let catalog_only = class == Class::Read
        && opaque.is_none()
        && !calls_reads_by_name
        && !calls.reads_data
        && !found.relations.is_empty()
        && !found.non_catalog_relations
        && calls.relations.is_empty();
    let search_path = search_path_of(&found, &calls);
    let catalog_unqualified = catalog_only && relations.iter().any(|r| !r.contains('.'));
    Analysis {
        kind,
        class,
        facts: Facts {
            drop: found.drop || calls.drop,
            truncate: found.truncate || calls.truncate,
            changes_rows: found.deletes
                || found.updates
                || found.merges
                || found.upserts
                || calls.changes_rows,
            delete_without_where: found.delete_without_where || calls.delete_without_where,
            update_without_where: found.update_without_where || calls.update_without_where,
            relations: relations
                .into_iter()
                .chain(found.listed_relations.iter().cloned())
                .collect(),
            schema_wide: found.schema_wide || calls.schema_wide,
            schemas: found
                .schemas
                .iter()
                .chain(&calls.schemas)
                .cloned()
                .chain(text_search_config_set(&found))
                .collect(),
            settings: changed.into(),
            opaque,
            reads_tables_by_name: calls.reads_tables_by_name,
            shows_every_tables_values: reads_statistics,
            sequence_unknown: calls.sequence_unknown,
            names,
            catalog_only,
            plan_only: matches!(node, N::ExplainStmt(_)),
            catalog_unqualified,
            may_shadow_catalog: found.temporary_relations
                || calls.search_path_shadows
                || set_search_path_shadows(&found),
            copy_in: matches!(node, N::CopyStmt(c) if c.is_from && !c.is_program && c.filename.is_empty()),
            share_lock_only: matches!(node, N::LockStmt(l) if l.mode == ACCESS_SHARE_LOCK),
            setting_named_by_catalog_row: where_name.is_some_and(|(_, unqualified)| unqualified)
                || calls.setting_named_by_catalog_row,
            search_path: search_path.into(),
            maybe_called: found
                .calls
                .iter()
                .map(|c| c.name.clone())
                .chain(found.field_names.iter().cloned())
                .chain(found.type_names.iter().map(|name| super::type_entry(name)))
                .chain(calls.maybe_called.iter().cloned())
                .collect(),
            functions: once_each(
                called_functions(&found)
                    .into_iter()
                    .chain(calls.functions.iter().cloned()),
            )
            .into(),
            written_relations: once_each(
                found
                    .written_relations
                    .iter()
                    .chain(&calls.written_relations)
                    .cloned(),
            )
            .into(),
            fields: once_each(found.field_names.iter().chain(&calls.fields).cloned()).into(),
            operators: found
                .operators
                .iter()
                .map(|(_, symbol)| symbol.clone())
                .chain(calls.operators.iter().cloned())
                .collect(),
        },
    }
}

/// Whether the relation (by name, schema-qualified or not) is a catalog that shows values of
/// every table: the planner's statistics hold sample values of every analysed column
/// (`pg_statistic`, `pg_statistic_ext_data` and the `pg_stats*` views over them;
/// `pg_statistic_ext` holds only the definitions, which psql's `\d` and pg_dump read), and
/// `pg_sequences` every sequence's last value (`pg_sequence` only their parameters).
pub(super) fn shows_every_tables_values(relation: &str) -> bool {
    let name = relation.rsplit('.').next().unwrap_or(relation);
    name.starts_with("pg_stats")
        || (name.starts_with("pg_statistic") && name != "pg_statistic_ext")
        || name == "pg_sequences"
}

/// The functions `found` calls, each once, in the order first written.
fn called_functions(found: &Found<'_>) -> Vec<String> {
    once_each(found.calls.iter().map(|call| match &call.schema {
        Some(schema) => format!("{schema}.{}", call.name),
        None => call.name.clone(),
    }))
}

/// `names` without repeats, in the order first seen.
fn once_each(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    names.filter(|name| seen.insert(name.clone())).collect()
}

/// The statement's own kind, class and namespace change, from its type.
fn statement(node: &N, found: &Found<'_>) -> (StatementKind, Class, Option<NameChange>) {
    use StatementKind as K;
    let select_class = || {
        if found.writes || found.row_locks || found.select_into {
            Class::Write
        } else {
            Class::Read
        }
    };
    // A SELECT that writes (a writable CTE) is recorded as the write, so that filtering
    // the trail by kind finds it; SELECT INTO creates a table, and is DDL whatever else it
    // writes (event triggers fire on it: a fifth review ran one unchecked through
    // `WITH i AS (INSERT …) SELECT * INTO t FROM i`, recorded as an insert).
    let select_kind = || match written_kind(found) {
        _ if found.select_into => K::Ddl,
        Some(kind) => kind,
        None => K::Select,
    };
    match node {
        N::SelectStmt(_) => (select_kind(), select_class(), None),
        N::InsertStmt(_) => (K::Insert, Class::Write, None),
        N::UpdateStmt(_) => (K::Update, Class::Write, None),
        N::DeleteStmt(_) => (K::Delete, Class::Write, None),
        N::MergeStmt(_) => (K::Merge, Class::Write, None),
        N::ExplainStmt(e) => (
            explain_kind(e),
            explain_class(e, found),
            executed_below(analyzes(e), found),
        ),
        // `COPY (DELETE … RETURNING *) TO STDOUT` is the delete.
        N::CopyStmt(c) => (
            written_kind(found).unwrap_or(K::Other),
            copy_class(c, found),
            None,
        ),
        N::DeclareCursorStmt(d) => {
            let class = if d.options & CURSOR_OPT_HOLD != 0 {
                // A held cursor outlives its transaction: materialised at commit and kept
                // for the session.
                select_class().worst(Class::ReadOnlyEscape("cursor_with_hold"))
            } else {
                select_class()
            };
            (
                K::Other,
                class,
                Some(NameChange::Declare(d.portalname.clone())),
            )
        }
        N::FetchStmt(f) => (
            K::Select,
            Class::Read,
            Some(NameChange::Fetch(f.portalname.clone())),
        ),
        N::ClosePortalStmt(c) => (
            K::Other,
            Class::Session,
            Some(NameChange::Close(non_empty(&c.portalname))),
        ),
        N::PrepareStmt(p) => {
            // Preparing checks what would run: a prepared write is refused where a write is.
            let inner = p.query.as_deref().map(|q| analyze_inner(q).class);
            let class = inner.unwrap_or(Class::Unknown).worst(Class::Session);
            (K::Other, class, Some(NameChange::Prepare(p.name.clone())))
        }
        // What runs was checked when it was prepared.
        N::ExecuteStmt(e) => (
            K::Other,
            Class::Session,
            Some(NameChange::Execute(e.name.clone())),
        ),
        N::DeallocateStmt(d) => {
            let name = if d.isall { None } else { non_empty(&d.name) };
            (K::Other, Class::Session, Some(NameChange::Deallocate(name)))
        }
        N::DiscardStmt(d) => {
            let all = d.target == protobuf::DiscardMode::DiscardAll as i32;
            (
                K::Other,
                Class::Session,
                all.then_some(NameChange::DiscardAll),
            )
        }
        N::TransactionStmt(t) => (K::Other, transaction_class(t), transaction_names(t)),
        N::VariableSetStmt(_) | N::VariableShowStmt(_) | N::ListenStmt(_) | N::UnlistenStmt(_) => {
            (K::Other, Class::Session, None)
        }
        N::ConstraintsSetStmt(_) => (K::Other, Class::Session, None),
        N::LockStmt(l) => {
            let class = if l.mode == ACCESS_SHARE_LOCK {
                Class::Read
            } else {
                Class::Write
            };
            (K::Other, class, None)
        }
        N::NotifyStmt(_)
        | N::VacuumStmt(_)
        | N::ClusterStmt(_)
        | N::ReindexStmt(_)
        | N::RefreshMatViewStmt(_)
        | N::CheckPointStmt(_) => (K::Other, Class::Write, None),
        N::CallStmt(_) => (K::Other, Class::Write, None),
        N::DoStmt(_) => (K::Other, Class::Escalation("do_block"), None),
        N::CreateTableAsStmt(_) => (K::Ddl, Class::Ddl, executed_below(true, found)),
        other => (K::Ddl, ddl_class(other), None),
    }
}

/// DDL, unless it reaches outside the grant.
/// `ObjectType::ObjectRole`.
const ROLE: i32 = protobuf::ObjectType::ObjectRole as i32;
/// `ObjectType::ObjectForeignTable`.
const FOREIGN_TABLE: i32 = protobuf::ObjectType::ObjectForeignTable as i32;

/// `ALTER TABLE f OPTIONS (…)`: only a foreign table takes them, through `ALTER TABLE` too.
fn changes_server_options(alter: &protobuf::AlterTableStmt) -> bool {
    let generic = protobuf::AlterTableType::AtGenericOptions as i32;
    alter
        .cmds
        .iter()
        .any(|cmd| matches!(cmd.node.as_ref(), Some(N::AlterTableCmd(c)) if c.subtype == generic))
}

/// The session's own login (`CURRENT_USER`, `SESSION_USER`, `CURRENT_ROLE`) or a grant's
/// role (`lockbox_…`). Any role may set its own password, even one that may alter no other
/// role: an engineer who set it would know the login lockbox keeps hidden, and could log
/// in past the proxy and its record.
fn names_a_lockbox_login(role: Option<&protobuf::RoleSpec>) -> bool {
    names_the_session_itself(role)
        || role.is_some_and(|role| {
            role.roletype == protobuf::RoleSpecType::RolespecCstring as i32
                && role.rolename.starts_with(crate::provision::sql::PREFIX)
        })
}

/// `CURRENT_USER`, `SESSION_USER`, `CURRENT_ROLE`: the session's own role.
fn names_the_session_itself(role: Option<&protobuf::RoleSpec>) -> bool {
    use protobuf::RoleSpecType as T;
    role.is_some_and(|role| {
        [
            T::RolespecCurrentUser,
            T::RolespecSessionUser,
            T::RolespecCurrentRole,
        ]
        .iter()
        .any(|own| role.roletype == *own as i32)
    })
}

/// `ALTER TABLE … OWNER TO` another role. What a grant made and gave away (to the level's
/// role, which its own role may act as) outlives the grant as that role's: a `SECURITY
/// DEFINER` function or a view then runs with the level's privileges for whoever calls it
/// later, a read grant or the application (an attack review).
fn hands_a_relation_over(alter: &protobuf::AlterTableStmt) -> bool {
    let change_owner = protobuf::AlterTableType::AtChangeOwner as i32;
    alter.cmds.iter().any(|cmd| {
        matches!(cmd.node.as_ref(), Some(N::AlterTableCmd(c))
            if c.subtype == change_owner && !names_the_session_itself(c.newowner.as_ref()))
    })
}

/// `ALTER DEFAULT PRIVILEGES FOR ROLE …` naming a role other than the session's own:
/// what another role creates from then on.
fn sets_another_roles_defaults(alter: &protobuf::AlterDefaultPrivilegesStmt) -> bool {
    let roles = alter.options.iter().filter_map(|o| match o.node.as_ref() {
        Some(N::DefElem(d)) if d.defname == "roles" => d.arg.as_deref(),
        _ => None,
    });
    roles.into_iter().any(|arg| {
        match arg.node.as_ref() {
        Some(N::List(list)) => list.items.iter().any(|item| {
            !matches!(item.node.as_ref(), Some(N::RoleSpec(r)) if names_the_session_itself(Some(r)))
        }),
        _ => true,
    }
    })
}

fn ddl_class(node: &N) -> Class {
    match node {
        N::AlterSystemStmt(_) => Class::Escalation("alter_system"),
        N::LoadStmt(_) => Class::Escalation("load"),
        N::CreateExtensionStmt(_) | N::AlterExtensionStmt(_) | N::AlterExtensionContentsStmt(_) => {
            Class::Escalation("create_extension")
        }
        N::AlterRoleStmt(a) if names_a_lockbox_login(a.role.as_ref()) => {
            Class::Forbidden("own_login")
        }
        // Its defaults bind lockbox's next logins as the role (its reaper's among them).
        N::AlterRoleSetStmt(a) if names_a_lockbox_login(a.role.as_ref()) => {
            Class::Forbidden("own_login")
        }
        N::CreateRoleStmt(_)
        | N::AlterRoleStmt(_)
        | N::AlterRoleSetStmt(_)
        | N::DropRoleStmt(_)
        | N::GrantRoleStmt(_) => Class::Escalation("role_management"),
        N::CreatedbStmt(_)
        | N::DropdbStmt(_)
        | N::AlterDatabaseStmt(_)
        | N::AlterDatabaseSetStmt(_)
        | N::AlterDatabaseRefreshCollStmt(_)
        | N::CreateTableSpaceStmt(_)
        | N::DropTableSpaceStmt(_)
        | N::AlterTableSpaceOptionsStmt(_)
        | N::CreatePlangStmt(_)
        | N::CreateEventTrigStmt(_)
        | N::AlterEventTrigStmt(_) => Class::Escalation("server_object"),
        // A publication sends its tables' rows to other servers' subscriptions (`FOR ALL
        // TABLES`, `FOR TABLES IN SCHEMA hr` naming none of them).
        N::CreatePublicationStmt(_)
        | N::AlterPublicationStmt(_)
        | N::CreateSubscriptionStmt(_)
        | N::AlterSubscriptionStmt(_)
        | N::DropSubscriptionStmt(_)
        | N::CreateForeignServerStmt(_)
        | N::AlterForeignServerStmt(_)
        | N::CreateUserMappingStmt(_)
        | N::AlterUserMappingStmt(_)
        | N::CreateFdwStmt(_)
        | N::AlterFdwStmt(_)
        | N::ImportForeignSchemaStmt(_)
        | N::CreateForeignTableStmt(_) => Class::Escalation("remote_server"),
        // A foreign table reads what its server gives under its options or its name, which
        // a rename or a new schema changes (an attack review renamed one to a protected
        // table's name, its loopback server then read and wrote that table through a view
        // made before).
        N::AlterTableStmt(a) if a.objtype == FOREIGN_TABLE || changes_server_options(a) => {
            Class::Escalation("remote_server")
        }
        N::RenameStmt(r) if r.rename_type == FOREIGN_TABLE || r.relation_type == FOREIGN_TABLE => {
            Class::Escalation("remote_server")
        }
        N::AlterObjectSchemaStmt(o) if o.object_type == FOREIGN_TABLE => {
            Class::Escalation("remote_server")
        }
        N::AlterOwnerStmt(o) if !names_the_session_itself(o.newowner.as_ref()) => {
            Class::Escalation("ownership")
        }
        N::AlterTableStmt(a) if hands_a_relation_over(a) => Class::Escalation("ownership"),
        N::CreateSchemaStmt(c)
            if c.authrole.is_some() && !names_the_session_itself(c.authrole.as_ref()) =>
        {
            Class::Escalation("ownership")
        }
        N::ReassignOwnedStmt(_) => Class::Escalation("ownership"),
        N::AlterDefaultPrivilegesStmt(d) if sets_another_roles_defaults(d) => {
            Class::Escalation("ownership")
        }
        N::RenameStmt(r) if r.rename_type == ROLE => {
            let named = protobuf::RoleSpec {
                roletype: protobuf::RoleSpecType::RolespecCstring as i32,
                rolename: r.subname.clone(),
                location: 0,
            };
            if names_a_lockbox_login(Some(&named)) {
                Class::Forbidden("own_login")
            } else {
                Class::Escalation("role_management")
            }
        }
        _ => Class::Ddl,
    }
}

/// EXPLAIN plans without running; EXPLAIN ANALYZE runs the statement.
/// The kind of the write a statement holds inside, the most destructive first when it
/// holds several.
fn written_kind(found: &Found<'_>) -> Option<StatementKind> {
    use StatementKind as K;
    [
        (found.deletes, K::Delete),
        (found.merges, K::Merge),
        (found.updates, K::Update),
        (found.inserts, K::Insert),
    ]
    .into_iter()
    .find_map(|(present, kind)| present.then_some(kind))
}

/// EXPLAIN ANALYZE runs its statement, and is recorded as what it runs; a plain EXPLAIN
/// runs nothing.
fn explain_kind(e: &protobuf::ExplainStmt) -> StatementKind {
    match e.query.as_deref() {
        Some(query) if analyzes(e) => analyze_inner(query).kind,
        _ => StatementKind::Other,
    }
}

fn explain_class(e: &protobuf::ExplainStmt, found: &Found<'_>) -> Class {
    let Some(query) = e.query.as_deref() else {
        return Class::Unknown;
    };
    if analyzes(e) {
        // The walk already saw writes anywhere inside; the inner statement's own class
        // covers the rest (a COPY, a PREPARE …).
        let inner = analyze_inner(query).class;
        if found.writes {
            inner.worst(Class::Write)
        } else {
            inner
        }
    } else {
        Class::Read
    }
}

fn analyzes(e: &protobuf::ExplainStmt) -> bool {
    e.options.iter().any(|option| {
        let Some(N::DefElem(def)) = option.node.as_ref() else {
            return false;
        };
        if !def.defname.eq_ignore_ascii_case("analyze")
            && !def.defname.eq_ignore_ascii_case("analyse")
        {
            return false;
        }
        // `ANALYZE` alone, or with a value that is not plainly false.
        let value = def
            .arg
            .as_deref()
            .and_then(|arg| serde_json::to_value(arg).ok())
            .and_then(|arg| tree::literal(&arg));
        !matches!(
            value.as_deref().map(str::to_ascii_lowercase).as_deref(),
            Some("off" | "false" | "0" | "no" | "f" | "n")
        )
    })
}

/// The prepared statement a statement runs by name below its top (`CREATE TABLE t AS
/// EXECUTE s`, `EXPLAIN ANALYZE` of it or of `EXECUTE s`), found anywhere in its tree so
/// that no nesting the grammar allows escapes the name check `EXECUTE s` gets. `runs`:
/// false for an EXPLAIN that only plans it.
fn executed_below(runs: bool, found: &Found<'_>) -> Option<NameChange> {
    found
        .executes
        .first()
        .filter(|_| runs)
        .map(|name| NameChange::Execute(name.clone()))
}

fn copy_class(c: &protobuf::CopyStmt, found: &Found<'_>) -> Class {
    if c.is_program {
        Class::Escalation("copy_program")
    } else if !c.filename.is_empty() {
        Class::Escalation("copy_file")
    } else if c.is_from {
        Class::Write
    } else if let Some(query) = c.query.as_deref() {
        // COPY (query) TO STDOUT runs the query: `COPY (DELETE … RETURNING *) TO STDOUT`.
        let inner = analyze_inner(query).class;
        if found.writes {
            inner.worst(Class::Write)
        } else {
            inner
        }
    } else {
        Class::Read
    }
}

fn transaction_class(t: &protobuf::TransactionStmt) -> Class {
    use protobuf::TransactionStmtKind as T;
    match T::try_from(t.kind) {
        Ok(T::TransStmtBegin | T::TransStmtStart) => {
            let options: Vec<Value> = t
                .options
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect();
            settings::transaction_modes(&options)
        }
        Ok(
            T::TransStmtCommit
            | T::TransStmtRollback
            | T::TransStmtSavepoint
            | T::TransStmtRelease
            | T::TransStmtRollbackTo,
        ) => Class::Session,
        // Two-phase commit keeps a transaction's changes (and locks) beyond the session.
        _ => Class::Write,
    }
}

/// What a transaction statement does to the cursors: the end of the transaction ends those
/// opened in it, a rollback to a savepoint those opened since the savepoint.
fn transaction_names(t: &protobuf::TransactionStmt) -> Option<NameChange> {
    use protobuf::TransactionStmtKind as T;
    let name = || t.savepoint_name.clone();
    match T::try_from(t.kind) {
        Ok(T::TransStmtCommit | T::TransStmtRollback | T::TransStmtPrepare) => {
            Some(NameChange::EndTransaction)
        }
        Ok(T::TransStmtSavepoint) => Some(NameChange::Savepoint(name())),
        Ok(T::TransStmtRelease) => Some(NameChange::Release(name())),
        Ok(T::TransStmtRollbackTo) => Some(NameChange::RollbackTo(name())),
        _ => None,
    }
}

/// The analysis of a statement nested in another (EXPLAIN's, PREPARE's, COPY's query).
fn analyze_inner(node: &protobuf::Node) -> Analysis {
    analyze_stmt(Some(node))
}

/// The schema of a text search configuration a `SET default_text_search_config` names:
/// every later unqualified `to_tsvector(…)` uses it.
fn text_search_config_set(found: &Found<'_>) -> Vec<String> {
    found
        .sets
        .iter()
        .filter(|s| s.name == "default_text_search_config")
        .flat_map(|set| set.args.iter())
        .filter_map(|arg| super::literals::schema_of_name(&tree::literal(arg)?))
        .collect()
}

/// Schemas a statement puts on the search path.
fn search_path_of(found: &Found<'_>, calls: &Calls) -> Vec<String> {
    let mut out: Vec<String> = calls.search_path.clone();
    for set in found.sets.iter().filter(|s| s.name == "search_path") {
        for arg in set.args {
            match tree::literal(arg) {
                Some(value) => out.extend(schemas_in(&value)),
                None => out.push("*".into()),
            }
        }
    }
    out
}

/// Whether a `SET search_path` in the statement may search a schema before pg_catalog.
/// Each of its values is one schema name, exact (the grammar took the quotes off a quoted
/// one, and the server quotes it back: `"pg_catalog,x"` is a schema of that name): a
/// schema listed before `pg_catalog` shadows it, and a value that cannot be read might.
fn set_search_path_shadows(found: &Found<'_>) -> bool {
    found
        .sets
        .iter()
        .filter(|s| s.name == "search_path")
        .any(|set| {
            let values: Vec<Option<String>> = set.args.iter().map(tree::literal).collect();
            values.iter().any(Option::is_none)
                || values
                    .iter()
                    .position(|v| v.as_deref() == Some("pg_catalog"))
                    .is_some_and(|at| at > 0)
        })
}

/// Whether a search_path value as the server reads it from text (`set_config`, a role's
/// or database's default) may search a schema before pg_catalog. Read conservatively
/// rather than parsed: unless the value starts with `pg_catalog` unquoted, any mention of
/// it (quoted, in any case, inside another name) counts as being listed later. Where it
/// is not mentioned at all, pg_catalog is searched first.
pub(crate) fn search_path_text_shadows(value: &str) -> bool {
    let lower = value.to_lowercase();
    if !lower.contains("pg_catalog") {
        return false;
    }
    // Only the whitespace PostgreSQL's identifier splitter skips: a vertical tab or a
    // no-break space is part of the name (`\u{b}pg_catalog` is another schema).
    let blank = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c');
    let rest = value.trim_start_matches(blank);
    let first_is_catalog = rest.strip_prefix("pg_catalog").is_some_and(|after| {
        let after = after.trim_start_matches(blank);
        after.is_empty() || after.starts_with(',')
    });
    !first_is_catalog
}

/// The schema names of a search_path value (`"$user", public, hr`).
pub(super) fn schemas_in(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `ALTER FUNCTION|PROCEDURE|ROUTINE|AGGREGATE … RENAME TO`.
fn renames_routine(r: &protobuf::RenameStmt) -> bool {
    use protobuf::ObjectType as O;
    matches!(
        O::try_from(r.rename_type),
        Ok(O::ObjectFunction | O::ObjectProcedure | O::ObjectRoutine | O::ObjectAggregate)
    )
}

fn non_empty(name: &str) -> Option<String> {
    (!name.is_empty()).then(|| name.to_owned())
}

/// The audit kind of what `PREPARE name AS <statement>` prepares.
pub fn prepared_kind(text: &str) -> StatementKind {
    crate::sql::with_tree_stack(text, || match only_statement(text) {
        Some(N::PrepareStmt(p)) => p
            .query
            .as_deref()
            .map_or(StatementKind::Unknown, |q| analyze_inner(q).kind),
        _ => StatementKind::Unknown,
    })
    .unwrap_or(StatementKind::Unknown)
}

/// Whether `text` is `DECLARE … WITH HOLD`.
pub fn declares_held_cursor(text: &str) -> bool {
    crate::sql::with_tree_stack(text, || {
        matches!(only_statement(text), Some(N::DeclareCursorStmt(d)) if d.options & CURSOR_OPT_HOLD != 0)
    })
    .unwrap_or(false)
}

fn only_statement(text: &str) -> Option<N> {
    match crate::sql::parse(text) {
        crate::sql::Parsed::Statements(mut list) if list.len() == 1 => list
            .pop()
            .and_then(|(_, raw)| raw.stmt)
            .and_then(|n| n.node),
        _ => None,
    }
}
