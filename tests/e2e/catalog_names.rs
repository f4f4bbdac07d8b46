//! A grant's row limit does not count the rows of the system catalogs (psql's `\d`,
//! pg_dump and drivers read them). A reviewer read whole customer tables past the limit by
//! making a read look like one: a table named like an information_schema view
//! (`parameters`), large objects listed from `pg_largeobject_metadata`, and a temporary
//! `pg_class` in the session's own `pg_temp_N`. Each is counted here, against PostgreSQL.

use lockbox::policy::AccessLevel;

use crate::harness::{errors_in, limited_session as limited, query, rows_in, Env, Raw};

/// Sends `sql` and expects the row limit to end the session after `limit` rows.
async fn ended_at_the_limit(raw: &mut Raw, sql: &str, limit: usize) {
    raw.send(&query(sql)).await;
    let answer = raw.read_to_close().await;
    assert_eq!(rows_in(&answer), limit, "{sql}");
    let codes: Vec<String> = errors_in(&answer).into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes, ["54000"], "{sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_table_named_like_a_catalog_view_is_counted() {
    let env = Env::start("catalog_named").await;
    env.superuser_sql(
        "CREATE TABLE parameters AS SELECT id, name FROM items;
         CREATE TABLE \"PG_CLASS\" AS SELECT id, name FROM items;
         GRANT SELECT ON parameters, \"PG_CLASS\" TO lockbox_read",
    );
    // The real catalogs are still not counted: more rows than the limit come back.
    let mut raw = limited(&env, AccessLevel::Read, 5).await;
    raw.send(&query(
        "SELECT * FROM information_schema.parameters LIMIT 20",
    ))
    .await;
    let catalog = raw.read_until_ready().await;
    assert_eq!(rows_in(&catalog), 20, "a catalog read is not counted");
    ended_at_the_limit(&mut raw, "SELECT * FROM parameters", 5).await;
    let mut raw = limited(&env, AccessLevel::Read, 5).await;
    ended_at_the_limit(&mut raw, "SELECT * FROM \"PG_CLASS\"", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_listed_from_a_catalog_are_counted() {
    let env = Env::start("catalog_lo").await;
    for i in 0..8 {
        let oid = env.superuser_sql(&format!("SELECT lo_from_bytea(0, 'secret {i}')"));
        env.superuser_sql(&format!(
            "GRANT SELECT ON LARGE OBJECT {oid} TO lockbox_read"
        ));
    }
    let mut raw = limited(&env, AccessLevel::Read, 5).await;
    ended_at_the_limit(
        &mut raw,
        "SELECT l.oid, convert_from(pg_catalog.lo_get(l.oid), 'UTF8') \
         FROM pg_catalog.pg_largeobject_metadata l",
        5,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_pg_class_in_the_sessions_own_schema_is_counted() {
    let env = Env::start("catalog_temp").await;
    let mut raw = limited(&env, AccessLevel::Write, 5).await;
    // A temporary domain makes the session's pg_temp_N; its name, not `pg_temp`, then
    // holds a table named pg_class, found before the catalog.
    raw.send(&query("CREATE DOMAIN pg_temp.d AS int")).await;
    raw.read_until_ready().await;
    raw.send(&query(
        "SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()",
    ))
    .await;
    let answer = raw.read_until_ready().await;
    let schema = String::from_utf8_lossy(&answer);
    let at = schema
        .find("pg_temp_")
        .expect("the temporary schema's name");
    let digits: String = schema[at + "pg_temp_".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let name = format!("pg_temp_{digits}");
    raw.send(&query(&format!(
        "CREATE TABLE {name}.pg_class AS SELECT id, name FROM items"
    )))
    .await;
    let created = raw.read_until_ready().await;
    assert!(errors_in(&created).is_empty(), "{:?}", errors_in(&created));
    ended_at_the_limit(&mut raw, "SELECT * FROM pg_class", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_put_before_pg_catalog_is_counted() {
    let env = Env::start("catalog_path").await;
    env.superuser_sql(
        "CREATE TABLE public.pg_class AS SELECT id, name FROM items;
         GRANT SELECT ON public.pg_class TO lockbox_read",
    );
    // A quoted name is exact: "PG_CATALOG" and "pg_catalog,x" are other schemas, before
    // the real one.
    for set in [
        "SET search_path = public, pg_catalog",
        r#"SET search_path = "PG_CATALOG", public, pg_catalog"#,
        r#"SELECT set_config('search_path', '"pg_catalog,x", public, pg_catalog', false)"#,
    ] {
        let mut raw = limited(&env, AccessLevel::Read, 5).await;
        raw.send(&query("SELECT * FROM pg_class LIMIT 20")).await;
        let catalog = raw.read_until_ready().await;
        assert_eq!(rows_in(&catalog), 20, "pg_catalog is searched first");
        raw.send(&query(set)).await;
        raw.read_until_ready().await;
        ended_at_the_limit(&mut raw, "SELECT * FROM pg_class", 5).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_path_the_database_sets_before_pg_catalog_is_counted() {
    let env = Env::start("catalog_db_path").await;
    // Set where the proxy never sees it: the database's default (an admin grant's
    // `ALTER DATABASE … SET` would do the same for every later session).
    env.superuser_sql(
        "CREATE VIEW public.pg_class AS SELECT id, name FROM items;
         GRANT SELECT ON public.pg_class TO lockbox_read",
    );
    // A quoted name is another schema; so is one led by a vertical tab, which PostgreSQL's
    // regex `\s` takes for a blank and its search path does not.
    for set in [
        r#"SET search_path = "PG_CATALOG", public, pg_catalog"#,
        r"SELECT set_config('search_path', E'\x0bpg_catalog, public, pg_catalog', false)",
    ] {
        env.superuser_sql(&format!(
            "{set}; ALTER DATABASE {} SET search_path FROM CURRENT",
            env.db
        ));
        let mut raw = limited(&env, AccessLevel::Read, 5).await;
        ended_at_the_limit(&mut raw, "SELECT * FROM pg_class", 5).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_of_the_database_called_from_a_catalog_read_is_counted() {
    let env = Env::start("catalog_functions").await;
    env.superuser_sql(
        "CREATE FUNCTION public.leak(c pg_class) RETURNS text LANGUAGE sql STABLE
           AS 'SELECT name FROM items ORDER BY id LIMIT 1';
         CREATE FUNCTION public.upper(o oid) RETURNS text LANGUAGE sql STABLE
           AS 'SELECT name FROM items ORDER BY id LIMIT 1';
         CREATE FUNCTION public.leak_op(c pg_class, n int) RETURNS text LANGUAGE sql STABLE
           AS 'SELECT name FROM items ORDER BY id LIMIT 1';
         CREATE OPERATOR public.@@ (LEFTARG = pg_class, RIGHTARG = int, FUNCTION = public.leak_op);
         GRANT SELECT ON items TO lockbox_read",
    );
    // Column notation calls leak(c); upper(oid) is the database's, not the built-in; so is
    // the operator.
    for sql in [
        "SELECT c.leak FROM pg_catalog.pg_class c LIMIT 10",
        "SELECT upper(oid) FROM pg_catalog.pg_class LIMIT 10",
        // `@@` is a built-in symbol, but not for (pg_class, int): the database's is found.
        "SELECT c @@ 1 FROM pg_catalog.pg_class c LIMIT 10",
    ] {
        let mut raw = limited(&env, AccessLevel::Read, 3).await;
        ended_at_the_limit(&mut raw, sql, 3).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_session_changes_the_databases_code_catalog_reads_are_counted() {
    let env = Env::start("catalog_ddl").await;
    let mut raw = limited(&env, AccessLevel::Admin, 3).await;
    raw.send(&query(
        "CREATE FUNCTION public.leak2(c pg_class) RETURNS text LANGUAGE sql STABLE \
         AS 'SELECT name FROM items ORDER BY id LIMIT 1'",
    ))
    .await;
    let created = raw.read_until_ready().await;
    assert!(errors_in(&created).is_empty(), "{:?}", errors_in(&created));
    ended_at_the_limit(
        &mut raw,
        "SELECT c.leak2 FROM pg_catalog.pg_class c LIMIT 10",
        3,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_another_session_creates_later_is_counted() {
    let env = Env::start("catalog_later").await;
    env.superuser_sql("GRANT SELECT ON items TO lockbox_read");
    // The reader logs in first: its list of the database's functions has no `upper(pg_class)`.
    let mut reader = limited(&env, AccessLevel::Read, 3).await;
    let mut admin = limited(&env, AccessLevel::Admin, 100).await;
    admin
        .send(&query(
            "CREATE FUNCTION public.upper(c pg_class) RETURNS text LANGUAGE sql STABLE \
             AS 'SELECT name FROM items ORDER BY id LIMIT 1'",
        ))
        .await;
    let created = admin.read_until_ready().await;
    assert!(errors_in(&created).is_empty(), "{:?}", errors_in(&created));
    ended_at_the_limit(
        &mut reader,
        "SELECT upper(c) FROM pg_catalog.pg_class c LIMIT 10",
        3,
    )
    .await;
}
