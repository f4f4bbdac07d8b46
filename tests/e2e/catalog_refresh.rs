//! A session follows the database's code as it changes behind lockbox's back. The guard
//! knows which relations run the customer's functions (a view over one) from a read of the
//! catalog; an attack review made such a view directly on the server and used it at once
//! through a session that logged in before, whose read never changed. Now the read is made
//! again every `[timings] catalog_refresh` while sessions need it, and open sessions take
//! it up at their next statement.

use std::time::Duration;

use lockbox::policy::AccessLevel;

use crate::harness::{db_error, Env, Options};

/// A deployment whose statement rules need the database's code, read again every second.
fn refreshing(options: Options) -> Options {
    Options {
        guardrails: "deny_drop = true",
        timings: "catalog_refresh = \"1s\"",
        ..options
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_view_made_behind_lockbox_reaches_a_session_already_open() {
    let env = Env::with("catalog_refresh", refreshing(Options::default())).await;
    env.superuser_sql("CREATE TABLE ran (what text); GRANT ALL ON ran TO PUBLIC;");
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    client.simple_query("SELECT 1").await.expect("logged in");

    // Made by the customer, straight on the server: a harmless probe, and a view whose
    // function writes.
    env.superuser_sql(
        "CREATE FUNCTION probe_value() RETURNS int LANGUAGE sql AS $$ SELECT 7 $$;
         CREATE VIEW probe AS SELECT probe_value() AS v;
         CREATE FUNCTION logged() RETURNS int LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO ran VALUES ('logged'); RETURN 1; END $$;
         CREATE VIEW busy AS SELECT logged() AS v;
         GRANT SELECT ON probe, busy TO PUBLIC;",
    );
    // The probe runs until the session has the new read, then is refused as opaque.
    let mut refused = None;
    for _ in 0..150 {
        match client.simple_query("SELECT v FROM probe").await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the session took up the new read of the catalog");
    let (code, message) = db_error(&refused);
    assert_eq!(code, "42501", "{message}");
    assert!(
        message.contains("opaque_statement") && message.contains("probe_value"),
        "{message}"
    );
    let busy = client
        .simple_query("SELECT v FROM busy")
        .await
        .expect_err("the view runs a function of the database's own");
    assert!(db_error(&busy).1.contains("logged"), "{busy:?}");
    assert_eq!(env.superuser_sql("SELECT count(*) FROM ran"), "0");
    // The session goes on.
    client
        .simple_query("SELECT count(*) FROM items")
        .await
        .expect("served");
}

/// A session whose database's code can no longer be read ends (fail closed, as a login is
/// refused then) rather than go on with an old read: an attack review kept using a view
/// made behind lockbox's back while the service role could not log in.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_ends_when_its_databases_code_cannot_be_read_again() {
    // A service role of this test's own, which it takes LOGIN from (others share theirs).
    crate::harness::cluster()
        .psql(
            "postgres",
            "DO $$ BEGIN CREATE ROLE refresh_svc LOGIN PASSWORD 'refresh-pw';
             EXCEPTION WHEN duplicate_object THEN ALTER ROLE refresh_svc LOGIN; END $$",
        )
        .expect("service role");
    let env = Env::with(
        "catalog_unreadable",
        refreshing(Options {
            upstream_user: "refresh_svc",
            upstream_password: "refresh-pw",
            ..Options::default()
        }),
    )
    .await;
    let (_, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    client.simple_query("SELECT 1").await.expect("logged in");
    env.superuser_sql("ALTER ROLE refresh_svc NOLOGIN");
    let mut ended = None;
    for _ in 0..100 {
        match client.simple_query("SELECT 1").await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => {
                ended = Some(e);
                break;
            }
        }
    }
    env.superuser_sql("ALTER ROLE refresh_svc LOGIN");
    let ended = ended.expect("the session ended once the code could not be read");
    let (code, message) = db_error(&ended);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("can no longer read"), "{message}");
}

/// Statements prepared before the new read are checked again where the server plans them
/// again (Bind, SQL EXECUTE), under the catalog as it is now: an attack review replaced a
/// view behind lockbox's back and ran it through statements prepared before, whose
/// verdict had been kept.
#[tokio::test(flavor = "multi_thread")]
async fn statements_prepared_before_the_catalog_changed_are_checked_again() {
    let env = Env::with("catalog_refresh_prepared", refreshing(Options::default())).await;
    env.superuser_sql(
        "CREATE TABLE ran (what text); GRANT ALL ON ran TO PUBLIC;
         CREATE VIEW later AS SELECT 1 AS v; GRANT SELECT ON later TO PUBLIC;",
    );
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    let prepared = client
        .prepare("SELECT v FROM later")
        .await
        .expect("prepared");
    client
        .batch_execute("PREPARE p AS SELECT v FROM later")
        .await
        .expect("PREPARE");
    // Reads that find nothing changed leave them as they were.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.query(&prepared, &[]).await.expect("runs");
    client.batch_execute("EXECUTE p").await.expect("runs");

    env.superuser_sql(
        "CREATE FUNCTION logged() RETURNS int LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO ran VALUES ('logged'); RETURN 1; END $$;
         CREATE OR REPLACE VIEW later AS SELECT logged() AS v;
         CREATE FUNCTION probe_value() RETURNS int LANGUAGE sql AS $$ SELECT 7 $$;
         CREATE VIEW probe AS SELECT probe_value() AS v;
         GRANT SELECT ON probe TO PUBLIC;",
    );
    let mut caught_up = false;
    for _ in 0..150 {
        if client.simple_query("SELECT v FROM probe").await.is_err() {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(caught_up, "the session took up the new read");
    let bound = client
        .query(&prepared, &[])
        .await
        .expect_err("the Bind plans the replaced view");
    let (code, message) = db_error(&bound);
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("opaque_statement"), "{message}");
    let executed = client
        .batch_execute("EXECUTE p")
        .await
        .expect_err("EXECUTE plans the replaced view");
    assert_eq!(db_error(&executed).0, "42501", "{executed:?}");
    assert_eq!(env.superuser_sql("SELECT count(*) FROM ran"), "0");
    client
        .simple_query("SELECT 1")
        .await
        .expect("the session goes on");
}

/// The read is the server's, not the name's: a reload that moves a database to another
/// server (here: another database of the cluster) gives new sessions the new one's code,
/// while sessions open before go on with their own server's. An attack review found the
/// new server's read fed to old sessions when reads were kept per name.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_moves_a_database_keeps_each_session_on_its_own_servers_code() {
    let env = Env::with("catalog_moved", refreshing(Options::default())).await;
    // Where it is now, `v` is a table; where it moves to, a view whose function writes.
    env.superuser_sql(
        "CREATE TABLE v (x int); INSERT INTO v VALUES (1); GRANT SELECT ON v TO PUBLIC;",
    );
    let moved_to = format!("{}_moved", env.db);
    env.pg
        .psql("postgres", &format!("DROP DATABASE IF EXISTS {moved_to}"))
        .expect("drop");
    env.pg
        .psql(
            "postgres",
            &format!(
                "CREATE DATABASE {moved_to} OWNER {}",
                crate::harness::SERVICE_ROLE
            ),
        )
        .expect("create");
    env.pg
        .psql(
            &moved_to,
            "CREATE TABLE ran (what text); GRANT ALL ON ran TO PUBLIC;
             CREATE FUNCTION logged() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO ran VALUES ('logged'); RETURN 1; END $$;
             CREATE VIEW v AS SELECT logged() AS x;
             GRANT SELECT ON v TO PUBLIC;",
        )
        .expect("the other database's code");
    let (_, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let (before, _conn) = env.connect("eve", &token).await.expect("connect");
    before
        .simple_query("SELECT x FROM v")
        .await
        .expect("a table");

    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let entry = format!("name = \"{}\"\n", env.db);
    assert!(text.contains(&entry), "{text}");
    let text = text.replacen(&entry, &format!("{entry}dbname = \"{moved_to}\"\n"), 1);
    std::fs::write(&env.config_path, text).expect("config");
    env.client("alice").reload().await.expect("reload");

    let (after, _conn) = env.connect("eve", &token).await.expect("connect again");
    let refused = after
        .simple_query("SELECT x FROM v")
        .await
        .expect_err("on the new server, v runs the database's own function");
    assert!(db_error(&refused).1.contains("logged"), "{refused:?}");
    // Past two refresh periods, the session open before still reads its own server's code.
    for _ in 0..30 {
        before
            .simple_query("SELECT x FROM v")
            .await
            .expect("still a table where this session is");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        env.pg
            .psql(&moved_to, "SELECT count(*) FROM ran")
            .expect("count"),
        "0"
    );
}
