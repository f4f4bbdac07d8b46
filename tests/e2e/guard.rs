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
