//! Differential completeness: the same workload is seen twice, once by lockbox's audit and
//! once by PostgreSQL's own statement log (`log_statement = all`), and the two must agree:
//! every statement the server logged has exactly one audit statement record with the same
//! text (and parameters), and the audit holds no statement the server did not log except
//! the ones lockbox kept from it by design.
//!
//! Rules the comparison states instead of ignoring things silently:
//! - lockbox sends no SQL of its own at session start: its settings go upstream as startup
//!   parameters, so no server line is excused as "the proxy's own".
//! - the only text lockbox originates is the stand-in it sends in place of a refused query
//!   string; each logged stand-in must line up with an audit record whose outcome is
//!   `refused`. A refused FunctionCall's stand-in is a FunctionCall of function OID 0, which
//!   the server fails before it logs the call (a query string in its place would drop the
//!   client's unnamed statement): its `refused` record is one no server line accounts for.
//! - `log_statement` logs an extended query at Execute. One that fails earlier (in Parse or
//!   Bind, e.g. `SELECT 1/0` is folded while planning) shows only as an ERROR line naming
//!   the statement; it must line up with an audit record whose outcome is `error` (or
//!   `refused`, when the failing Parse is lockbox's stand-in for a refused one). Each
//!   logged statement also accounts for one ERROR line of its own text right after it.
//! - a record the server never logs at all is allowed only with the outcome
//!   `not_executed` (an earlier error in the pipeline made the server skip it: an Execute,
//!   or a query string sent before the pipeline's Sync), or, for an Execute, `error` when
//!   the Parse or Bind before it failed.
//! - in the generated pipelines (`protocol_gen`), a failing Bind, Describe or Close is
//!   logged with whatever statement text the backend last had (`debug_query_string`), not
//!   its own; that session's ERROR lines are left out, and what ran is read from its
//!   `statement:` and `execute` lines alone.
//! - the server logs a simple query string whole; the audit splits it into statements. The
//!   audit's pieces, in order, must cover the logged string with nothing left over but
//!   whitespace and semicolons.
//! - lines logged by the superuser are this test's own setup, made behind lockbox's back.
//! - after a session it ended (the expiry here), lockbox watches the backend from a
//!   connection of its own (`application_name` `lockbox terminator`) and terminates it if
//!   it lingers. Such a server session is set aside only if every line of it is one of
//!   those looks at `pg_stat_activity`; anything else it ran is a difference.
//! - lines of lockbox's provisioning connections (`application_name` `lockbox
//!   provisioning`: its service role checking whether it may create roles, creating and
//!   dropping grant roles) belong to no session; they are left out by that name.

mod clients;
mod compare;
mod differential;
mod generator;
mod protocol_gen;
mod server_log;
mod wire;

use std::sync::OnceLock;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use lockbox::policy::AccessLevel;
use lockbox::sandbox::{PgSandbox, SUPERUSER};

use crate::harness::{create_roles, db_error, errors_in, message, query, Env, Options, Raw};
use compare::{compare, Audited};
use server_log::{Logged, ServerSession};

/// Every session starts with a marker statement, which pairs its audit records with the
/// server's lines for the same backend.
fn marker(label: &str) -> String {
    format!("SELECT 'complete:{label}'")
}

/// A cluster of this test's own, logging every statement as CSV: the shared cluster's
/// logging is left alone for the tests that run beside this one.
fn logging_cluster() -> &'static PgSandbox {
    static PG: OnceLock<PgSandbox> = OnceLock::new();
    PG.get_or_init(|| {
        let pg = PgSandbox::start_with(&[
            ("logging_collector", "on"),
            ("log_destination", "csvlog"),
            ("log_directory", "log"),
            ("log_filename", "statements.log"),
            ("log_statement", "all"),
        ])
        .unwrap_or_else(|e| panic!("cannot start a PostgreSQL that logs statements: {e}"));
        create_roles(&pg);
        pg
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_statement_the_server_ran_has_exactly_one_audit_record() {
    let env = Env::with(
        "completeness",
        Options {
            cluster: Some(logging_cluster()),
            ..Default::default()
        },
    )
    .await;
    let (write_id, write_token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (admin_id, admin_token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;

    let mut main = connect(&env, &write_token, "drivers").await;
    drivers(&mut main).await;
    copies(&main).await;
    psql_session(&env, &write_token);
    cancelled_session(&env, &write_token).await;
    raw_write_session(&env, &write_token).await;
    generated_pipelines_session(&env, &write_token).await;
    function_call_session(&env, &admin_token).await;
    let expiry_id = expired_session(&env).await;
    let end = marker("end");
    main.batch_execute(&end).await.expect("end marker");

    let ids = [write_id, admin_id, expiry_id];
    let audit = settled_audit(&env, &ids).await;
    let mut server = server_sessions(&env, &end).await;
    server.retain(|s| !is_lockbox_watching(s));
    for session in &mut server {
        if session.statements.first() == Some(&Logged::Simple(marker("pipelines"))) {
            protocol_gen::without_error_lines(session);
        }
    }
    let problems = compare(&server, &audit_sessions(&audit, &ids));
    assert!(
        problems.is_empty(),
        "the audit and the server's statement log disagree:\n{}",
        problems.join("\n")
    );
    assert_paths_covered(&audit);
}

/// Connects through lockbox with tokio-postgres and sends the session's marker.
async fn connect(env: &Env, token: &str, label: &str) -> Client {
    let (client, _conn) = env.connect("eve", token).await.expect("login");
    client
        .batch_execute(&marker(label))
        .await
        .expect("marker statement");
    client
}

/// Simple, multi-statement, failing, unnamed, named-many-times, pipelined (binary
/// parameters of several types), portal and refused statements, from tokio-postgres.
async fn drivers(client: &mut Client) {
    client.batch_execute("SELECT 1").await.expect("simple");
    client
        .batch_execute(
            "INSERT INTO items VALUES (11, 'eleven'); UPDATE items SET name = 'one' WHERE id = 1; \
             SELECT 'a;b', $$c;d$$",
        )
        .await
        .expect("multi-statement string");
    let err = client
        .batch_execute("SELECT 1/0; SELECT 2")
        .await
        .expect_err("division by zero");
    assert_eq!(db_error(&err).0, "22012");
    // The unnamed statement: Parse, Bind, Execute, Sync in one flight.
    let row = client
        .query_typed_one(
            "SELECT $1::text || $2::text",
            &[(&"un", Type::TEXT), (&"named", Type::TEXT)],
        )
        .await
        .expect("unnamed statement");
    assert_eq!(row.get::<_, String>(0), "unnamed");
    let named = client
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .expect("prepare");
    for id in 1..=5i32 {
        client.query_one(&named, &[&id]).await.expect("execute");
    }
    pipelined(client).await;
    let err = client
        .execute("INSERT INTO items VALUES ($1, 'dup')", &[&1i32])
        .await
        .expect_err("duplicate key");
    assert_eq!(db_error(&err).0, "23505");
    portal(client).await;
    let err = client
        .batch_execute("SET ROLE postgres")
        .await
        .expect_err("refused query string");
    assert_eq!(db_error(&err).0, "42501");
    let err = client
        .prepare("ALTER SYSTEM SET work_mem = '1GB'")
        .await
        .expect_err("refused Parse");
    assert_eq!(db_error(&err).0, "42501");
}

/// Four extended queries sent before any answer is read, with binary parameters.
async fn pipelined(client: &Client) {
    let bytes = vec![0u8, 1, 0xff];
    let none: Option<i32> = None;
    type Param<'a> = &'a (dyn ToSql + Sync);
    let (first, second, third, fourth): ([Param; 2], [Param; 2], [Param; 2], [Param; 1]) = (
        [&41i64, &true],
        [&bytes, &1.5f64],
        [&"it's; quoted", &none],
        [&7i16],
    );
    let (a, b, c, d) = tokio::join!(
        client.query_one("SELECT $1::int8 + 1, $2::bool", &first),
        client.query_one("SELECT $1::bytea, $2::float8", &second),
        client.query_one("SELECT $1::text, $2::int4", &third),
        client.query_one("SELECT $1::int2", &fourth),
    );
    assert_eq!(a.expect("int8, bool").get::<_, i64>(0), 42);
    assert_eq!(b.expect("bytea, float8").get::<_, Vec<u8>>(0), bytes);
    assert_eq!(c.expect("text, null").get::<_, String>(0), "it's; quoted");
    assert_eq!(d.expect("int2").get::<_, i16>(0), 7);
}

/// A named portal read in two Executes (the second is logged as `execute fetch from`).
async fn portal(client: &mut Client) {
    let transaction = client.transaction().await.expect("begin");
    let statement = transaction
        .prepare("SELECT id FROM items ORDER BY id")
        .await
        .expect("prepare");
    let portal = transaction.bind(&statement, &[]).await.expect("bind");
    let first = transaction.query_portal(&portal, 3).await.expect("fetch");
    let second = transaction.query_portal(&portal, 3).await.expect("fetch");
    assert_eq!((first.len(), second.len()), (3, 3));
    drop(portal);
    transaction.commit().await.expect("commit");
}

async fn copies(client: &Client) {
    let sink = client
        .copy_in("COPY items FROM STDIN")
        .await
        .expect("copy in");
    let rows =
        futures::stream::iter((100..105).map(|i| {
            Ok::<_, tokio_postgres::Error>(bytes::Bytes::from(format!("{i}\tcopied {i}\n")))
        }));
    let mut sink = Box::pin(sink);
    sink.send_all(&mut Box::pin(rows)).await.expect("rows");
    assert_eq!(sink.as_mut().finish().await.expect("finish"), 5);
    let out = client
        .copy_out("COPY (SELECT id FROM items WHERE id <= 3) TO STDOUT")
        .await
        .expect("copy out");
    let chunks: Vec<_> = Box::pin(out).collect().await;
    assert_eq!(chunks.len(), 3);
}

/// psql: a multi-statement string (one Query message) and a failing statement.
fn psql_session(env: &Env, token: &str) {
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname={} user=eve",
        env.proxy_port(),
        env.db
    );
    let out = std::process::Command::new(env.pg.bin_dir().join("psql"))
        .args(["-X", "-d", &conninfo, "-c", &marker("psql")])
        .args([
            "-c",
            "SELECT 'x;y' AS semi; UPDATE items SET name = name WHERE id = 2; SELECT count(*) FROM items",
        ])
        .args(["-c", "SELECT * FROM no_such_table"])
        .env("PGPASSWORD", token)
        .output()
        .expect("run psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no_such_table"), "psql said: {stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("x;y"),
        "psql ran the multi-statement string: {stderr}"
    );
}

/// A `pg_sleep` cancelled by the client's CancelRequest.
async fn cancelled_session(env: &Env, token: &str) {
    let client = connect(env, token, "cancel").await;
    let cancel = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(60)").await });
    env.wait_for_audit("the sleep to start", |records| {
        records
            .iter()
            .any(|r| r["statement"] == "SELECT pg_sleep(60)")
    })
    .await;
    // The record precedes the statement upstream: a cancel before the server runs it is lost.
    env.wait_until_running("SELECT pg_sleep(60)").await;
    cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let result = tokio::time::timeout(Duration::from_secs(20), sleeper)
        .await
        .expect("the cancel took effect");
    let err = result.expect("join").expect_err("cancelled");
    assert_eq!(db_error(&err).0, "57014");
}

/// FunctionCall of `oid` with text arguments.
pub(crate) fn function_call(oid: u32, args: &[&str]) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(args.len() as i16).to_be_bytes());
    for arg in args {
        body.extend_from_slice(&(arg.len() as i32).to_be_bytes());
        body.extend_from_slice(arg.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(b'F', &body)
}

fn md5_oid(env: &Env) -> u32 {
    env.superuser_sql("SELECT 'md5(text)'::regprocedure::oid")
        .parse()
        .expect("oid of md5(text)")
}

/// Raw protocol under a write grant: a refused FunctionCall, and a pipeline of three
/// extended queries under one Sync whose second fails, so the server skips the third.
async fn raw_write_session(env: &Env, token: &str) {
    let mut raw = Raw::login(env, "eve", token).await;
    raw.read_until_ready().await;
    raw.send(&query(&marker("raw-write"))).await;
    raw.read_until_ready().await;
    raw.send(&function_call(md5_oid(env), &["abc"])).await;
    let refused = errors_in(&raw.read_until_ready_after_error().await);
    assert_eq!(refused.first().map(|e| e.0.as_str()), Some("42501"));
    let mut pipeline = Vec::new();
    for sql in ["SELECT 1", "SELECT 1/0", "SELECT 3"] {
        pipeline.extend(message(b'P', &[b"\0", sql.as_bytes(), b"\0\0\0"].concat()));
        pipeline.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        pipeline.extend(message(b'E', b"\0\0\0\0\0"));
    }
    pipeline.extend(message(b'S', b""));
    raw.send(&pipeline).await;
    let failed = errors_in(&raw.read_until_ready_after_error().await);
    assert_eq!(failed.first().map(|e| e.0.as_str()), Some("22012"));
    raw.send(&message(b'X', b"")).await;
}

/// Raw protocol under a write grant: seeded extended-protocol pipelines with failing
/// messages among them (`protocol_gen`; the seed is `LOCKBOX_DIFF_SEED`'s).
async fn generated_pipelines_session(env: &Env, token: &str) {
    let mut raw = Raw::login(env, "eve", token).await;
    raw.read_until_ready().await;
    raw.send(&query(&marker("pipelines"))).await;
    raw.read_until_ready().await;
    protocol_gen::run(&mut raw, generator::seed()).await;
    raw.send(&message(b'X', b"")).await;
}

/// Raw protocol under an admin grant: a FunctionCall that runs.
async fn function_call_session(env: &Env, token: &str) {
    let mut raw = Raw::login(env, "eve", token).await;
    raw.read_until_ready().await;
    raw.send(&query(&marker("fastpath"))).await;
    raw.read_until_ready().await;
    raw.send(&function_call(md5_oid(env), &["abc"])).await;
    let reply = raw.read_until_ready().await;
    assert!(errors_in(&reply).is_empty(), "{:?}", errors_in(&reply));
    raw.send(&message(b'X', b"")).await;
}

/// A `pg_sleep` still running when the grant's window ends.
async fn expired_session(env: &Env) -> String {
    let (id, token) = env
        .approved_token_for("eve", "8s", AccessLevel::Write)
        .await;
    let client = connect(env, &token, "expiry").await;
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        client.batch_execute("SELECT pg_sleep(30)"),
    )
    .await
    .expect("the session ended at expiry")
    .expect_err("interrupted");
    let (code, message) = db_error(&err);
    assert!(
        code == "57P01" || message.contains("closed"),
        "{code} {message}"
    );
    id
}

/// Waits (bounded) until every statement record of `ids` has its outcome.
async fn settled_audit(env: &Env, ids: &[String]) -> Vec<Value> {
    let ours = |r: &Value| ids.iter().any(|id| r["request_id"] == id.as_str());
    env.wait_for_audit("an outcome for every statement", |records| {
        let outcomes: Vec<&Value> = records
            .iter()
            .filter(|r| r["type"] == "outcome" && ours(r))
            .map(|r| &r["statement_seq"])
            .collect();
        records
            .iter()
            .filter(|r| r["type"] == "statement" && ours(r))
            .all(|s| outcomes.contains(&&s["seq"]))
    })
    .await
    .into_iter()
    .filter(ours)
    .collect()
}

/// Statement records per session, keyed by the session's marker, in sequence order. A Bind
/// recorded for its planning (its Execute did not follow it) has no line in the server's
/// statement log, which logs statements as they execute: `assert_paths_covered` checks those.
fn audit_sessions(records: &[Value], ids: &[String]) -> Vec<(String, Vec<Audited>)> {
    let outcome_of = |seq: &Value| {
        records
            .iter()
            .find(|r| r["type"] == "outcome" && &r["statement_seq"] == seq)
            .and_then(|o| o["status"].as_str())
            .unwrap_or("none")
            .to_owned()
    };
    let mut sessions: Vec<(String, Vec<Audited>)> = Vec::new();
    let executed = |r: &&Value| r["type"] == "statement" && r["protocol"] != "bind";
    for r in records.iter().filter(executed) {
        assert!(ids.iter().any(|id| r["request_id"] == id.as_str()));
        let session = r["session_id"].as_str().unwrap_or("").to_owned();
        let audited = Audited {
            seq: r["seq"].as_u64().unwrap_or(0),
            protocol: r["protocol"].as_str().unwrap_or("").to_owned(),
            text: r["statement"].as_str().unwrap_or("").to_owned(),
            params: r["params"].as_array().cloned().unwrap_or_default(),
            outcome: outcome_of(&r["seq"]),
        };
        match sessions.iter_mut().find(|(id, _)| *id == session) {
            Some((_, list)) => list.push(audited),
            None => sessions.push((session, vec![audited])),
        }
    }
    sessions
        .into_iter()
        .map(|(_, list)| (list[0].text.clone(), list))
        .collect()
}

/// A server session of lockbox's own that only looked for (or terminated) the backend of a
/// session it dropped.
fn is_lockbox_watching(session: &ServerSession) -> bool {
    session.application == "lockbox terminator"
        && session.statements.iter().all(|s| match s {
            Logged::Simple(text) => {
                text.starts_with("SELECT 1 FROM ")
                    && text.contains(
                        " FROM pg_catalog.pg_stat_activity WHERE pid OPERATOR(pg_catalog.=) ",
                    )
            }
            _ => false,
        })
}

/// The server's statement log for this test's database (bounded wait until `last` shows).
async fn server_sessions(env: &Env, last: &str) -> Vec<ServerSession> {
    let dir = env.pg.data_dir().join("log");
    for _ in 0..100 {
        let sessions = server_log::read(&dir, &env.db, SUPERUSER).expect("server log");
        let done = sessions.iter().any(|s| {
            s.statements
                .iter()
                .any(|l| *l == Logged::Simple(last.to_owned()))
        });
        if done {
            return sessions;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server log never showed {last}");
}

/// The workload reached every path the issue names, so an empty comparison means
/// something: each outcome status, each protocol, binary parameters and COPY counts.
fn assert_paths_covered(records: &[Value]) {
    let statuses: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "outcome")
        .filter_map(|r| r["status"].as_str())
        .collect();
    for status in ["ok", "error", "not_executed", "refused", "interrupted"] {
        assert!(
            statuses.contains(&status),
            "no {status} outcome: {statuses:?}"
        );
    }
    let statements: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "statement")
        .collect();
    for protocol in ["simple", "extended", "function_call", "bind"] {
        assert!(
            statements.iter().any(|s| s["protocol"] == protocol),
            "no {protocol} statement"
        );
    }
    assert!(statements
        .iter()
        .any(|s| s["params"].to_string().contains("binary_hex")));
    // The server does not log a FunctionCall's arguments; the audit must (refused or run).
    let calls: Vec<&&Value> = statements
        .iter()
        .filter(|s| s["protocol"] == "function_call")
        .collect();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert!(
        calls
            .iter()
            .all(|c| c["params"] == serde_json::json!(["abc"])),
        "{calls:#?}"
    );
    let rows_of = |text: &str| {
        let s = statements
            .iter()
            .find(|s| s["statement"] == text)
            .unwrap_or_else(|| panic!("no record of {text}"));
        records
            .iter()
            .find(|o| o["type"] == "outcome" && o["statement_seq"] == s["seq"])
            .and_then(|o| o["rows"].as_u64())
    };
    // tokio-postgres binds a portal with a Sync of its own, then executes it: the Bind plans
    // the statement, so it has a record of its own, before the Executes'.
    let of_portal = |protocol: &str| {
        statements
            .iter()
            .filter(|s| s["statement"] == "SELECT id FROM items ORDER BY id")
            .filter(|s| s["protocol"] == protocol)
            .filter_map(|s| s["seq"].as_u64())
            .collect::<Vec<_>>()
    };
    let (planned, executed) = (of_portal("bind"), of_portal("extended"));
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert_eq!(executed.len(), 2, "{executed:?}");
    assert!(planned[0] < executed[0]);
    assert_eq!(rows_of("COPY items FROM STDIN"), Some(5));
    assert_eq!(
        rows_of("COPY (SELECT id FROM items WHERE id <= 3) TO STDOUT"),
        Some(3)
    );
}
