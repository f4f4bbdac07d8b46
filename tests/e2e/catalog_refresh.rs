//! A session follows the database's code as it changes behind lockbox's back. The guard
//! knows which relations run the customer's functions (a view over one) from a read of the
//! catalog; an attack review made such a view directly on the server and used it at once
//! through a session that logged in before, whose read never changed. Now the read is made
//! again every `[timings] catalog_refresh` while sessions need it, and open sessions take
//! it up at their next statement.

use std::time::Duration;

use lockbox::policy::AccessLevel;

use crate::harness::{db_error, Env, Options};

#[tokio::test(flavor = "multi_thread")]
async fn a_view_made_behind_lockbox_reaches_a_session_already_open() {
    let env = Env::with(
        "catalog_refresh",
        Options {
            guardrails: "deny_drop = true",
            timings: "catalog_refresh = \"1s\"",
            ..Options::default()
        },
    )
    .await;
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
        Options {
            guardrails: "deny_drop = true",
            timings: "catalog_refresh = \"1s\"",
            upstream_user: "refresh_svc",
            upstream_password: "refresh-pw",
            ..Options::default()
        },
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
