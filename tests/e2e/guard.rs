//! Enforcing the grant: a read grant cannot change anything by any route, a write grant
//! cannot escalate, and the database enforces the level too.

use lockbox::policy::AccessLevel;

use crate::harness::{db_error, errors_in, message, Env, Raw};

/// Every route a read session might try to change data or widen its rights.
const READ_REFUSALS: &[(&str, &str)] = &[
    ("INSERT INTO items VALUES (99, 'x')", "read_only"),
    ("UPDATE items SET name = 'x'", "read_only"),
    ("DELETE FROM items", "read_only"),
    ("TRUNCATE items", "read_only"),
    ("DROP TABLE items", "read_only"),
    ("CREATE TABLE sneaky (a int)", "read_only"),
    ("ALTER TABLE items ADD COLUMN b int", "read_only"),
    ("COPY items FROM STDIN", "read_only"),
    ("SELECT * INTO copied FROM items", "read_only"),
    ("SET ROLE postgres", "role_change"),
    ("SET SESSION AUTHORIZATION postgres", "role_change"),
    ("RESET ROLE", "role_change"),
    (
        "SET default_transaction_read_only = off",
        "read_only_setting",
    ),
    (
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "read_write_transaction",
    ),
    ("BEGIN READ WRITE", "read_write_transaction"),
    ("ALTER SYSTEM SET work_mem = '1GB'", "alter_system"),
    ("COPY items TO PROGRAM 'cat > /tmp/x'", "copy_program"),
    ("COPY items FROM '/etc/passwd'", "copy_file"),
    ("CREATE EXTENSION dblink", "create_extension"),
    ("LOAD 'auto_explain'", "load"),
    (
        "DO $$ BEGIN UPDATE items SET name = 'x'; END $$",
        "do_block",
    ),
    (
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "escaping_function",
    ),
    ("SELECT pg_read_file('/etc/passwd')", "escaping_function"),
    ("SELECT lo_import('/etc/passwd')", "escaping_function"),
    ("SELECT 1; DELETE FROM items", "read_only"),
    ("this is not sql", "unparsable"),
];

fn table_is_untouched(env: &Env) {
    assert_eq!(
        env.superuser_sql("SELECT count(*) || ':' || string_agg(name, ',' ORDER BY id) FROM items"),
        format!(
            "10:{}",
            (1..=10)
                .map(|i| format!("item {i}"))
                .collect::<Vec<_>>()
                .join(",")
        )
    );
    assert_eq!(
        env.superuser_sql("SELECT count(*) FROM pg_class WHERE relname IN ('sneaky', 'copied')"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_grant_cannot_change_anything() {
    let env = Env::start("guard_read").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    for (sql, rule) in READ_REFUSALS {
        // Simple protocol.
        let err = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains(rule), "{sql}: {message}");
        // Extended protocol: refused at Parse.
        if !sql.contains(';') {
            let err = client.prepare(sql).await.expect_err(sql);
            assert_eq!(db_error(&err).0, "42501", "prepare {sql}");
        }
    }
    // The session is still usable, and reads work.
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(n, 10);
    table_is_untouched(&env);

    let refusals: Vec<_> = env
        .audit_of("outcome", &id)
        .into_iter()
        .filter(|o| o["status"] == "refused")
        .collect();
    assert!(
        refusals.len() >= READ_REFUSALS.len(),
        "each refusal is audited: {}",
        refusals.len()
    );
    assert!(refusals
        .iter()
        .all(|o| o["sqlstate"] == "42501" && o["rule"].is_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_enforces_a_read_grant_too() {
    let env = Env::start("guard_read_db").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let row = client
        .query_one(
            "SELECT current_user::text, current_setting('default_transaction_read_only')",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(
        (
            row.get::<_, String>(0).as_str(),
            row.get::<_, String>(1).as_str()
        ),
        ("lockbox_read", "on")
    );
    // A function that writes looks like a read to any SQL parser; the database stops it.
    let err = client
        .batch_execute("SELECT rename_all()")
        .await
        .expect_err("read-only transaction");
    assert!(
        ["25006", "42501"].contains(&db_error(&err).0.as_str()),
        "{err:?}"
    );
    table_is_untouched(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn function_call_messages_are_refused_below_admin() {
    let env = Env::start("guard_fcall").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    // FunctionCall of lo_import (oid 764) with one text argument.
    let mut body = 764u32.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 11]);
    body.extend_from_slice(b"/etc/passwd");
    body.extend_from_slice(&[0, 0]);
    raw.send(&message(b'F', &body)).await;
    let reply = raw.read_until_ready_after_error().await;
    let errors = errors_in(&reply);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "42501");
    assert!(errors[0].1.contains("function_call"), "{}", errors[0].1);
}

/// A FunctionCall message names its function by OID, out of the statement rules' sight: an
/// attack review called `query_to_xml` so under an admin grant and read an off-limits
/// table, and `set_config` to put a protected schema on the search path. Where a database
/// has rules only the large-object functions libpq's API calls (known by OID) may run.
#[tokio::test(flavor = "multi_thread")]
async fn function_call_messages_are_bound_by_the_database_rules_even_for_admin() {
    let env = Env::with(
        "guard_fcall_rules",
        crate::harness::Options {
            guardrails: "off_limits = [\"secrets\"]",
            ..Default::default()
        },
    )
    .await;
    let oid = |signature: &str| -> u32 {
        env.superuser_sql(&format!("SELECT '{signature}'::regprocedure::oid"))
            .parse()
            .expect("an oid")
    };
    let query_to_xml = oid("query_to_xml(text, boolean, boolean, text)");
    let set_config = oid("set_config(text, text, boolean)");
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    for call in [
        crate::completeness::function_call(
            query_to_xml,
            &["select value from secrets", "true", "false", ""],
        ),
        crate::completeness::function_call(set_config, &["search_path", "hr", "false"]),
    ] {
        raw.send(&call).await;
        let reply = raw.read_until_ready_after_error().await;
        let errors = errors_in(&reply);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "42501");
        assert!(errors[0].1.contains("off_limits"), "{}", errors[0].1);
        assert!(
            !String::from_utf8_lossy(&reply).contains("launch codes"),
            "a protected row in the answer"
        );
    }
    // lo_create(0), libpq's large-object API, is judged as its SQL form and runs.
    raw.send(&crate::completeness::function_call(715, &["0"]))
        .await;
    let reply = raw.read_until_ready().await;
    assert_eq!(errors_in(&reply), vec![], "lo_create by FunctionCall");
    raw.send(&crate::harness::query("SHOW search_path")).await;
    let reply = String::from_utf8_lossy(&raw.read_until_ready().await).into_owned();
    assert!(!reply.contains("hr"), "the search path changed: {reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_grant_writes_but_cannot_escalate() {
    let env = Env::start("guard_write").await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .batch_execute("UPDATE items SET name = 'fixed' WHERE id = 1")
        .await
        .expect("write");
    client
        .execute("INSERT INTO items VALUES ($1, $2)", &[&11i32, &"eleven"])
        .await
        .expect("insert");
    assert_eq!(
        env.superuser_sql("SELECT name FROM items WHERE id = 1"),
        "fixed"
    );
    for (sql, rule) in [
        ("SET ROLE postgres", "role_change"),
        ("ALTER SYSTEM SET work_mem = '1GB'", "alter_system"),
        ("COPY items TO PROGRAM 'cat'", "copy_program"),
        (
            "SELECT set_config('role', 'postgres', false)",
            "escaping_function",
        ),
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{sql}");
        assert!(message.contains(rule), "{message}");
    }
    // DDL passes the proxy under write, and the database's role decides.
    let err = client
        .batch_execute("DROP TABLE items")
        .await
        .expect_err("role cannot drop");
    assert_eq!(db_error(&err).0, "42501");
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!(who, "lockbox_write");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_grant_can_do_what_its_role_can() {
    let env = Env::start("guard_admin").await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .batch_execute("DO $$ BEGIN UPDATE items SET name = 'by admin' WHERE id = 2; END $$")
        .await
        .expect("DO under admin");
    client
        .batch_execute("CREATE TABLE admin_made (a int)")
        .await
        .expect("ddl");
    assert_eq!(
        env.superuser_sql("SELECT name FROM items WHERE id = 2"),
        "by admin"
    );
    // The role still limits it: the service role is no superuser.
    let err = client
        .batch_execute("SET ROLE postgres")
        .await
        .expect_err("not a member");
    assert_eq!(db_error(&err).0, "42501");
}

#[tokio::test(flavor = "multi_thread")]
async fn database_rules_bind_every_level_and_are_audited() {
    let env = Env::with(
        "guard_rules",
        crate::harness::Options {
            guardrails:
                "deny_drop = true\ndeny_truncate = true\ndeny_delete_without_where = true\n\
                         deny_update_without_where = true\noff_limits = [\"secrets\"]",
            ..Default::default()
        },
    )
    .await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    for (sql, rule) in [
        ("DROP TABLE items", "deny_drop"),
        ("TRUNCATE items", "deny_truncate"),
        ("DELETE FROM items", "delete_without_where"),
        ("UPDATE items SET name = 'x'", "update_without_where"),
        ("SELECT * FROM secrets", "off_limits"),
        (
            "SELECT * FROM items WHERE id IN (SELECT id FROM public.secrets)",
            "off_limits",
        ),
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains(rule), "{sql}: {message}");
    }
    client
        .batch_execute("DELETE FROM items WHERE id = 10")
        .await
        .expect("a scoped delete is fine");
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "9");
    let rules: Vec<String> = env
        .audit_of("outcome", &id)
        .iter()
        .filter(|o| o["status"] == "refused")
        .filter_map(|o| o["rule"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        rules,
        [
            "deny_drop",
            "deny_truncate",
            "delete_without_where",
            "update_without_where",
            "off_limits",
            "off_limits"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_startup_message_is_a_protocol_violation() {
    let env = Env::start("guard_second_startup").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.send(&crate::harness::startup_packet(&[
        ("user", "postgres"),
        ("database", &env.db),
    ]))
    .await;
    let reply = raw.read_to_close().await;
    let errors = errors_in(&reply);
    assert_eq!(
        errors.last().map(|e| e.0.as_str()),
        Some("08P01"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_dump_schema_only_works_under_a_read_grant() {
    let env = Env::start("guard_pg_dump").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let pg_dump = crate::harness::cluster().bin_dir().join("pg_dump");
    let out = std::process::Command::new(pg_dump)
        .args([
            "--schema-only",
            "-t",
            "items",
            "-h",
            "127.0.0.1",
            "-p",
            &env.proxy_port().to_string(),
            "-U",
            "eve",
        ])
        .arg(&env.db)
        .env("PGPASSWORD", &token)
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("CREATE TABLE public.items"), "{dump}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_can_make_the_audit_split_statements_differently() {
    let env = Env::start("guard_lexer").await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, conn) = env.connect("eve", &token).await.expect("login");
    // Refused at every level, admin included.
    for sql in [
        "SET standard_conforming_strings = off",
        "SET client_encoding = 'SJIS'",
        "SET backslash_quote = on",
        "SELECT set_config('client_encoding', 'SJIS', false)",
        "SELECT set_config(lower('STANDARD_CONFORMING_STRINGS'), 'off', false)",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{sql}");
        assert!(message.contains("lexer_setting"), "{message}");
    }
    // Setting the pinned value again changes nothing and is allowed (psql's \encoding).
    client
        .batch_execute("SET client_encoding = 'UTF8'; RESET standard_conforming_strings")
        .await
        .expect("no-op settings");
    // A route the guard cannot see (a function's body is a string to it): the server
    // reports the change, and the session ends.
    client
        .batch_execute(
            "CREATE FUNCTION flip() RETURNS text LANGUAGE sql AS \
             $f$ SELECT set_config('standard_conforming_strings', 'off', false) $f$",
        )
        .await
        .expect("create function");
    let result = client.batch_execute("SELECT flip()").await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), conn)
        .await
        .expect("session ended")
        .expect("join");
    let message = crate::harness::fatal_error(result.err(), closed).1;
    assert!(
        message.contains("standard_conforming_strings"),
        "{message:?}"
    );
    assert!(
        client.batch_execute("SELECT 1").await.is_err(),
        "the session is gone"
    );

    // Client encodings whose multibyte characters can hide a quote are refused at login.
    let mut raw = crate::harness::Raw::connect(env.proxy_port()).await;
    raw.send(&crate::harness::startup_packet(&[
        ("user", "eve"),
        ("database", &env.db),
        ("client_encoding", "SJIS"),
    ]))
    .await;
    let reply = raw.read_to_close().await;
    let errors = errors_in(&reply);
    assert_eq!(
        errors.first().map(|e| e.0.as_str()),
        Some("0A000"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_grant_limits_hold() {
    let env = Env::start("guard_limits").await;
    let (id, token) = env
        .approved(
            "eve",
            lockbox::policy::NewRequest {
                database: env.db.clone(),
                ticket: "T-9".into(),
                reason: "bounded look".into(),
                access: AccessLevel::Read,
                duration: Some("1h".into()),
                statement_timeout: Some("300ms".into()),
                max_rows: Some(5),
                ..Default::default()
            },
        )
        .await;
    let shown = env.client("eve").show_request(&id).await.expect("show");
    assert_eq!(
        (shown.statement_timeout_ms, shown.max_rows),
        (Some(300), Some(5))
    );
    let (client, conn) = env.connect("eve", &token).await.expect("login");
    let err = client
        .batch_execute("SELECT pg_sleep(5)")
        .await
        .expect_err("timed out");
    assert_eq!(db_error(&err).0, "57014");
    // A client may set its own statement_timeout (pg_dump sets 0): the proxy still cancels
    // a statement that outlives the grant's.
    for sql in [
        "SET statement_timeout = 0",
        "SELECT set_config('statement_timeout', '0', false)",
    ] {
        client.batch_execute(sql).await.expect(sql);
        let err = client
            .batch_execute("SELECT pg_sleep(30)")
            .await
            .expect_err("cancelled by the proxy");
        assert_eq!(db_error(&err).0, "57014", "after {sql}");
    }
    // A setting whose name is computed could be the timeout: refused.
    let err = client
        .batch_execute("SELECT set_config(lower('STATEMENT_TIMEOUT'), '0', false)")
        .await
        .expect_err("computed name");
    assert_eq!(db_error(&err).0, "42501");
    let few = client
        .query("SELECT id FROM items WHERE id <= 5", &[])
        .await
        .expect("five rows");
    assert_eq!(few.len(), 5);
    let too_many = client.query("SELECT id FROM items", &[]).await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn)
        .await
        .expect("session ended")
        .expect("join");
    let message = crate::harness::fatal_error(too_many.err(), ended);
    assert_eq!(message.0, "54000", "{message:?}");
    assert!(message.1.contains("max_rows"), "{message:?}");
}

/// A whole schema off limits must not be on the search path a session starts with (its
/// role's or database's default, which the proxy never sees set): an attack review read
/// `hr.pay` as `pay` after `ALTER DATABASE … SET search_path = public, hr`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_default_search_path_opens_an_off_limits_schema_is_refused() {
    let env = Env::with(
        "guard_login_search_path",
        crate::harness::Options {
            guardrails: "off_limits = [\"hr.*\"]",
            ..crate::harness::Options::default()
        },
    )
    .await;
    env.superuser_sql(
        "CREATE SCHEMA hr; CREATE TABLE hr.pay (amount int); \
         GRANT USAGE ON SCHEMA hr TO lockbox_read; GRANT SELECT ON hr.pay TO lockbox_read",
    );
    env.superuser_sql(&format!(
        "ALTER DATABASE {} SET search_path = public, hr",
        env.db
    ));
    let (_id, token) = env.approved_token("eve", "1h").await;
    // Refused as it logs in; the FATAL may reach the client after its login did.
    let refused = match env.connect("eve", &token).await {
        Err(e) => e,
        Ok((client, _conn)) => client.simple_query("SELECT 1").await.expect_err("refused"),
    };
    let (code, message) = crate::harness::db_error(&refused);
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("off limits"), "{message}");
    // Without hr on it, another grant's session runs.
    env.superuser_sql(&format!("ALTER DATABASE {} RESET search_path", env.db));
    let (_id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client.simple_query("SELECT 1").await.expect("a clean path");
}

/// No level alters the login lockbox gives its session: any role may set its own password,
/// and one who knew it could log in to PostgreSQL directly, past the proxy and its record
/// (an attack review did, as a grant's own role). Refused as psql's `\password` sends it,
/// too, and the database still takes only lockbox's password for the role.
#[tokio::test(flavor = "multi_thread")]
async fn no_grant_sets_the_password_of_its_own_login() {
    let env = Env::provisioned("guard_own_login").await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let role = format!("lockbox_{id}");
    for sql in [
        "ALTER ROLE CURRENT_USER PASSWORD 'known-to-eve'".to_owned(),
        format!("ALTER USER \"{role}\" PASSWORD 'known-to-eve'"),
    ] {
        let err = client.batch_execute(&sql).await.expect_err(&sql);
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("own_login"), "{sql}: {message}");
    }
    let mut direct = tokio_postgres::Config::new();
    direct
        .host("127.0.0.1")
        .port(env.pg.port)
        .dbname(&env.db)
        .user(&role)
        .password("known-to-eve");
    let refused = direct
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("no direct login with a password of the engineer's");
    assert_eq!(db_error(&refused).0, "28P01", "{refused:?}");
}

/// What a write grant makes stays its own: handed to the level's role (which the grant's
/// role may act as, so the database allows it), a `SECURITY DEFINER` function would run
/// with the level's privileges for every later grant and the application, long after this
/// grant ended (an attack review).
#[tokio::test(flavor = "multi_thread")]
async fn a_write_grant_hands_nothing_it_made_to_another_role() {
    let env = Env::provisioned("guard_ownership").await;
    env.superuser_sql("GRANT CREATE ON SCHEMA public TO lockbox_write");
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .batch_execute(
            "CREATE FUNCTION public.mine() RETURNS text LANGUAGE sql SECURITY DEFINER \
             AS 'SELECT current_user::text'",
        )
        .await
        .expect("a write grant may create a function");
    for sql in [
        "ALTER FUNCTION public.mine() OWNER TO lockbox_write",
        "REASSIGN OWNED BY CURRENT_USER TO lockbox_write",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("ownership"), "{sql}: {message}");
    }
    assert_eq!(
        env.superuser_sql("SELECT public.mine()"),
        format!("lockbox_{id}"),
        "still the grant's own"
    );
}
