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
