//! Function calls, named as PostgreSQL resolves them after its identifier normalisation
//! (`"SET_CONFIG"` is not `set_config`; `U&"set\005fconfig"` is). A call of a built-in
//! is judged by what the built-in does; a call of anything else is opaque: lockbox cannot
//! see what it does, so the database's role bounds it, and with guardrails in force it is
//! refused.

use std::collections::HashSet;
use std::sync::LazyLock;

use super::tree::{literal, Call};
use super::{Analysis, Class};
use crate::sql::StatementKind;
use crate::wire::ParamValue;

/// The rule that refuses functions reaching outside the grant (files, other servers, other
/// backends, server control).
pub(crate) const ESCAPING: &str = "escaping_function";

/// What calling a built-in does, beyond computing a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing lockbox cares about.
    None,
    /// Changes data (large objects, sequences) or holds locks that block other sessions.
    Write,
    /// Reaches outside the grant: files, other servers, other backends, server control.
    Escalation(&'static str),
    /// `set_config`: judged by the setting it changes.
    SetsConfig,
    /// Runs SQL given as text (`query_to_xml('…')`): judged by that text, when it is a
    /// literal.
    RunsQueryText,
    /// Reads a table named by text, or a whole schema or database.
    ReadsTablesByName,
    /// Returns stored data without naming a table (large objects): never a catalog read.
    ReadsData,
    /// Fetches from a portal named by text (`cursor_to_xml`): refused at every level (see
    /// [`FETCHES_PORTAL_BY_NAME`]).
    FetchesPortalByName,
    /// Converts a value to a type given by OID (`domain_in('5', 'd'::regtype, -1)`): the
    /// type's input, a domain's checks and a composite's columns' run, which may call the
    /// database's functions, and the OID names no type the guard or the catalog's links
    /// can see (an attack review ran an off-limits schema's domain check so, and wrote
    /// through it). As opaque as a call of a database function.
    ConvertsToTypeByOid,
}

/// The rule a call that fetches from a portal by a name in text breaks: the portal may be a
/// Bind's, whose statement and parameters are in no record, and unlike SQL `FETCH` the name
/// is a value, not known before it runs.
pub(crate) const FETCHES_PORTAL_BY_NAME: Class = Class::Forbidden("unknown_cursor");

/// The names of pg_catalog's functions in PostgreSQL 15, one per line (`psql -Atc "select
/// distinct proname from pg_proc where pronamespace = 'pg_catalog'::regnamespace order by
/// 1"`). A function not in it is not a built-in.
const BUILTINS: &str = include_str!("builtin_functions.txt");

static BUILTIN_NAMES: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| BUILTINS.lines().map(str::trim).collect());

/// The operator symbols of pg_catalog in PostgreSQL 15 (`psql -Atc "select distinct
/// oprname from pg_operator where oprnamespace = 'pg_catalog'::regnamespace order by 1"`).
const BUILTIN_OPERATORS: &str = include_str!("builtin_operators.txt");

static BUILTIN_OPERATOR_NAMES: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| BUILTIN_OPERATORS.lines().map(str::trim).collect());

/// Whether an operator is one of pg_catalog's (an operator runs a function: one that is not
/// built in is as opaque as a call of it).
pub(crate) fn is_builtin_operator(schema: Option<&str>, symbol: &str) -> bool {
    matches!(schema, None | Some("pg_catalog")) && BUILTIN_OPERATOR_NAMES.contains(symbol)
}

/// Whether a name is the name of a pg_catalog function.
pub fn is_builtin_name(name: &str) -> bool {
    BUILTIN_NAMES.contains(name)
}

/// Tables and views of pg_catalog and information_schema in PostgreSQL 15 (`psql -Atc
/// "select distinct relname from pg_class where relnamespace in ('pg_catalog'::regnamespace,
/// 'information_schema'::regnamespace) and relkind in ('r','v','m','p') order by 1"`).
const CATALOG_RELATIONS: &str = include_str!("catalog_relations.txt");

static CATALOG_RELATION_NAMES: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| CATALOG_RELATIONS.lines().map(str::trim).collect());

pub(crate) fn is_catalog_relation(name: &str) -> bool {
    CATALOG_RELATION_NAMES.contains(name)
}

/// Whether `call` is a call of a pg_catalog built-in: unqualified (pg_catalog comes first
/// on every search path unless it is placed later explicitly) or qualified with pg_catalog.
pub(crate) fn is_builtin(call: &Call<'_>) -> bool {
    let schema_ok = match call.schema.as_deref() {
        None | Some("pg_catalog") => true,
        Some(_) => false,
    };
    schema_ok && BUILTIN_NAMES.contains(call.name.as_str())
}

/// What a built-in does.
pub(crate) fn effect(name: &str) -> Effect {
    match name {
        "set_config" => Effect::SetsConfig,
        // Large objects: every writer, and the file transfers.
        "lo_create" | "lo_creat" | "lo_unlink" | "lowrite" | "lo_write" | "lo_put"
        | "lo_truncate" | "lo_truncate64" | "lo_from_bytea" => Effect::Write,
        "lo_import" | "lo_export" => Effect::Escalation(ESCAPING),
        "lo_get" | "loread" => Effect::ReadsData,
        // They assign a transaction id even in a read-only transaction: each one a WAL
        // record and a step towards wraparound.
        "txid_current" | "pg_current_xact_id" => Effect::Write,
        // Sequences.
        "nextval" | "setval" => Effect::Write,
        // Advisory locks block other sessions (the session-level ones beyond the
        // transaction).
        "pg_advisory_lock"
        | "pg_advisory_lock_shared"
        | "pg_advisory_xact_lock"
        | "pg_advisory_xact_lock_shared"
        | "pg_try_advisory_lock"
        | "pg_try_advisory_lock_shared"
        | "pg_try_advisory_xact_lock"
        | "pg_try_advisory_xact_lock_shared" => Effect::Write,
        "pg_notify" => Effect::Write,
        // Statistics, replication and WAL state.
        "pg_stat_reset"
        | "pg_stat_reset_shared"
        | "pg_stat_reset_single_table_counters"
        | "pg_stat_reset_single_function_counters"
        | "pg_stat_reset_slru"
        | "pg_stat_reset_replication_slot"
        | "pg_stat_reset_subscription_stats"
        | "pg_stat_statements_reset"
        | "brin_summarize_new_values"
        | "brin_summarize_range"
        | "brin_desummarize_range"
        | "gin_clean_pending_list"
        | "pg_logical_emit_message"
        | "pg_replication_origin_create"
        | "pg_replication_origin_drop"
        | "pg_replication_origin_advance"
        | "pg_replication_origin_session_setup"
        | "pg_replication_origin_xact_setup"
        | "pg_import_system_collations"
        | "pg_extension_config_dump" => Effect::Write,
        // Files of the server.
        "pg_read_file"
        | "pg_read_binary_file"
        | "pg_stat_file"
        | "pg_ls_dir"
        | "pg_ls_logdir"
        | "pg_ls_waldir"
        | "pg_ls_tmpdir"
        | "pg_ls_archive_statusdir"
        | "pg_ls_logicalmapdir"
        | "pg_ls_logicalsnapdir"
        | "pg_ls_replslotdir"
        | "pg_file_write"
        | "pg_file_rename"
        | "pg_file_unlink"
        | "pg_file_sync"
        | "pg_logdir_ls"
        | "pg_current_logfile" => Effect::Escalation(ESCAPING),
        // Other backends and the server itself.
        "pg_terminate_backend" | "pg_cancel_backend" | "pg_log_backend_memory_contexts" => {
            Effect::Escalation(ESCAPING)
        }
        "pg_reload_conf"
        | "pg_rotate_logfile"
        | "pg_promote"
        | "pg_switch_wal"
        | "pg_create_restore_point"
        | "pg_backup_start"
        | "pg_backup_stop"
        | "pg_start_backup"
        | "pg_stop_backup"
        | "pg_wal_replay_pause"
        | "pg_wal_replay_resume"
        | "pg_create_physical_replication_slot"
        | "pg_create_logical_replication_slot"
        | "pg_drop_replication_slot"
        | "pg_copy_physical_replication_slot"
        | "pg_copy_logical_replication_slot"
        | "pg_replication_slot_advance"
        | "pg_logical_slot_get_changes"
        | "pg_logical_slot_get_binary_changes"
        // A slot's decoded changes hold every table's new rows (an attack review read an
        // off-limits table's writes through a customer's CDC slot).
        | "pg_logical_slot_peek_changes"
        | "pg_logical_slot_peek_binary_changes" => Effect::Escalation(ESCAPING),
        // SQL as text, and whole tables read by name.
        "query_to_xml"
        | "query_to_xmlschema"
        | "query_to_xml_and_xmlschema"
        | "ts_stat"
        | "ts_rewrite" => Effect::RunsQueryText,
        // A sequence's state, by its name as a regclass; where a row's newest version is
        // (`currtid2('t', tid)`).
        "pg_sequence_last_value"
        | "currtid2"
        | "table_to_xml"
        | "table_to_xmlschema"
        | "table_to_xml_and_xmlschema"
        | "schema_to_xml"
        | "schema_to_xmlschema"
        | "schema_to_xml_and_xmlschema"
        | "database_to_xml"
        | "database_to_xmlschema"
        | "database_to_xml_and_xmlschema" => Effect::ReadsTablesByName,
        // Fetch from a portal named in text: a Bind's, whose statement's text and
        // parameters may be in no record, run as the fetch goes.
        "cursor_to_xml" | "cursor_to_xmlschema" => Effect::FetchesPortalByName,
        "domain_in" | "domain_recv" | "record_in" | "record_recv" | "array_in" | "array_recv"
        | "range_in" | "range_recv" | "multirange_in" | "multirange_recv" => {
            Effect::ConvertsToTypeByOid
        }
        _ => Effect::None,
    }
}

/// The built-ins that run SQL given as text or read tables named in text: inside a view, a
/// default or a check, what they read is out of sight (see `provision`'s function links).
pub const SQL_AS_TEXT: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
];

/// Built-ins the guard judges by their arguments (the setting named, the relation named in
/// text or by OID): called from a view, a rule, a default or a check, their arguments are out
/// of sight, so such a relation runs them as it would a database function (see `provision`'s
/// function links). `regclass(text)` is the late-binding name of a relation: a stored
/// `nextval('hr.s'::text)` finds its sequence only as it runs (a review's default advanced
/// an off-limits sequence so, where `'hr.s'::regclass` links to it).
pub const JUDGED_BY_ARGUMENTS: &[&str] = &[
    "set_config",
    "pg_sequence_last_value",
    "currtid2",
    "regclass",
];

/// The built-ins that stored code (a view, a rule, a policy, a default, a check, a domain)
/// runs out of the guard's sight, so a relation or type that calls one is treated like one
/// that calls a database function: those that run SQL as text, those judged by their
/// arguments, and every other built-in the guard does not take as a plain read (writes,
/// files, other backends: a review read a server file through a customer's view over
/// `pg_read_file`). `nextval` and `setval` are left out: a serial column's default calls
/// them with its own sequence, which the catalog links follow.
pub fn followed_in_stored_code() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = SQL_AS_TEXT
        .iter()
        .chain(JUDGED_BY_ARGUMENTS)
        .copied()
        .chain(
            BUILTINS
                .lines()
                .map(str::trim)
                .filter(|name| effect(name) != Effect::None),
        )
        .filter(|name| !matches!(*name, "nextval" | "setval"))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Functions of common extensions that reach other servers or run SQL as text where the
/// audit cannot see it: refused below admin whatever schema they are installed in.
pub(crate) fn extension_escalation(name: &str) -> Option<&'static str> {
    match name {
        "dblink" | "dblink_exec" | "dblink_connect" | "dblink_connect_u" | "dblink_open"
        | "dblink_fetch" | "dblink_send_query" | "dblink_get_result" => Some(ESCAPING),
        "pg_file_write" | "pg_file_rename" | "pg_file_unlink" | "pg_file_sync" => Some(ESCAPING),
        _ => None,
    }
}

/// What a built-in loses for good, for the rules `deny_drop` and `deny_truncate`: a large
/// object is a stored object like a table, `lo_unlink` its DROP and `lo_truncate` its
/// TRUNCATE (an attack review deleted and emptied large objects at admin under `deny_drop`).
pub(crate) fn loss(name: &str) -> Option<Loss> {
    match name {
        "lo_unlink" => Some(Loss::Drop),
        "lo_truncate" | "lo_truncate64" => Some(Loss::Truncate),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loss {
    Drop,
    Truncate,
}

/// Large-object mode bits of `lo_open`: `INV_WRITE` opens for writing.
const INV_WRITE: i64 = 0x0002_0000;

/// `lo_open(oid, mode)` writes when its mode asks for `INV_WRITE` (or cannot be read).
pub(crate) fn lo_open_class(call: &Call<'_>) -> Class {
    let mode = call
        .args
        .get(1)
        .and_then(|m| literal(m))
        .and_then(|m| m.parse::<i64>().ok());
    match mode {
        Some(mode) if mode & INV_WRITE == 0 => Class::Read,
        _ => Class::Write,
    }
}

/// What a FunctionCall message of function `oid` does, for the same checks as a statement's
/// ([`super::check_analysis`] and the rest): a known large-object function as its SQL form;
/// any other OID could be anything (`set_config`, `query_to_xml`, the database's own
/// functions), so it reaches outside what lockbox can check: admin only, and refused where
/// the database has rules (an attack review read an off-limits table with `table_to_xml`
/// called so, and put a protected schema on the search path with `set_config`).
pub fn function_call_analysis(oid: u32, args: &[ParamValue]) -> (Option<&'static str>, Analysis) {
    match function_call_class(oid, args) {
        Some((name, class)) => {
            let mut analysis = Analysis::of(StatementKind::Other, class);
            match loss(name) {
                Some(Loss::Drop) => analysis.facts.drop = true,
                Some(Loss::Truncate) => analysis.facts.truncate = true,
                None => {}
            }
            (Some(name), analysis)
        }
        None => {
            let mut analysis =
                Analysis::of(StatementKind::Other, Class::Escalation("function_call"));
            analysis.facts.opaque = Some("a FunctionCall message of a function by OID");
            (None, analysis)
        }
    }
}

/// A built-in reached through the FunctionCall protocol message, by OID: libpq's large
/// object API (`lo_open`, `lo_read`, …) uses it. OIDs of built-ins are fixed in
/// PostgreSQL's catalog (`pg_proc.dat`) and the same in every version; a test checks them
/// against the server.
pub(super) fn function_call_class(oid: u32, args: &[ParamValue]) -> Option<(&'static str, Class)> {
    let read = |name| Some((name, Class::Read));
    match oid {
        952 => {
            // lo_open(oid, mode): libpq sends the mode as a binary int4.
            let mode = match args.get(1) {
                Some(ParamValue::Binary(b)) => <[u8; 4]>::try_from(b.as_slice())
                    .ok()
                    .map(|b| i64::from(i32::from_be_bytes(b))),
                Some(ParamValue::Text(t)) => t.trim().parse::<i64>().ok(),
                _ => None,
            };
            match mode {
                Some(mode) if mode & INV_WRITE == 0 => read("lo_open"),
                _ => Some(("lo_open", Class::Write)),
            }
        }
        953 => read("lo_close"),
        954 => read("loread"),
        956 => read("lo_lseek"),
        958 => read("lo_tell"),
        3170 => read("lo_lseek64"),
        3171 => read("lo_tell64"),
        955 => Some(("lowrite", Class::Write)),
        957 => Some(("lo_creat", Class::Write)),
        715 => Some(("lo_create", Class::Write)),
        964 => Some(("lo_unlink", Class::Write)),
        1004 => Some(("lo_truncate", Class::Write)),
        3172 => Some(("lo_truncate64", Class::Write)),
        _ => None,
    }
}
