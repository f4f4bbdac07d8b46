//! Statement guardrails: what each access level may run. The database enforces the grant
//! first (each grant logs in as a role that cannot do more than its level; read sessions are
//! read-only); this is the proxy's half, refusing with SQLSTATE 42501 before anything
//! reaches the database.
//!
//! Every decision comes from PostgreSQL's own parse tree (`crate::sql::parse`): the
//! statement type, the functions it calls after PostgreSQL's identifier normalisation, the
//! relations it names, the settings it changes — looked for everywhere in the tree, so
//! EXPLAIN ANALYZE, CTEs, PREPARE, DECLARE and COPY (query) are seen through. It fails
//! closed: a string the grammar rejects is `Unknown`, which only an admin grant may run.

mod cache;
mod calls;
mod classify;
mod functions;
mod literals;
mod numbers;
#[cfg(test)]
mod own_login_tests;
#[cfg(test)]
mod ownership_tests;
#[cfg(test)]
mod query_text_tests;
mod reach;
mod rules;
mod settings;
#[cfg(test)]
mod tests;
mod tree;

use std::ops::Range;
use std::sync::Arc;

pub use crate::config::Guardrails;
use crate::policy::AccessLevel;
use crate::sql::{self, Parsed, StatementKind};

pub(crate) use cache::cached_analyses;
pub use cache::{analyze_query_cached, check_cache_agrees, with_other_numbers};
pub use classify::{declares_held_cursor, prepared_kind};
pub use functions::{followed_in_stored_code, function_call_analysis, is_builtin_name};
pub use reach::{check_reach, CatalogReach, LinkKind, RelationLink};
pub use rules::{
    check_database_functions, check_parameter_types, check_rules, check_setting_from_catalog_row,
    database_function_used, has_guardrails,
};
pub(crate) use rules::{
    type_entry, type_oid_entry, BUILT_IN_CHANGED, BUILT_IN_TYPE_IO, IMPLICIT_CAST,
};
pub use settings::{
    client_encoding_is_safe, reported_setting_is_safe, reported_setting_keeps_access,
};

/// What a statement does, for the guardrails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Class {
    /// Reads data or catalog (SELECT, SHOW, COPY … TO STDOUT, EXPLAIN, FETCH).
    #[default]
    Read,
    /// Harmless session and transaction control (BEGIN, COMMIT, SET search_path, …).
    Session,
    /// Undoes read-only mode (`BEGIN READ WRITE`, `SET default_transaction_read_only = off`):
    /// refused under read only, with the rule named.
    ReadOnlyEscape(&'static str),
    /// Changes data (INSERT, UPDATE, DELETE, MERGE, COPY FROM STDIN, CALL, …).
    Write,
    /// Changes schema (CREATE, ALTER, DROP, TRUNCATE, GRANT, …).
    Ddl,
    /// Could widen what the grant allows (SET ROLE, ALTER SYSTEM, COPY … PROGRAM, DO, …).
    Escalation(&'static str),
    /// PostgreSQL's grammar rejects it.
    Unknown,
    /// Would make the proxy's reading of later statements differ from the server's (and so
    /// hide statements from the audit): refused at every level.
    Forbidden(&'static str),
}

impl Class {
    /// How much a class asks of the grant; combining two parts of one statement keeps the
    /// one that asks more.
    fn rank(self) -> u8 {
        match self {
            Class::Read | Class::Session => 0,
            Class::ReadOnlyEscape(_) => 1,
            Class::Write => 2,
            Class::Ddl => 3,
            Class::Escalation(_) => 4,
            Class::Unknown => 5,
            Class::Forbidden(_) => 6,
        }
    }

    pub(crate) fn worst(self, other: Class) -> Class {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// A refusal: the rule's name and the message the client sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub rule: &'static str,
    pub message: String,
}

/// What the proxy knows about one statement's text: its audit kind, its class, and the
/// facts per-database rules look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    pub kind: StatementKind,
    pub class: Class,
    pub facts: Facts,
}

impl Analysis {
    pub(super) fn of(kind: StatementKind, class: Class) -> Analysis {
        Analysis {
            kind,
            class,
            facts: Facts::default(),
        }
    }

    /// A string PostgreSQL's grammar rejects (or one too long to parse).
    pub fn rejected() -> Analysis {
        Analysis::of(StatementKind::Unknown, Class::Unknown)
    }

    /// A string with no statement in it.
    pub fn empty() -> Analysis {
        Analysis::of(StatementKind::Empty, Class::Session)
    }
}

/// A change to the session's named prepared statements and cursors made by SQL (they share
/// the protocol's namespaces: `PREPARE` with Parse, `DECLARE` with Bind's portals).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameChange {
    Prepare(String),
    /// `EXECUTE name` runs the statement prepared under that name.
    Execute(String),
    /// `DEALLOCATE name`; `None` is `DEALLOCATE ALL`.
    Deallocate(Option<String>),
    Declare(String),
    /// `CLOSE name`; `None` is `CLOSE ALL`.
    Close(Option<String>),
    /// `DISCARD ALL` drops every prepared statement and portal.
    DiscardAll,
    /// `FETCH`/`MOVE` from a cursor runs its query.
    Fetch(String),
    /// `COMMIT`, `ROLLBACK` (not to a savepoint), `PREPARE TRANSACTION`: the transaction's
    /// cursors end with it, and a commit keeps those declared WITH HOLD; which of the two
    /// happened, the server's command tag says (a COMMIT of a failed transaction answers
    /// `ROLLBACK`).
    EndTransaction,
    /// `SAVEPOINT name`, `RELEASE name`, `ROLLBACK TO name`: a rollback to a savepoint ends
    /// the cursors opened since it.
    Savepoint(String),
    Release(String),
    RollbackTo(String),
}

/// Facts of a parsed statement for per-database rules and the session's bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub drop: bool,
    pub truncate: bool,
    /// A DELETE, UPDATE, MERGE or `INSERT … ON CONFLICT DO UPDATE` anywhere in it: what a
    /// foreign key's action cascades from.
    pub changes_rows: bool,
    pub delete_without_where: bool,
    pub update_without_where: bool,
    /// Every table or view it names anywhere, lowercased (`items`, `hr.payroll`).
    pub relations: Arc<[String]>,
    /// It acts on whole schemas or everything a role owns (`DROP SCHEMA`, `DROP OWNED`,
    /// `ALTER SCHEMA … RENAME`): which tables it touches cannot be told from its text.
    pub schema_wide: bool,
    /// Schemas it acts on as a whole object (`GRANT … ON SCHEMA hr`, `ALTER SCHEMA hr OWNER
    /// TO …`, `COMMENT ON SCHEMA hr`), puts an object in (`SET SCHEMA hr`) or qualifies a
    /// name other than a column's with (`hr.f()`, `hr.d`), lowercased.
    pub schemas: Arc<[String]>,
    /// Settings it changes with SET, RESET or set_config, lowercased.
    pub settings: Arc<[String]>,
    /// Why its effect cannot be seen from its text (a DO block, CALL, a function that is
    /// not built in), if it cannot.
    pub opaque: Option<&'static str>,
    /// It calls a built-in that reads tables named by text (`table_to_xml`, …).
    pub reads_tables_by_name: bool,
    /// It reads a catalog view that shows every table's values (`pg_stats`,
    /// `pg_statistic`, `pg_sequences`): off limits where anything is, but no code of the
    /// database's own runs (a type's output function is C, a superuser's).
    pub shows_every_tables_values: bool,
    /// It changes a sequence named by an expression (`nextval(f())`), or by a name
    /// lockbox cannot read as the server will (`nextval('s'::regclass)`).
    pub sequence_unknown: bool,
    /// What it does to the session's prepared statements and cursors.
    pub names: Option<NameChange>,
    /// It reads the system catalogs only (`pg_catalog`, `information_schema`): what psql's
    /// backslash commands and pg_dump ask. Its rows are no customer data, and a grant's
    /// `max_rows` does not count them.
    pub catalog_only: bool,
    /// It is EXPLAIN: its rows are the server's plan, never a table's, so a grant's
    /// `max_rows` does not count them (EXPLAIN ANALYZE runs the statement and discards
    /// what it returns).
    pub plan_only: bool,
    /// Some catalog it reads is named without its schema: a temporary table of the same
    /// name would be read instead (pg_temp comes first on the search path).
    pub catalog_unqualified: bool,
    /// After it, an unqualified catalog name may find another relation: it names a
    /// temporary relation (pg_temp is searched first; creating one, most likely), or puts a
    /// schema before pg_catalog on the search path (or a search path it cannot read).
    pub may_shadow_catalog: bool,
    /// It is `COPY … FROM STDIN`: the server asks the client for data (CopyInResponse) and
    /// reads it, ignoring Sync, until the COPY ends.
    pub copy_in: bool,
    /// It is `LOCK TABLE … IN ACCESS SHARE MODE` (pg_dump's, of every table it dumps): it
    /// takes the lock any SELECT takes and reads nothing, runs nothing (a view's lock is its
    /// base tables' lock), so `off_limits` does not refuse the tables it names.
    pub share_lock_only: bool,
    /// It is pg_dump's `SELECT set_config(name, …) FROM pg_settings WHERE name = '<setting>'`
    /// with `pg_settings` unqualified, classed by that setting: true only while the name
    /// finds the catalog's view, which a temporary relation or a schema searched before
    /// pg_catalog would shadow (the session knows; its class is otherwise unknown).
    pub setting_named_by_catalog_row: bool,
    /// Schemas it puts on the search path (`SET search_path`, `set_config('search_path', …)`),
    /// lowercased; `*` for a value computed at run time.
    pub search_path: Arc<[String]>,
    /// Every name that may call a function: calls, `t.name` and `(expr).name`.
    pub maybe_called: Arc<[String]>,
    /// The functions it calls by name, once each, schema-qualified where written so
    /// (`lower`, `app.refresh`): with `relations`, what a clipped statement's record keeps.
    pub functions: Arc<[String]>,
    /// Every relation it names as the server resolves it (a quoted `"Secret"` keeps its
    /// case; `relations` is lowercased for the rules), with what call arguments name.
    pub written_relations: Arc<[String]>,
    /// Names used as a field (`t.name`, `(expr).name`, a column), once each: a column, or a
    /// call of a function of that name in column notation.
    pub fields: Arc<[String]>,
    /// The operators it uses, by symbol (a database's own may be found for one).
    pub operators: Arc<[String]>,
}

/// Everything the grant and the database's rules say about one analysed statement.
pub fn check_analysis(
    access: AccessLevel,
    rules: &Guardrails,
    analysis: &Analysis,
) -> Result<(), Refusal> {
    check_class(access, analysis.class)?;
    if analysis.class == Class::Unknown && has_guardrails(rules) {
        // An admin may run what the parser could not read, but its rules then go unchecked:
        // an attack review dropped a table behind 1 MiB of comment, and behind an alias the
        // server (an older release) reads but this grammar takes as a keyword.
        return Err(Refusal {
            rule: "unparsable",
            message: "lockbox: a statement lockbox cannot parse (over 1 MiB or 50,000 tokens, or text its grammar rejects, which an older server may still run) cannot be checked against this database's rules (rule unparsable)".into(),
        });
    }
    // Handing objects to another role reads nothing around the rules (a protected object
    // given away is matched by its name), so it stays an admin's under them.
    let reaches_around = matches!(analysis.class, Class::Escalation(rule) if rule != "ownership");
    if reaches_around && !rules.off_limits.is_empty() {
        // Files, programs, other servers and other roles read around every rule (an attack
        // review read a protected table's file with `COPY … FROM PROGRAM`, and its schema
        // through `SET ROLE` to a role named like it, which "$user" put on the search path).
        return Err(Refusal {
            rule: "off_limits",
            message: "lockbox: a statement that reaches outside the database (files, programs, other servers, roles), where off-limits tables can be read around the rules, is not allowed on this database (rule off_limits)".into(),
        });
    }
    check_rules(rules, &analysis.facts)
}

/// Whether `access` may run a statement of `class`.
pub fn check_class(access: AccessLevel, class: Class) -> Result<(), Refusal> {
    let refuse = |rule: &'static str, what: &str| {
        Err(Refusal {
            rule,
            message: format!(
                "lockbox: {what} is not allowed under a {} grant (rule {rule})",
                access.as_str()
            ),
        })
    };
    match (access, class) {
        (_, Class::Forbidden(rule @ "unknown_cursor")) => refuse(
            rule,
            "fetching from a cursor named by a value (its query may be in no audit record)",
        ),
        (_, Class::Forbidden(rule @ "own_login")) => refuse(
            rule,
            "changing the login lockbox gives this session, or a grant's (its password, validity or limit),",
        ),
        (_, Class::Forbidden(rule)) => refuse(rule, "changing how statements are read"),
        (AccessLevel::Admin, _) => Ok(()),
        (_, Class::Read | Class::Session) => Ok(()),
        (AccessLevel::Write, Class::Write | Class::Ddl | Class::ReadOnlyEscape(_)) => Ok(()),
        (_, Class::Escalation(rule)) => refuse(rule, "this statement"),
        (AccessLevel::Read, Class::ReadOnlyEscape(rule)) => refuse(rule, "leaving read-only mode"),
        (AccessLevel::Read, Class::Write) => refuse("read_only", "changing data"),
        (AccessLevel::Read, Class::Ddl) => refuse("read_only", "changing the schema"),
        (_, Class::Unknown) => refuse(
            "unparsable",
            "a statement PostgreSQL's grammar rejects (it would not run), or one over the 1 MiB or 50,000 tokens lockbox parses,",
        ),
    }
}

/// One statement of a query string: where it is in the text and what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementAnalysis {
    pub range: Range<usize>,
    /// Shared: a cached analysis is handed to every text of its shape without a copy.
    pub analysis: Arc<Analysis>,
}

/// Statements longer than this are not parsed at all: they are unknown (refused below admin,
/// and to admin where the database has statement rules), and still audited in full.
const MAX_ANALYZED_LEN: usize = 1024 * 1024;

/// Texts longer than this have their tokens counted before they are parsed (a shorter one
/// has fewer tokens than bytes).
const TOKENS_COUNTED_FROM: usize = 4 * 1024;
/// Texts of more tokens are not parsed: unknown (refused below admin, and to admin where the
/// database has statement rules), still audited in full. An `IN` list of 25,000 values.
const MAX_ANALYZED_TOKENS: usize = 50_000;
/// Texts of more tokens are analysed one at a time (a few tens of MB each at most).
const LARGE_ANALYSIS_TOKENS: usize = 5_000;
static LARGE_ANALYSIS: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    /// This thread holds [`LARGE_ANALYSIS`]: a query given as a string inside the text
    /// (`query_to_xml('…')`) is analysed within the outer analysis, on the same thread, and
    /// must not wait for the lock its own caller holds (an attack review hung every later
    /// large analysis that way).
    static HOLDS_LARGE_ANALYSIS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The hold of [`LARGE_ANALYSIS`] by an outermost analysis.
struct LargeAnalysis(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

/// This thread marked as analysing under the hold, until dropped.
struct HeldHere(bool);

impl LargeAnalysis {
    /// The lock, unless this thread works under it already (a nested analysis goes on under
    /// its caller's hold).
    fn take() -> Option<LargeAnalysis> {
        if Self::held_here() {
            return None;
        }
        Some(LargeAnalysis(
            LARGE_ANALYSIS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }

    fn held_here() -> bool {
        HOLDS_LARGE_ANALYSIS.with(std::cell::Cell::get)
    }

    /// Marks the thread as working under the hold (when `held`) until the mark drops.
    fn mark_held(held: bool) -> HeldHere {
        HeldHere(HOLDS_LARGE_ANALYSIS.with(|h| h.replace(h.get() || held)))
    }
}

impl Drop for HeldHere {
    fn drop(&mut self) {
        HOLDS_LARGE_ANALYSIS.with(|h| h.set(self.0));
    }
}

/// Analyses a whole query string, statement by statement, from one parse. Always at least
/// one statement: a rejected string is one unknown statement (all of it), an empty one is
/// one empty statement.
pub fn analyze_query(sql: &str) -> Vec<StatementAnalysis> {
    analyze_query_watched(sql).0
}

/// [`analyze_query`], with what it saw of the numbers in the tree (for the cache). Every
/// analysis is watched in a scope of its own, so one nested in another (of a query given
/// as a string) never adds to the outer record.
fn analyze_query_watched(sql: &str) -> (Vec<StatementAnalysis>, numbers::Watch) {
    let rejected = || {
        let rejected = vec![StatementAnalysis {
            range: 0..sql.len(),
            analysis: Arc::new(Analysis::rejected()),
        }];
        (rejected, numbers::Watch::default())
    };
    // The analysis costs memory by the parse tree's nodes, a few KiB each: an attack review
    // had 1 MB of `1,` cost the proxy 3.4 GB. Counted by the scanner first (a small share
    // of the parse's cost), a text of too many tokens is not parsed, and large ones are
    // analysed one at a time, so sessions cannot add up their peaks.
    let tokens = (sql.len() > TOKENS_COUNTED_FROM && sql.len() <= MAX_ANALYZED_LEN)
        .then(|| pg_query::scan_tokens(sql).map(|t| t.len()).ok())
        .flatten()
        .unwrap_or(0);
    if tokens > MAX_ANALYZED_TOKENS {
        return rejected();
    }
    let hold = (tokens > LARGE_ANALYSIS_TOKENS)
        .then(LargeAnalysis::take)
        .flatten();
    let held = hold.is_some() || LargeAnalysis::held_here();
    sql::with_tree_stack(sql, || {
        // The tree's stack may be another thread's: a query nested in this text (given as
        // a string) is analysed there, under the hold taken here.
        let _held = LargeAnalysis::mark_held(held);
        numbers::watching(|| analyze_query_on_this_stack(sql))
    })
    .unwrap_or_else(rejected)
}

fn analyze_query_on_this_stack(sql: &str) -> Vec<StatementAnalysis> {
    let whole = |analysis| {
        vec![StatementAnalysis {
            range: 0..sql.len(),
            analysis: Arc::new(analysis),
        }]
    };
    if sql.len() > MAX_ANALYZED_LEN {
        return whole(Analysis::rejected());
    }
    match sql::parse(sql) {
        Parsed::Empty => whole(Analysis::empty()),
        Parsed::Rejected(_) => whole(Analysis::rejected()),
        Parsed::Statements(list) => list
            .into_iter()
            .map(|(range, raw)| StatementAnalysis {
                range,
                analysis: Arc::new(classify::analyze_stmt(raw.stmt.as_deref())),
            })
            .collect(),
    }
}

/// Whether `sql` is split and classified the same whatever a statement still running might
/// have done to the lexer settings (the server reports such a change only at its next
/// ReadyForQuery, after a pipelined message was already forwarded). Only a backslash reads
/// differently with standard_conforming_strings off, and only next to non-ASCII bytes can
/// another client encoding swallow one; without both the text is stable. With a backslash
/// the split and classes under `standard_conforming_strings = off` must match; with a
/// backslash and non-ASCII bytes nothing can be promised.
pub fn lexing_is_stable(sql: &str, analyses: &[StatementAnalysis]) -> bool {
    if !sql.as_bytes().contains(&b'\\') {
        return true;
    }
    if !sql.is_ascii() {
        return false;
    }
    sql::with_tree_stack(sql, || {
        reads_the_same_without_standard_strings(sql, analyses)
    })
    .unwrap_or(false)
}

fn reads_the_same_without_standard_strings(sql: &str, analyses: &[StatementAnalysis]) -> bool {
    let other = sql::parse_with(
        sql,
        pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS,
    );
    let Parsed::Statements(list) = other else {
        // Rejected either way is stable only if it was rejected here too.
        return analyses.len() == 1 && analyses[0].analysis.class == Class::Unknown;
    };
    list.len() == analyses.len()
        && list.iter().zip(analyses).all(|((range, raw), seen)| {
            *range == seen.range && classify::analyze_stmt(raw.stmt.as_deref()) == *seen.analysis
        })
}

/// The refusal of a pipelined statement whose reading is not [`lexing_is_stable`].
pub fn lexer_uncertain() -> Refusal {
    Refusal {
        rule: "lexer_uncertain",
        message: "lockbox: this statement could be read differently if the statement before it changed a lexer setting; send it after that one's results (rule lexer_uncertain)".into(),
    }
}

/// Analyses one statement's text (a Parse message carries one): several statements where
/// one is expected can only fail at the server, so they are unknown.
pub fn analyze(statement: &str) -> Analysis {
    let mut all = analyze_query(statement);
    match all.len() {
        1 => Arc::unwrap_or_clone(all.remove(0).analysis),
        _ => Analysis::rejected(),
    }
}

/// [`analyze`] through the cache.
pub fn analyze_cached(statement: &str) -> Arc<Analysis> {
    let all = analyze_query_cached(statement);
    match &all[..] {
        [one] => one.analysis.clone(),
        _ => Arc::new(Analysis::rejected()),
    }
}

/// Whether `access` may run `statement` (one statement's text).
pub fn check(access: AccessLevel, statement: &str) -> Result<(), Refusal> {
    check_class(access, analyze_cached(statement).class)
}

pub fn classify(statement: &str) -> Class {
    analyze(statement).class
}
