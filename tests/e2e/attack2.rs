//! Second attack round: each test asserts the secure behaviour, so a failing test is a
//! finding.

use lockbox::policy::AccessLevel;

use crate::harness::{db_error, Env, Options};

/// A lockbox whose database has `guardrails`, and a session of eve's under `access`.
async fn guarded_session(
    name: &str,
    guardrails: &'static str,
    access: AccessLevel,
) -> (
    Env,
    tokio_postgres::Client,
    tokio::task::JoinHandle<Option<tokio_postgres::Error>>,
) {
    let env = Env::with(
        name,
        Options {
            guardrails,
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env.approved_token_for("eve", "1h", access).await;
    let (client, conn) = env.connect("eve", &token).await.expect("connect");
    (env, client, conn)
}

async fn count_items(env: &Env) -> String {
    env.superuser_sql("SELECT count(*) FROM items WHERE name LIKE 'item %'")
        .trim()
        .to_owned()
}

/// MERGE … WHEN MATCHED THEN DELETE deletes every row with no WHERE anywhere: the
/// deny_delete_without_where rule must see it as a DELETE without WHERE.
#[tokio::test]
async fn merge_delete_without_where_is_refused() {
    let (env, client, _conn) = guarded_session(
        "a2_merge_delete",
        "deny_delete_without_where = true",
        AccessLevel::Write,
    )
    .await;
    let result = client
        .batch_execute(
            "MERGE INTO items USING items AS s ON items.id = s.id WHEN MATCHED THEN DELETE",
        )
        .await;
    let left = env.superuser_sql("SELECT count(*) FROM items");
    assert!(
        result.is_err(),
        "MERGE … THEN DELETE ran under deny_delete_without_where; items left: {left}"
    );
    assert_eq!(left.trim(), "10");
}

/// MERGE … WHEN MATCHED THEN UPDATE rewrites every row: an UPDATE without WHERE.
#[tokio::test]
async fn merge_update_without_where_is_refused() {
    let (env, client, _conn) = guarded_session(
        "a2_merge_update",
        "deny_update_without_where = true",
        AccessLevel::Write,
    )
    .await;
    let result = client
        .batch_execute(
            "MERGE INTO items USING items AS s ON items.id = s.id WHEN MATCHED THEN UPDATE SET name = 'wiped'",
        )
        .await;
    let untouched = count_items(&env).await;
    assert!(
        result.is_err(),
        "MERGE … THEN UPDATE ran under deny_update_without_where; untouched rows: {untouched}"
    );
    assert_eq!(untouched, "10");
}

/// INSERT … SELECT … ON CONFLICT DO UPDATE with no WHERE updates every conflicting row.
#[tokio::test]
async fn upsert_update_without_where_is_refused() {
    let (env, client, _conn) = guarded_session(
        "a2_upsert_update",
        "deny_update_without_where = true",
        AccessLevel::Write,
    )
    .await;
    let result = client
        .batch_execute(
            "INSERT INTO items SELECT id, 'wiped' FROM items ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        )
        .await;
    let untouched = count_items(&env).await;
    assert!(
        result.is_err(),
        "INSERT … ON CONFLICT DO UPDATE (no WHERE) ran under deny_update_without_where; untouched: {untouched}"
    );
    assert_eq!(untouched, "10");
}

/// Attribute notation `(i).wipe` calls wipe(i): a function that is not built in, whose
/// effect lockbox cannot see — it must be refused while guardrails are configured, as
/// `SELECT wipe(i)` is. (The column form `i.wipe` cannot be told from a column without the
/// table's definition; there the database's role is the bound.)
#[tokio::test]
async fn attribute_notation_user_function_is_opaque() {
    let env = Env::with(
        "a2_attr_user_fn",
        Options {
            guardrails: "deny_delete_without_where = true",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(
        "CREATE FUNCTION public.wipe(items) RETURNS int LANGUAGE sql AS 'DELETE FROM items RETURNING 1'",
    );
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    // The function-call form is refused …
    let direct = client
        .batch_execute("SELECT wipe(i) FROM items i LIMIT 1")
        .await;
    assert!(direct.is_err(), "wipe(i) ran");
    // … the attribute form must be too.
    let attribute = client
        .batch_execute("SELECT (i).wipe FROM items i LIMIT 1")
        .await;
    let left = env.superuser_sql("SELECT count(*) FROM items");
    assert!(
        attribute.is_err(),
        "(i).wipe (a non-built-in function in attribute notation) ran; items left: {left}"
    );
    assert_eq!(left.trim(), "10");
}

/// `x OPERATOR(public.===) ANY (subquery)`: the operator of a subquery comparison lives in
/// SubLink.oper_name, not in an A_Expr — a user-defined operator there is as opaque as any.
#[tokio::test]
async fn sublink_user_operator_is_opaque() {
    let env = Env::with(
        "a2_sublink_op",
        Options {
            guardrails: "deny_delete_without_where = true",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(
        "CREATE FUNCTION public.del_eq(int, int) RETURNS bool LANGUAGE sql AS 'DELETE FROM items; SELECT true';
         CREATE OPERATOR public.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = public.del_eq);",
    );
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    let plain = client
        .batch_execute("SELECT 1 OPERATOR(public.===) 1")
        .await;
    assert!(plain.is_err(), "a plain user operator ran");
    let sublink = client
        .batch_execute("SELECT 1 OPERATOR(public.===) ANY (SELECT 1)")
        .await;
    let left = env.superuser_sql("SELECT count(*) FROM items");
    assert!(
        sublink.is_err(),
        "a user operator in a subquery comparison ran; items left: {left}"
    );
    assert_eq!(left.trim(), "10");
}

/// A temporary table named `pg_…` is found first on the search path (pg_temp), but lockbox
/// takes an unqualified `pg_…` name for a system catalog and does not count its rows
/// against max_rows.
#[tokio::test]
async fn pg_named_temp_table_is_counted_against_max_rows() {
    let env = Env::start("a2_pg_temp_rows").await;
    let (_, token) = env
        .approved(
            "eve",
            lockbox::policy::NewRequest {
                database: env.db.clone(),
                ticket: "T-1".into(),
                reason: "investigate".into(),
                access: AccessLevel::Write,
                duration: Some("1h".into()),
                max_rows: Some(3),
                ..lockbox::policy::NewRequest::default()
            },
        )
        .await;
    // A made-up pg_ name, and the name of a real catalog the temporary table shadows; each
    // in a session of its own (the first over the limit ends its session).
    for name in ["pg_copy", "pg_class"] {
        let (client, _conn) = env.connect("eve", &token).await.expect("connect");
        client
            .batch_execute(&format!("CREATE TEMP TABLE {name} AS SELECT * FROM items"))
            .await
            .expect("create temp table");
        let rows = client.simple_query(&format!("SELECT * FROM {name}")).await;
        let got = rows
            .map(|m| {
                m.iter()
                    .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                    .count()
            })
            .unwrap_or(0);
        assert!(
            got <= 3,
            "read {got} customer rows through {name} under max_rows = 3"
        );
        assert!(
            rows_ended_session(&client).await,
            "{name}: the session goes on"
        );
    }
}

/// Whether the session is gone (the row limit ends it).
async fn rows_ended_session(client: &tokio_postgres::Client) -> bool {
    client.simple_query("SELECT 1").await.is_err()
}

/// pg_stats shows the values of an off-limits table (most_common_vals): a catalog view
/// that reads the table's data for anyone who may SELECT it.
#[tokio::test]
async fn off_limits_data_through_pg_stats_is_refused() {
    let env = Env::with(
        "a2_pg_stats",
        Options {
            guardrails: "off_limits = [\"secrets\"]",
            ..Options::default()
        },
    )
    .await;
    // The database's own read role may read secrets; off_limits is lockbox's fence.
    env.superuser_sql(
        "INSERT INTO secrets SELECT g, 'the launch codes' FROM generate_series(2, 50) g;
         GRANT SELECT ON secrets TO lockbox_read;
         ANALYZE secrets;",
    );
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    let direct = client.simple_query("SELECT value FROM secrets").await;
    assert!(direct.is_err(), "secrets readable directly");
    let leaked = client
        .simple_query(
            "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'secrets' AND attname = 'value'",
        )
        .await;
    let text = match &leaked {
        Ok(messages) => messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(","),
        Err(e) => format!("refused: {:?}", db_error(e)),
    };
    assert!(
        !text.contains("launch codes"),
        "off-limits data read through pg_stats: {text}"
    );
}

/// `off_limits = ["public.secrets"]` (the documented `schema.table` form) must cover the
/// same table named without its schema, which is how almost every query names it.
#[tokio::test]
async fn schema_qualified_off_limits_covers_unqualified_name() {
    let env = Env::with(
        "a2_qualified_off_limits",
        Options {
            guardrails: "off_limits = [\"public.secrets\"]",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql("GRANT SELECT ON secrets TO lockbox_read");
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    let qualified = client
        .simple_query("SELECT value FROM public.secrets")
        .await;
    assert!(qualified.is_err(), "public.secrets readable");
    let unqualified = client.simple_query("SELECT value FROM secrets").await;
    assert!(
        unqualified.is_err(),
        "off_limits public.secrets bypassed by writing just `secrets`"
    );
}

/// ALTER TABLE … DROP COLUMN destroys a column's data: deny_drop binds every level.
#[tokio::test]
async fn alter_table_drop_column_under_deny_drop_is_refused() {
    let (env, client, _conn) =
        guarded_session("a2_drop_column", "deny_drop = true", AccessLevel::Admin).await;
    let plain = client.batch_execute("DROP TABLE secrets").await;
    assert!(plain.is_err(), "DROP TABLE ran under deny_drop");
    let column = client
        .batch_execute("ALTER TABLE items DROP COLUMN name")
        .await;
    let cols = env.superuser_sql(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'name'",
    );
    assert!(
        column.is_err(),
        "ALTER TABLE … DROP COLUMN ran under deny_drop (column left: {cols})"
    );
}

/// ALTER COLUMN … TYPE … USING rewrites every row: an UPDATE without WHERE in DDL form.
#[tokio::test]
async fn alter_column_type_using_under_deny_update_without_where_is_refused() {
    let (env, client, _conn) = guarded_session(
        "a2_alter_using",
        "deny_update_without_where = true",
        AccessLevel::Admin,
    )
    .await;
    let result = client
        .batch_execute("ALTER TABLE items ALTER COLUMN name TYPE text USING 'wiped'")
        .await;
    let untouched = count_items(&env).await;
    assert!(
        result.is_err(),
        "ALTER COLUMN TYPE … USING rewrote every row under deny_update_without_where; untouched: {untouched}"
    );
    assert_eq!(untouched, "10");
}

/// Column notation `i.wipe` calls wipe(items) when items has no column `wipe`, and an
/// unqualified `lower(1)` calls a database's `lower(int)`: with rules in force both are
/// calls of the database's own functions, refused as opaque.
#[tokio::test]
async fn column_notation_and_overloads_of_database_functions_are_opaque() {
    let env = Env::with(
        "a2_db_functions",
        Options {
            guardrails: "deny_delete_without_where = true",
            ..Options::default()
        },
    )
    .await;
    env.superuser_sql(
        "CREATE FUNCTION public.wipe(items) RETURNS int LANGUAGE sql \
         AS 'DELETE FROM items RETURNING 1'; \
         CREATE FUNCTION public.lower(int) RETURNS int LANGUAGE sql \
         AS 'DELETE FROM items RETURNING 1'; \
         CREATE FUNCTION public.wipe_op(text, text) RETURNS text LANGUAGE sql \
         AS 'DELETE FROM items RETURNING $1'; \
         CREATE OPERATOR public.+ (leftarg = text, rightarg = text, function = public.wipe_op); \
         GRANT DELETE ON items TO lockbox_write",
    );
    let (_id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    for sql in ["SELECT i.wipe FROM items i LIMIT 1", "SELECT lower(1)"] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let message = crate::harness::db_error(&err).1;
        assert!(message.contains("opaque_statement"), "{sql}: {message}");
    }
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items").trim(), "10");
    // The same call inside a query run from text, and an operator the database defines
    // with a built-in's symbol, are calls of its functions too.
    for sql in [
        "SELECT query_to_xml('select i.wipe from items i limit 1', true, true, '')",
        "SELECT i.name + i.name FROM items i LIMIT 1",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        let message = crate::harness::db_error(&err).1;
        assert!(message.contains("opaque_statement"), "{sql}: {message}");
    }
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items").trim(), "10");
    // Ordinary column references still run.
    client
        .batch_execute("SELECT i.name FROM items i WHERE i.id = 1")
        .await
        .expect("a column");
}
