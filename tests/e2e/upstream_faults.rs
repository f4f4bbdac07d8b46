//! The upstream database failing under live sessions: stopped abruptly (`pg_ctl stop -m
//! immediate`) in the middle of a query, a COPY and an idle session, and stalled (every
//! server process stopped with SIGSTOP). Each test runs on a cluster of its own, so the
//! fault touches nobody else's tests.

use std::time::Duration;

use lockbox::policy::{AccessLevel, NewRequest};
use lockbox::sandbox::PgSandbox;

use crate::harness::{cluster, create_roles, db_error, fatal_error, Env, Options};

/// A cluster for one test, with the roles `Env` logs in with. Leaked: the process's end
/// (or the sandbox's watchdog) stops it.
pub(crate) fn own_cluster() -> &'static PgSandbox {
    let pg = PgSandbox::start().unwrap_or_else(|e| panic!("cannot start a PostgreSQL: {e}"));
    create_roles(&pg);
    Box::leak(Box::new(pg))
}

/// The `other` database on the shared cluster, for the deployment's second entry.
pub(crate) fn other_database_on_the_shared_cluster() {
    let pg = cluster();
    let exists = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'other'",
        )
        .expect("look for other");
    if exists.trim() == "0" {
        // Another test may create it at the same moment: only its absence afterwards fails.
        if let Err(e) = pg.psql("postgres", "CREATE DATABASE other") {
            let now = pg
                .psql(
                    "postgres",
                    "SELECT count(*) FROM pg_database WHERE datname = 'other'",
                )
                .expect("look for other");
            assert_eq!(now.trim(), "1", "create other: {e}");
        }
    }
}

fn running(pg: &PgSandbox, db: &str, query: &str) -> i64 {
    pg.psql(
        db,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE query = '{query}'"),
    )
    .map(|n| n.trim().parse().unwrap_or(0))
    .unwrap_or(0)
}

async fn wait_until_running(pg: &PgSandbox, db: &str, query: &str) {
    for _ in 0..100 {
        if running(pg, db, query) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{query} never started upstream");
}

/// What a session's task ended with, which must come within seconds of the fault.
async fn told<T>(what: &str, task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap_or_else(|_| panic!("{what} was never told"))
        .expect("join")
}

/// Whether a session's end came with an error that names the cause: the server's own
/// FATAL (57P01, relayed) or the proxy's (08006, the upstream connection is gone).
fn assert_clear(what: &str, (code, message): (String, String)) {
    assert!(
        code == "57P01" || code == "08006",
        "{what}: SQLSTATE {code:?}: {message}"
    );
    assert!(!message.is_empty(), "{what}: an error without a message");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_stopped_abruptly_ends_its_sessions_clearly_and_comes_back() {
    let faulty = own_cluster();
    other_database_on_the_shared_cluster();
    let env = Env::with(
        "upstream_crash",
        Options {
            cluster: Some(faulty),
            other_cluster: Some(cluster()),
            ..Options::default()
        },
    )
    .await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;

    // A query running, a COPY half sent, and a session doing nothing.
    let (querying, query_conn) = env.connect("eve", &token).await.expect("login");
    let query = tokio::spawn(async move {
        querying
            .batch_execute("SELECT pg_sleep(60)")
            .await
            .map(|_| ())
    });
    // The COPY runs in psql, which reports a FATAL that arrives mid-COPY (tokio-postgres
    // reads responses only at the COPY's end); its input stays open, rows half sent.
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname={} user=eve sslmode=disable",
        env.proxy_port(),
        env.db
    );
    let mut copying = std::process::Command::new(env.pg.bin_dir().join("psql"))
        .args(["-X", "-v", "VERBOSITY=verbose", "-d", &conninfo])
        .args(["-c", "COPY items FROM STDIN"])
        .env("PGPASSWORD", &token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run psql");
    let mut rows = copying.stdin.take().expect("psql's input");
    // A row every 50 ms, until psql is gone; 16 KiB each, past libpq's output buffer, so
    // each goes out at once.
    std::thread::spawn(move || {
        let name = "x".repeat(16 * 1024);
        for id in 1001.. {
            let row = format!("{id}\t{name}\n");
            if std::io::Write::write_all(&mut rows, row.as_bytes()).is_err() {
                break;
            }
            let _ = std::io::Write::flush(&mut rows);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (idle, idle_conn) = env.connect("eve", &token).await.expect("login");
    wait_until_running(faulty, &env.db, "SELECT pg_sleep(60)").await;
    wait_until_running(faulty, &env.db, "COPY items FROM STDIN").await;

    faulty.crash().expect("stop the database abruptly");

    let statement = told("the running query", query)
        .await
        .expect_err("the query cannot finish");
    let connection = told("the running query's connection", query_conn).await;
    assert_clear("running query", fatal_error(Some(statement), connection));
    let copied = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || copying.wait_with_output()),
    )
    .await
    .expect("psql's COPY was never told")
    .expect("join")
    .expect("psql output");
    let said = String::from_utf8_lossy(&copied.stderr);
    assert!(
        said.contains("57P01") || said.contains("08006"),
        "psql's COPY was not told why: {said}"
    );
    let connection = told("the idle session", idle_conn).await;
    let next = idle.simple_query("SELECT 1").await.err();
    assert_clear("idle session", fatal_error(next, connection));

    // Every statement that reached the server has its record and an outcome saying it did
    // not complete.
    let records = env
        .wait_for_audit("outcomes of the cut statements", |records| {
            ["SELECT pg_sleep(60)", "COPY items FROM STDIN"]
                .iter()
                .all(|text| {
                    records.iter().any(|s| {
                        s["type"] == "statement"
                            && s["statement"] == *text
                            && records.iter().any(|o| {
                                o["type"] == "outcome"
                                    && o["statement_seq"] == s["seq"]
                                    && (o["status"] == "interrupted" || o["status"] == "error")
                            })
                    })
                })
        })
        .await;
    assert!(
        records.iter().any(|r| r["request_id"] == id.as_str()),
        "the records name the request"
    );

    // The other database is still served meanwhile.
    let other = NewRequest {
        database: "other".into(),
        ticket: "T-2".into(),
        reason: "the other database".into(),
        access: AccessLevel::Read,
        duration: Some("1h".into()),
        ..NewRequest::default()
    };
    let (_, other_token) = env.approved("bob", other).await;
    let mut config = env.pg_config("bob", &other_token);
    config.dbname("other");
    let (other_client, other_conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the other database is still served");
    tokio::spawn(other_conn);
    other_client
        .simple_query("SELECT 1")
        .await
        .expect("a query on the other database");

    // A new session on the stopped database is refused with the cause, at once.
    let Err(refused) = env.connect("eve", &token).await else {
        panic!("a session was admitted to a stopped database");
    };
    let (code, message) = db_error(&refused);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("refused the connection"), "{message}");

    // Back up: new sessions work again, with the same grant.
    faulty.start_again().expect("start the database again");
    let (client, conn) = env
        .connect("eve", &token)
        .await
        .expect("login after restart");
    tokio::spawn(conn);
    let rows = client
        // (Not the table's rows: the sandbox runs without fsync, so a crash may lose them.)
        .simple_query("SELECT current_database()")
        .await
        .expect("a query after the restart");
    assert!(!rows.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_database_loses_its_sessions_at_their_deadline_and_refuses_new_ones_in_time() {
    let stalled = own_cluster();
    let env = Env::with(
        "upstream_stall",
        Options {
            cluster: Some(stalled),
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let (short_id, short_token) = env.approved_token_for("eve", "8s", AccessLevel::Read).await;
    let (client, conn) = env.connect("eve", &short_token).await.expect("login");
    let query = tokio::spawn(async move {
        client
            .batch_execute("SELECT pg_sleep(60)")
            .await
            .map(|_| ())
    });
    wait_until_running(stalled, &env.db, "SELECT pg_sleep(60)").await;

    stalled.freeze(true).expect("stop the server's processes");
    // Resumed whatever the assertions below say, so the cluster can be stopped at exit.
    struct Thaw(&'static PgSandbox);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = self.0.freeze(false);
        }
    }
    let _thaw = Thaw(stalled);

    // The session ends at its deadline although the server answers nothing.
    let statement = tokio::time::timeout(Duration::from_secs(20), query)
        .await
        .expect("the session outlived its deadline on a stalled server")
        .expect("join")
        .expect_err("the query cannot finish");
    let connection = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("connection closed")
        .expect("join");
    let (code, message) = fatal_error(Some(statement), connection);
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("expired"), "{message}");
    env.wait_for_audit("the expired session's end", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == short_id.as_str() && r["event"] == "dropped_expired")
    })
    .await;

    // A new session is refused with a clear error after the upstream login timeout, not
    // left hanging.
    let admitted = tokio::time::timeout(Duration::from_secs(40), env.connect("eve", &token))
        .await
        .expect("admission hung on a stalled server");
    let Err(refused) = admitted else {
        panic!("a stalled server admitted a session");
    };
    let (code, message) = db_error(&refused);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("did not answer"), "{message}");
}

/// A backend killed mid-statement (the OOM killer, a crash) says nothing before its
/// connection ends, so the proxy cannot tell it from a connection something in between
/// closed while the backend runs on: it makes sure. The server restarts (crash recovery)
/// and refuses logins meanwhile; the reaper tries again until it gets in, and records the
/// backend as gone, not as one it could not terminate.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_killed_mid_statement_is_recorded_gone_once_the_server_is_back() {
    let crashing = own_cluster();
    let env = Env::with(
        "upstream_killed_backend",
        Options {
            cluster: Some(crashing),
            timings: "terminate_after = \"5s\"",
            ..Options::default()
        },
    )
    .await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, connection) = env.connect("eve", &token).await.expect("login");
    let sleeping = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(60)").await });
    wait_until_running(crashing, &env.db, "SELECT pg_sleep(60)").await;
    let pid = crashing
        .psql(
            &env.db,
            "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
        )
        .expect("the backend's pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -9 {pid}");
    let statement = told("the running query", sleeping)
        .await
        .expect_err("the query cannot finish");
    let _ = told("its connection", connection).await;
    drop(statement);
    let records = env
        .wait_for_audit("what became of the backend", |records| {
            records.iter().any(|r| {
                r["request_id"] == id.as_str()
                    && r["event"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("backend_"))
            })
        })
        .await;
    let fate: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| {
            r["request_id"] == id.as_str()
                && r["event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("backend_"))
        })
        .collect();
    assert_eq!(fate.len(), 1, "{fate:?}");
    assert_eq!(fate[0]["event"], "backend_gone", "{fate:?}");
    assert_eq!(fate[0]["backend_pid"].to_string(), pid.trim(), "{fate:?}");
}
