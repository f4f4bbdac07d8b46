//! `deny_drop` through the proxy: drops under ALTER (a column, a constraint, a domain's
//! check) are refused like DROP itself, and the server still has what they would drop.

use lockbox::policy::AccessLevel;

use crate::harness::{db_error, Env, Options};

#[tokio::test(flavor = "multi_thread")]
async fn drops_under_alter_are_refused_by_deny_drop() {
    let env = Env::with(
        "deny_drop_alter",
        Options {
            guardrails: "deny_drop = true",
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    for sql in [
        "ALTER TABLE items DROP COLUMN name",
        "ALTER TABLE items ADD COLUMN note text, DROP COLUMN name",
        "ALTER TABLE items ALTER COLUMN id DROP NOT NULL",
        "ALTER TABLE items DROP CONSTRAINT IF EXISTS items_pkey",
        "ALTER DOMAIN positive_int DROP CONSTRAINT positive",
    ] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&error);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("deny_drop"), "{sql}: {message}");
    }
    let columns = env.superuser_sql(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' AND column_name IN ('name', 'note')",
    );
    assert_eq!(columns.trim(), "1", "only name, untouched");
    // Not a drop: nothing is lost, so the rule lets it through.
    client
        .batch_execute("ALTER TABLE items ALTER COLUMN name DROP DEFAULT")
        .await
        .expect("DROP DEFAULT is no drop");
}

/// A DROP names its tables as lists of names, not as the relations a query reads: an
/// off-limits table could be dropped by a grant that could not read it.
#[tokio::test(flavor = "multi_thread")]
async fn dropping_an_off_limits_table_is_refused() {
    let env = Env::with(
        "off_limits_drop",
        Options {
            guardrails: "off_limits = [\"secrets\"]",
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    for sql in [
        "DROP TABLE secrets",
        "DROP TABLE IF EXISTS items, public.secrets",
        "DROP TRIGGER IF EXISTS audit_it ON secrets",
        "DROP SCHEMA public CASCADE",
        "DROP OWNED BY CURRENT_USER",
    ] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&error);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("off_limits"), "{sql}: {message}");
    }
    let left =
        env.superuser_sql("SELECT count(*) FROM pg_tables WHERE tablename IN ('items', 'secrets')");
    assert_eq!(left.trim(), "2", "both still there");
}

/// What loses data or a check without saying DROP (an attack review emptied a column with a
/// type change and deleted a large object under `deny_drop`): refused, and the server still
/// has the values, the triggers' state and the large object.
#[tokio::test(flavor = "multi_thread")]
async fn losses_without_the_word_drop_are_refused() {
    let env = Env::with(
        "deny_drop_losses",
        Options {
            guardrails: "deny_drop = true\ndeny_truncate = true",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql("SELECT lo_from_bytea(424242, 'kept')");
    env.superuser_sql(
        "CREATE TABLE w (id int, v int); ALTER TABLE w ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY wp ON w AS RESTRICTIVE USING (v < 10) WITH CHECK (v < 10); \
         CREATE POLICY everyone ON w USING (true); \
         CREATE VIEW wv AS SELECT * FROM w WHERE v < 10 WITH CHECK OPTION",
    );
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    let names_before = env.superuser_sql("SELECT string_agg(name, ',' ORDER BY id) FROM items");
    for (sql, rule) in [
        (
            "ALTER TABLE items ALTER COLUMN name TYPE text USING ''",
            "deny_drop",
        ),
        ("ALTER TABLE items DISABLE TRIGGER USER", "deny_drop"),
        ("ALTER TABLE items SET UNLOGGED", "deny_drop"),
        ("SELECT lo_unlink(424242)", "deny_drop"),
        (
            "SELECT lo_truncate(lo_open(424242, 131072), 0)",
            "deny_truncate",
        ),
        ("ALTER POLICY wp ON w WITH CHECK (true)", "deny_drop"),
        ("CREATE POLICY wide ON w USING (true)", "deny_drop"),
        ("ALTER VIEW wv RESET (check_option)", "deny_drop"),
        (
            "CREATE OR REPLACE VIEW wv AS SELECT * FROM w WHERE v < 10",
            "deny_drop",
        ),
    ] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        let (code, message) = db_error(&error);
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains(rule), "{sql}: {message}");
    }
    assert_eq!(
        env.superuser_sql("SELECT string_agg(name, ',' ORDER BY id) FROM items"),
        names_before,
        "the column's values are untouched"
    );
    assert_eq!(
        env.superuser_sql("SELECT relpersistence FROM pg_class WHERE relname = 'items'")
            .trim(),
        "p"
    );
    assert_eq!(
        env.superuser_sql("SELECT convert_from(lo_get(424242), 'UTF8')")
            .trim(),
        "kept"
    );
    assert_eq!(
        env.superuser_sql(
            "SELECT with_check || ' ' || (SELECT count(*) FROM pg_policies WHERE tablename = 'w') \
             FROM pg_policies WHERE policyname = 'wp'"
        )
        .trim(),
        "(v < 10) 2",
        "the policy's check is as it was, and no policy was added"
    );
    assert_eq!(
        env.superuser_sql(
            "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = 'wv'"
        )
        .trim(),
        "check_option=cascaded"
    );
    // Changes that lose nothing still run.
    client
        .batch_execute("ALTER TABLE items ENABLE TRIGGER USER")
        .await
        .expect("enabling triggers loses nothing");
}
