//! The routes an outside review found while lockbox read SQL with an approximation of
//! PostgreSQL's grammar, each tried against a real server: statements hidden from the audit,
//! read grants that write, guardrails bypassed, the audit naming the wrong statement, and
//! ordinary read-only work refused.

use lockbox::policy::AccessLevel;
use serde_json::Value;

use crate::harness::{db_error, Env, Options};
use crate::relay::{bind_execute_sync, parse};

/// The items table as the harness creates it: any change shows.
fn items_are_untouched(env: &Env) {
    let expected: Vec<String> = (1..=10).map(|i| format!("item {i}")).collect();
    assert_eq!(
        env.superuser_sql("SELECT count(*) || ':' || string_agg(name, ',' ORDER BY id) FROM items"),
        format!("10:{}", expected.join(","))
    );
    assert_eq!(
        env.superuser_sql("SELECT count(*) FROM pg_largeobject_metadata"),
        "0",
        "no large object was created"
    );
}

/// Statement records of the session, by text.
fn recorded_statements(env: &Env, request: &str) -> Vec<String> {
    env.audit_of("statement", request)
        .iter()
        .filter_map(|r| r["statement"].as_str().map(str::to_owned))
        .collect()
}

/// Each refused under read by the proxy (not the database: the message names lockbox's
/// rule), nothing changed.
const READ_ROUTES: &[(&str, &str)] = &[
    // Spellings of set_config and of transaction modes.
    (
        "SELECT \"set_config\"('default_transaction_read_only', 'off', false)",
        "escaping_function",
    ),
    (
        "SELECT pg_catalog.set_config(E'transaction\\x5fread_only', 'off', true)",
        "escaping_function",
    ),
    (
        "SELECT set_config(setting_name => 'default_transaction_read_only', new_value => 'off', is_local => false)",
        "escaping_function",
    ),
    (
        "SELECT set_config(U&'default\\005ftransaction_read_only', 'off', false)",
        "escaping_function",
    ),
    (
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE",
        "read_write_transaction",
    ),
    ("SET TRANSACTION READ WRITE", "read_write_transaction"),
    ("SET LOCAL transaction_read_only TO 0", "read_only_setting"),
    // EXPLAIN (ANALYZE) of a write runs the write.
    ("EXPLAIN (ANALYZE) DELETE FROM items", "read_only"),
    ("EXPLAIN (ANALYZE, FORMAT JSON) UPDATE items SET name = 'x'", "read_only"),
    (
        "EXPLAIN ANALYZE WITH d AS (DELETE FROM items RETURNING 1) SELECT * FROM d",
        "read_only",
    ),
    // Writable CTEs, SQL PREPARE, COPY of a query.
    (
        "WITH d AS (DELETE FROM items RETURNING *) SELECT count(*) FROM d",
        "read_only",
    ),
    ("PREPARE sneaky AS DELETE FROM items", "read_only"),
    ("COPY (DELETE FROM items RETURNING *) TO STDOUT", "read_only"),
    // Side-effecting built-ins through quoted or Unicode-escaped identifiers.
    ("SELECT \"lo_create\"(0)", "read_only"),
    ("SELECT U&\"lo\\005fcreate\"(0)", "read_only"),
    ("SELECT lo_from_bytea(0, 'written')", "read_only"),
    ("SELECT pg_catalog.lo_open(lo_create(0), 131072)", "read_only"),
    ("SELECT \"pg_advisory_lock\"(42)", "read_only"),
    // Cursors that outlive their transaction.
    ("DECLARE held CURSOR WITH HOLD FOR SELECT 1", "cursor_with_hold"),
    // A statement after one the grant allows, in one string.
    ("SELECT 1; /* */ DELETE FROM items", "read_only"),
];

#[tokio::test(flavor = "multi_thread")]
async fn the_reviews_routes_to_write_under_read_are_refused() {
    let env = Env::start("grammar_read").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    for (sql, rule) in READ_ROUTES {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(
            message.starts_with("lockbox:") && message.contains(rule),
            "{sql}: {message}"
        );
        let _ = client.batch_execute("ROLLBACK").await;
    }
    items_are_untouched(&env);
    let recorded = recorded_statements(&env, &id);
    for (sql, _) in READ_ROUTES.iter().filter(|(sql, _)| !sql.contains(';')) {
        assert!(recorded.iter().any(|r| r == sql), "not recorded: {sql}");
    }
}

/// Ordinary read-only work, each allowed under read and recorded.
const READ_WORK: &[&str] = &[
    "TABLE items",
    "SELECT * FROM ROWS FROM (generate_series(1, 3), generate_series(1, 2)) AS x(a, b)",
    "SELECT name FROM items GROUP BY DISTINCT name ORDER BY 1 LIMIT 1",
    "SELECT 2 BETWEEN SYMMETRIC 3 AND 1",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SEARCH DEPTH FIRST BY n SET o SELECT n FROM r",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n FROM r) CYCLE n SET c USING p SELECT n FROM r",
    "SELECT xmlelement(name item, xmlattributes(id AS id), name) FROM items WHERE id = 1",
    "SELECT xmlforest(id, name) FROM items WHERE id = 2",
    "SELECT concat_ws(',', VARIADIC ARRAY['a', 'b'])",
    "SELECT U&'d!0061t!+000061' UESCAPE '!'",
    "SELECT ' into ', 'select a into b' FROM items WHERE id = 1",
    "SELECT query_to_xml('SELECT * FROM items WHERE id = 1', true, false, '')",
    "SET client_encoding = 'UTF8'",
    "SET NAMES 'UTF8'",
    "RESET client_encoding",
    "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
    "DECLARE c CURSOR FOR SELECT * FROM items ORDER BY id",
    "FETCH 2 FROM c",
    "MOVE FORWARD 3 IN c",
    "FETCH NEXT FROM c",
    "CLOSE c",
    "ABORT",
    "START TRANSACTION READ ONLY, DEFERRABLE",
    "COMMIT",
    "PREPARE reader(int) AS SELECT name FROM items WHERE id = $1",
    "EXECUTE reader(3)",
    "EXPLAIN ANALYZE EXECUTE reader(4)",
    "DEALLOCATE reader",
    "DISCARD ALL",
    "LISTEN lockbox_channel",
    "UNLISTEN *",
];

#[tokio::test(flavor = "multi_thread")]
async fn ordinary_read_only_work_runs_under_read_and_is_recorded() {
    let env = Env::start("grammar_read_work").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    for sql in READ_WORK {
        if let Err(e) = client.simple_query(sql).await {
            panic!("{sql}: {:?}", db_error(&e));
        }
    }
    // Empty and comment-only query strings reach the server too; each gets a record.
    client.simple_query("").await.expect("empty");
    client
        .simple_query("-- nothing but a comment")
        .await
        .expect("comment");
    let recorded = recorded_statements(&env, &id);
    for sql in READ_WORK {
        assert!(recorded.iter().any(|r| r == sql), "not recorded: {sql}");
    }
    let records = env.audit_of("statement", &id);
    let empties: Vec<&Value> = records.iter().filter(|r| r["kind"] == "empty").collect();
    assert_eq!(empties.len(), 2, "{empties:?}");
    assert!(empties
        .iter()
        .any(|r| r["statement"] == "-- nothing but a comment"));
    items_are_untouched(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_names_the_statement_sql_put_under_a_protocol_name() {
    let env = Env::start("grammar_names").await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let mut raw = crate::harness::Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let sync = crate::harness::message(b'S', b"");
    // A protocol-level prepared statement…
    raw.send(&[parse("s1", "SELECT id FROM items WHERE id = 1"), sync].concat())
        .await;
    raw.read_until_ready().await;
    // …replaced under the same name by SQL, then executed by the protocol.
    let replaced = "PREPARE s1 AS DELETE FROM items WHERE id = 2 RETURNING id";
    raw.send(&crate::harness::query(&format!(
        "DEALLOCATE s1; {replaced}"
    )))
    .await;
    raw.read_until_ready().await;
    raw.send(&bind_execute_sync("s1")).await;
    raw.read_until_ready().await;
    assert_eq!(
        env.superuser_sql("SELECT count(*) FROM items WHERE id = 2"),
        "0",
        "the server ran the SQL-prepared statement"
    );
    let records = env
        .wait_for_audit("the execution's record", |records| {
            records
                .iter()
                .filter(|r| r["type"] == "statement" && r["protocol"] == "extended")
                .count()
                >= 1
        })
        .await;
    let last = records
        .iter()
        .filter(|r| r["type"] == "statement" && r["request_id"] == id.as_str())
        .rev()
        .find(|r| r["protocol"] == "extended")
        .expect("an extended record");
    assert_eq!(last["statement"], replaced, "{last}");
    assert_eq!(last["kind"], "delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn guardrails_see_through_explain_ctes_prepare_and_copy() {
    let env = Env::with(
        "grammar_rules",
        Options {
            guardrails: "deny_delete_without_where = true\noff_limits = [\"secrets\"]",
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    for (sql, rule) in [
        ("EXPLAIN ANALYZE DELETE FROM items", "delete_without_where"),
        (
            "WITH d AS (DELETE FROM items RETURNING 1) SELECT count(*) FROM d",
            "delete_without_where",
        ),
        ("PREPARE wipe AS DELETE FROM items", "delete_without_where"),
        ("COPY secrets TO STDOUT", "off_limits"),
        ("COPY (SELECT * FROM secrets) TO STDOUT", "off_limits"),
        (
            "SELECT table_to_xml('secrets', true, false, '')",
            "off_limits",
        ),
        (
            "SELECT query_to_xml('SELECT * FROM secrets', true, false, '')",
            "off_limits",
        ),
        ("SELECT rename_all()", "opaque_statement"),
        ("DO $$ BEGIN DELETE FROM items; END $$", "do_block"),
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains(rule), "{sql}: {message}");
    }
    items_are_untouched(&env);
    // What the rules allow still runs.
    client
        .batch_execute("DELETE FROM items WHERE id = 10")
        .await
        .expect("delete with where");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_objects_can_be_read_through_libpq_under_read_but_not_written() {
    let env = Env::start("grammar_lo").await;
    let oid = env.superuser_sql("SELECT lo_from_bytea(0, 'large object contents')");
    env.superuser_sql(&format!(
        "GRANT SELECT ON LARGE OBJECT {oid} TO lockbox_read"
    ));
    let (id, token) = env.approved_token("eve", "1h").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("lo.bin");
    // psql's \lo_export reads through libpq's large-object API: FunctionCall messages.
    let psql = |command: String| {
        std::process::Command::new(env.pg.bin_dir().join("psql"))
            .env("PGPASSWORD", &token)
            .env("PGSSLMODE", "require")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &env.proxy_port().to_string(),
                "-U",
                "eve",
                "-d",
                &env.db,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &command,
            ])
            .output()
            .expect("run psql")
    };
    let read = psql(format!("\\lo_export {oid} '{}'", out.display()));
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(
        std::fs::read(&out).expect("exported"),
        b"large object contents"
    );
    // \lo_import writes one: refused.
    let write = psql(format!("\\lo_import '{}'", out.display()));
    assert!(
        !write.status.success(),
        "a read grant imported a large object"
    );
    assert_eq!(
        env.superuser_sql("SELECT count(*) FROM pg_largeobject_metadata"),
        "1"
    );
    let calls: Vec<String> = recorded_statements(&env, &id)
        .into_iter()
        .filter(|s| s.starts_with("-- FunctionCall"))
        .collect();
    assert!(
        calls.iter().any(|c| c.contains("lo_open")) && calls.iter().any(|c| c.contains("loread")),
        "{calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_dump_works_under_a_grant_with_a_statement_timeout_and_a_row_limit() {
    let env = Env::start("grammar_dump_limits").await;
    let (_, token) = env
        .approved(
            "eve",
            lockbox::policy::NewRequest {
                database: env.db.clone(),
                ticket: "T-77".into(),
                reason: "dump the schema".into(),
                access: AccessLevel::Read,
                duration: Some("1h".into()),
                statement_timeout: Some("20s".into()),
                max_rows: Some(5),
                ..Default::default()
            },
        )
        .await;
    // pg_dump sets statement_timeout = 0 and reads hundreds of catalog rows; a full dump
    // also COPYs the table's 10 rows, which the row limit counts.
    let dump = |schema_only: bool| {
        let mut command =
            std::process::Command::new(crate::harness::cluster().bin_dir().join("pg_dump"));
        if schema_only {
            command.arg("--schema-only");
        }
        command
            .args(["-t", "items", "-h", "127.0.0.1", "-p"])
            .arg(env.proxy_port().to_string())
            .args(["-U", "eve"])
            .arg(&env.db)
            .env("PGPASSWORD", &token)
            .output()
            .expect("run pg_dump")
    };
    let schema = dump(true);
    assert!(
        schema.status.success(),
        "pg_dump --schema-only failed: {}",
        String::from_utf8_lossy(&schema.stderr)
    );
    assert!(String::from_utf8_lossy(&schema.stdout).contains("CREATE TABLE public.items"));
    let data = dump(false);
    assert!(
        !data.status.success(),
        "a COPY of 10 rows passed a limit of 5"
    );
    assert!(
        String::from_utf8_lossy(&data.stderr).contains("max_rows"),
        "{}",
        String::from_utf8_lossy(&data.stderr)
    );
}
