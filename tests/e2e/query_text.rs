//! SQL the server runs from text (`ts_stat('…')`, `query_to_xml('…')`) against a real
//! server, under a read grant on a database with off-limits rules: the ways an attack
//! review read an off-limits table, left read-only mode and put an off-limits schema on
//! the search path are refused, and the server shows nothing changed.

use lockbox::policy::AccessLevel;

use crate::harness::{errors_in, query, Env, Options, Raw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_run_from_text_are_held_to_the_grant_and_the_rules() {
    let env = Env::with(
        "query_text",
        Options {
            guardrails: "off_limits = [\"secret\", \"hr.*\"]",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(
        "CREATE TABLE secret (ssn text); INSERT INTO secret VALUES ('078-05-1120'); \
         GRANT SELECT ON secret TO PUBLIC; CREATE SCHEMA hr; GRANT USAGE ON SCHEMA hr TO PUBLIC; \
         CREATE TABLE hr.payroll (pay int); GRANT SELECT ON hr.payroll TO PUBLIC",
    );
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    for sql in [
        "SELECT ('select to_tsvector(ssn) from secret'::text).ts_stat",
        "SELECT t.ts_stat FROM reverse(')terces morf nss(rotcevst_ot tceles') t",
        "SELECT ('select to_tsvector(set_config(''default_transaction_read_only'', ''off'', false))'::text).ts_stat",
        "SELECT query_to_xml('select set_config(''search_path'', ''hr'', false)', true, false, '')",
        "SELECT query_to_xml('select schema_to_xml(''hr'', true, false, '''')', true, false, '')",
    ] {
        raw.send(&query(sql)).await;
        let answer = raw.read_until_ready().await;
        let codes: Vec<String> = errors_in(&answer).into_iter().map(|(c, _)| c).collect();
        assert_eq!(codes, ["42501"], "{sql}");
        assert!(!String::from_utf8_lossy(&answer).contains("078-05-1120"), "{sql}");
    }
    raw.send(&query("SHOW search_path")).await;
    let path = raw.read_until_ready().await;
    assert!(!String::from_utf8_lossy(&path).contains("hr"));
    raw.send(&query("SHOW default_transaction_read_only")).await;
    let read_only = raw.read_until_ready().await;
    assert!(String::from_utf8_lossy(&read_only).contains("on"));
    // Within the grant and the rules, a query from text still runs.
    raw.send(&query(
        "SELECT * FROM ts_stat('select to_tsvector(name) from items')",
    ))
    .await;
    let ran = raw.read_until_ready().await;
    assert!(errors_in(&ran).is_empty(), "{:?}", errors_in(&ran));
    assert!(crate::harness::rows_in(&ran) > 0);
}

/// pg_dump's `SELECT set_config(name, …) FROM pg_settings WHERE name = '<setting>'` is
/// classed by its literal only while `pg_settings` is the catalog's view. An attack review
/// shadowed it with a CTE whose `char` column ignores trailing blanks in `=`, and put an
/// off-limits schema on the search path under a read grant; a temporary relation or a
/// schema searched first shadows it too. pg_dump's own statement still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_named_by_a_shadowed_pg_settings_row_is_refused() {
    let env = Env::with(
        "query_text_pg_settings",
        Options {
            guardrails: "off_limits = [\"hr.*\"]",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(
        "CREATE SCHEMA hr; GRANT USAGE ON SCHEMA hr TO PUBLIC; \
         CREATE TABLE hr.payroll (pay int); INSERT INTO hr.payroll VALUES (99999); \
         GRANT SELECT ON hr.payroll TO PUBLIC; \
         CREATE VIEW settings_view AS SELECT name, setting FROM pg_catalog.pg_settings; \
         GRANT ALL ON settings_view TO PUBLIC",
    );
    let pg_dumps = "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings \
                    WHERE name = 'restrict_nonsystem_relation_kind'";
    let refused = |raw_answer: &[u8], sql: &str| {
        let codes: Vec<String> = errors_in(raw_answer).into_iter().map(|(c, _)| c).collect();
        assert_eq!(codes, ["42501"], "{sql}");
    };
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let shadowed_by_a_cte = "WITH pg_settings AS (SELECT 'search_path'::char(20) AS name) \
         SELECT set_config(name, 'hr', false) FROM pg_settings WHERE name = 'search_path  '";
    raw.send(&query(shadowed_by_a_cte)).await;
    refused(&raw.read_until_ready().await, shadowed_by_a_cte);
    // Prepared, it could run after the session shadowed the catalog.
    raw.send(
        &[
            crate::frontend::parse("", pg_dumps),
            crate::frontend::bind("", ""),
            crate::frontend::execute(""),
            crate::frontend::sync(),
        ]
        .concat(),
    )
    .await;
    refused(&raw.read_until_ready().await, "a Parse of pg_dump's form");
    raw.send(&query(pg_dumps)).await;
    let ran = raw.read_until_ready().await;
    assert!(errors_in(&ran).is_empty(), "{:?}", errors_in(&ran));
    raw.send(&query("SELECT * FROM payroll")).await;
    let answer = raw.read_until_ready().await;
    assert!(!String::from_utf8_lossy(&answer).contains("99999"));
    // A schema searched before pg_catalog, set in the same string.
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let after_a_path = format!("SET search_path = public, pg_catalog; {pg_dumps}");
    raw.send(&query(&after_a_path)).await;
    refused(&raw.read_until_ready().await, &after_a_path);
    raw.send(&query("SHOW search_path")).await;
    let path = raw.read_until_ready().await;
    assert!(!String::from_utf8_lossy(&path).contains("hr"));
    // A temporary relation, in an earlier string (a write grant may make one).
    let (_id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&query("CREATE TEMP TABLE pg_settings (name text)"))
        .await;
    let made = raw.read_until_ready().await;
    assert!(errors_in(&made).is_empty(), "{:?}", errors_in(&made));
    raw.send(&query(pg_dumps)).await;
    refused(
        &raw.read_until_ready().await,
        "after CREATE TEMP TABLE pg_settings",
    );
    // …nor run from text (a third review wrapped it in query_to_xml).
    let wrapped = format!(
        "SELECT query_to_xml('{}', false, false, '')",
        pg_dumps.replace('\'', "''")
    );
    raw.send(&query(&wrapped)).await;
    refused(&raw.read_until_ready().await, &wrapped);
    // A view over pg_settings is written through its rule's set_config: one made in the
    // session, and one the database has.
    for sql in [
        "CREATE TEMP VIEW myset AS SELECT name, setting FROM pg_catalog.pg_settings",
        "UPDATE settings_view SET setting = 'public, hr' WHERE name = 'search_path'",
    ] {
        raw.send(&query(sql)).await;
        refused(&raw.read_until_ready().await, sql);
    }
    raw.send(&query("SHOW search_path")).await;
    let path = raw.read_until_ready().await;
    assert!(!String::from_utf8_lossy(&path).contains("hr"));
    // Nested in CREATE SCHEMA too (a fourth review, as admin).
    let (_id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let nested = "CREATE SCHEMA s5 CREATE VIEW w AS SELECT name, setting FROM pg_settings";
    raw.send(&query(nested)).await;
    let answer = raw.read_until_ready().await;
    let errors = errors_in(&answer);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].1.contains("lexer_setting"), "{}", errors[0].1);
    let made = env.superuser_sql("SELECT count(*) FROM pg_namespace WHERE nspname = 's5'");
    assert_eq!(made.trim(), "0");
}

/// A login whose search path (the database's default) finds a relation named `pg_settings`
/// before the catalog: a read grant's pg_dump form is refused from the start (a third review
/// read an off-limits schema through a view there whose `name` changed between rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_search_path_that_shadows_pg_settings_is_known_from_the_start() {
    let env = Env::with(
        "query_text_login_shadow",
        Options {
            guardrails: "off_limits = [\"hr.*\"]",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(&format!(
        "CREATE SCHEMA hr; CREATE SCHEMA shadow; GRANT USAGE ON SCHEMA shadow TO PUBLIC; \
         CREATE VIEW shadow.pg_settings AS SELECT 'x.f'::text AS name; \
         GRANT SELECT ON shadow.pg_settings TO PUBLIC; \
         ALTER DATABASE {} SET search_path = shadow, pg_catalog",
        env.db
    ));
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&query(
        "SELECT set_config(name, 'public, hr', false) FROM pg_settings WHERE name = 'x.f'",
    ))
    .await;
    let answer = raw.read_until_ready().await;
    let codes: Vec<String> = errors_in(&answer).into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes, ["42501"]);
}
