//! What flows through a session: both query protocols, pipelining, COPY, notices,
//! LISTEN/NOTIFY, cancel — and an audit record with an outcome for every statement.

use std::time::Duration;

use futures::{stream, StreamExt};
use serde_json::Value;
use tokio_postgres::AsyncMessage;

use lockbox::policy::AccessLevel;

use crate::harness::{cluster, db_error, Env};

/// Waits until every statement record of `id` has its outcome; returns (statements, outcomes).
async fn settled(env: &Env, id: &str, expected: usize) -> (Vec<Value>, Vec<Value>) {
    let records = env
        .wait_for_audit(&format!("{expected} settled statements"), |records| {
            let s = records
                .iter()
                .filter(|r| r["type"] == "statement" && r["request_id"] == id)
                .count();
            let o = records
                .iter()
                .filter(|r| r["type"] == "outcome" && r["request_id"] == id)
                .count();
            s == expected && o == expected
        })
        .await;
    let pick = |kind: &str| -> Vec<Value> {
        records
            .iter()
            .filter(|r| r["type"] == kind && r["request_id"] == id)
            .cloned()
            .collect()
    };
    (pick("statement"), pick("outcome"))
}

fn outcome_of<'a>(outcomes: &'a [Value], statement: &Value) -> &'a Value {
    outcomes
        .iter()
        .find(|o| o["statement_seq"] == statement["seq"])
        .unwrap_or_else(|| panic!("no outcome for {statement}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_query_strings_give_one_record_per_statement() {
    let env = Env::start("relay_simple").await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .batch_execute("SELECT 1; UPDATE items SET name = name WHERE id < 4; SELECT 'a;b'")
        .await
        .expect("batch");
    let err = client
        .batch_execute("SELECT 1/0; SELECT 2")
        .await
        .expect_err("division by zero");
    assert_eq!(db_error(&err).0, "22012");
    client
        .batch_execute("this is not sql")
        .await
        .expect_err("syntax error");

    let (statements, outcomes) = settled(&env, &id, 6).await;
    let texts: Vec<&str> = statements
        .iter()
        .map(|s| s["statement"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        texts,
        [
            "SELECT 1",
            "UPDATE items SET name = name WHERE id < 4",
            "SELECT 'a;b'",
            "SELECT 1/0",
            "SELECT 2",
            "this is not sql"
        ]
    );
    let kinds: Vec<&str> = statements
        .iter()
        .map(|s| s["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        ["select", "update", "select", "select", "select", "unknown"]
    );
    assert!(statements.iter().all(|s| s["protocol"] == "simple"
        && s["engineer"] == "eve"
        && s["ticket"] == "T-1"
        && s["database"] == env.db.as_str()));
    let update = outcome_of(&outcomes, &statements[1]);
    assert_eq!(
        (update["status"].as_str(), update["rows"].as_u64()),
        (Some("ok"), Some(3))
    );
    let failed = outcome_of(&outcomes, &statements[3]);
    assert_eq!(
        (failed["status"].as_str(), failed["sqlstate"].as_str()),
        (Some("error"), Some("22012"))
    );
    assert_eq!(
        outcome_of(&outcomes, &statements[4])["status"],
        "not_executed"
    );
    // Unparsable statements never reach the database under a write grant (fail closed).
    let refused = outcome_of(&outcomes, &statements[5]);
    assert_eq!(
        (refused["status"].as_str(), refused["sqlstate"].as_str()),
        (Some("refused"), Some("42501"))
    );
    assert_eq!(refused["rule"], "unparsable");
    // Each statement record is written before its outcome.
    for s in &statements {
        assert!(outcome_of(&outcomes, s)["seq"].as_u64() > s["seq"].as_u64());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_queries_record_parameters_and_pipeline() {
    let env = Env::start("relay_extended").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let statement = client
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .expect("prepare");
    for n in [1i32, 2, 3] {
        let row = client.query_one(&statement, &[&n]).await.expect("execute");
        assert_eq!(row.get::<_, String>(0), format!("item {n}"));
    }
    // Pipelined: all three are sent before any answer is read.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT $1::text", &[&"x"]),
        client.query_one("SELECT $1::int + 1", &[&41i32]),
        client.query_one("SELECT count(*) FROM items WHERE name = $1", &[&"item 5"]),
    );
    assert_eq!(a.expect("a").get::<_, String>(0), "x");
    assert_eq!(b.expect("b").get::<_, i32>(0), 42);
    assert_eq!(c.expect("c").get::<_, i64>(0), 1);

    let (statements, outcomes) = settled(&env, &id, 6).await;
    assert!(statements.iter().all(|s| s["protocol"] == "extended"));
    let first = &statements[0];
    assert_eq!(first["statement"], "SELECT name FROM items WHERE id = $1");
    // tokio-postgres sends int4 in binary: recorded as hex.
    assert_eq!(
        first["params"],
        serde_json::json!([{"binary_hex": "00000001"}])
    );
    let mut pipelined: Vec<String> = statements[3..]
        .iter()
        .map(|s| {
            s["params"][0]["binary_hex"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    pipelined.sort();
    let mut expected = vec![hex_of("x"), "00000029".to_owned(), hex_of("item 5")];
    expected.sort();
    assert_eq!(pipelined, expected);
    assert!(
        outcomes.iter().all(|o| o["status"] == "ok"),
        "{outcomes:#?}"
    );
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out_pass_through() {
    let env = Env::start("relay_copy").await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let sink = client
        .copy_in("COPY items FROM STDIN")
        .await
        .expect("copy in");
    let rows =
        stream::iter((100..150).map(|i| {
            Ok::<_, tokio_postgres::Error>(bytes::Bytes::from(format!("{i}\tcopied {i}\n")))
        }));
    let mut sink = Box::pin(sink);
    use futures::SinkExt;
    sink.send_all(&mut Box::pin(rows)).await.expect("send rows");
    let copied = sink.as_mut().finish().await.expect("finish");
    assert_eq!(copied, 50);

    let out = client
        .copy_out("COPY (SELECT id FROM items ORDER BY id) TO STDOUT")
        .await
        .expect("copy out");
    let chunks: Vec<_> = Box::pin(out).collect().await;
    let text: String = chunks
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.expect("chunk")).into_owned())
        .collect();
    assert_eq!(text.lines().count(), 60);
    let sent: usize = (100..150).map(|i| format!("{i}\tcopied {i}\n").len()).sum();

    let (statements, outcomes) = settled(&env, &id, 2).await;
    assert_eq!(statements[0]["statement"], "COPY items FROM STDIN");
    assert_eq!(
        outcome_of(&outcomes, &statements[0])["rows"],
        50,
        "{outcomes:#?}"
    );
    assert_eq!(
        outcome_of(&outcomes, &statements[1])["rows"],
        60,
        "{outcomes:#?}"
    );
    // Byte counts: what the client sent in, and what the server sent out.
    assert_eq!(outcome_of(&outcomes, &statements[0])["bytes"], sent);
    assert_eq!(outcome_of(&outcomes, &statements[1])["bytes"], text.len());
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "60");
}

/// Two COPY … TO STDOUT whose results arrive in one read: each outcome has its own bytes.
#[tokio::test(flavor = "multi_thread")]
async fn copies_answered_in_one_read_each_count_their_own_bytes() {
    let env = Env::start("relay_copy_bytes").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = crate::harness::Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&crate::harness::query(
        "COPY (SELECT 1) TO STDOUT; COPY (SELECT generate_series(10, 12)) TO STDOUT",
    ))
    .await;
    raw.read_until_ready().await;
    let (statements, outcomes) = settled(&env, &id, 2).await;
    // "1\n", then "10\n11\n12\n".
    assert_eq!(
        outcome_of(&outcomes, &statements[0])["bytes"],
        2,
        "{outcomes:#?}"
    );
    assert_eq!(
        outcome_of(&outcomes, &statements[1])["bytes"],
        9,
        "{outcomes:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn notices_and_notifications_reach_the_client() {
    let env = Env::start("relay_notify").await;
    // DO blocks are for admin grants only.
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (client, mut connection) = env
        .pg_config("eve", &token)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("login");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let messages = stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(messages.for_each(move |m| {
        if let Ok(m) = m {
            let _ = tx.send(m);
        }
        futures::future::ready(())
    }));
    client
        .batch_execute("LISTEN lockbox_test")
        .await
        .expect("listen");
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from the database'; END $$")
        .await
        .expect("notice");
    env.superuser_sql("NOTIFY lockbox_test, 'ping'");
    let (mut saw_notice, mut saw_notify) = (false, false);
    while !(saw_notice && saw_notify) {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(AsyncMessage::Notice(n))) => {
                saw_notice |= n.message() == "hello from the database"
            }
            Ok(Some(AsyncMessage::Notification(n))) => saw_notify |= n.payload() == "ping",
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("notice {saw_notice}, notification {saw_notify}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_the_right_backend_and_unknown_keys_are_ignored() {
    let env = Env::start("relay_cancel").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let (bystander, _conn2) = env.connect("eve", &token).await.expect("second login");
    let cancel = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(60)").await });
    env.wait_for_audit("the sleep to start", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["statement"] == "SELECT pg_sleep(60)")
    })
    .await;

    // The record precedes the statement upstream: a cancel before the server runs it is lost.
    env.wait_until_running("SELECT pg_sleep(60)").await;
    // A forged key: a raw CancelRequest with numbers nobody was given.
    let mut raw = crate::harness::Raw::connect(env.proxy_port()).await;
    let mut packet = 16i32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102i32.to_be_bytes());
    packet.extend_from_slice(&12345i32.to_be_bytes());
    packet.extend_from_slice(&67890i32.to_be_bytes());
    raw.send(&packet).await;
    let _ = raw.read_to_close().await;
    let one: i32 = bystander
        .query_one("SELECT 1", &[])
        .await
        .expect("bystander")
        .get(0);
    assert_eq!(one, 1);

    cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let result = tokio::time::timeout(Duration::from_secs(20), sleeper)
        .await
        .expect("cancel took effect");
    let err = result.expect("join").expect_err("query was cancelled");
    assert_eq!(db_error(&err).0, "57014");
    let one: i32 = bystander
        .query_one("SELECT 1", &[])
        .await
        .expect("bystander after cancel")
        .get(0);
    assert_eq!(one, 1, "the cancel must only hit its own session");
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_runs_through_the_proxy() {
    let env = Env::start("relay_pgbench").await;
    // pgbench -i creates tables: that takes the owner's role, an admin grant.
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let pgbench = cluster().bin_dir().join("pgbench");
    let port = env.proxy_port().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&pgbench)
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "eve"])
            .args(args)
            .arg(&env.db)
            .env("PGPASSWORD", &token)
            .output()
            .expect("run pgbench");
        assert!(
            out.status.success(),
            "pgbench {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        run(&["-S", "-M", mode, "-c", "2", "-t", "25", "-n"]);
    }
    let selects = env
        .wait_for_audit("150 pgbench selects", |records| {
            records
                .iter()
                .filter(|r| {
                    r["request_id"] == id.as_str()
                        && r["type"] == "statement"
                        && r["statement"]
                            .as_str()
                            .is_some_and(|s| s.contains("FROM pgbench_accounts WHERE aid"))
                })
                .count()
                == 150
        })
        .await;
    assert!(!selects.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_backslash_commands_work_under_a_read_grant() {
    let env = Env::start("relay_psql_meta").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let psql = cluster().bin_dir().join("psql");
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname={} user=eve",
        env.proxy_port(),
        env.db
    );
    for command in [
        "\\d",
        "\\dt",
        "\\d items",
        "\\d+ items",
        "\\l",
        "\\dn",
        "\\df",
        "\\du",
        "\\dv",
        "\\di",
        "\\x on",
    ] {
        let out = std::process::Command::new(&psql)
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", command, &conninfo])
            .env("PGPASSWORD", &token)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {command} failed under a read grant: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub(crate) fn parse(name: &str, sql: &str) -> Vec<u8> {
    crate::harness::message(
        b'P',
        &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat(),
    )
}

pub(crate) fn bind_execute_sync(statement: &str) -> Vec<u8> {
    let mut bytes = crate::harness::message(
        b'B',
        &[b"\0", statement.as_bytes(), b"\0\0\0\0\0\0\0"].concat(),
    );
    bytes.extend(crate::harness::message(b'E', b"\0\0\0\0\0"));
    bytes.extend(crate::harness::message(b'S', b""));
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_parse_cannot_change_what_the_audit_says_runs() {
    let env = Env::start("relay_parse_reject").await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let mut raw = crate::harness::Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let sync = crate::harness::message(b'S', b"");
    raw.send(&[parse("s1", "DELETE FROM items WHERE id = 1"), sync.clone()].concat())
        .await;
    raw.read_until_ready().await;
    // The server refuses to redefine s1 (42P05); the proxy must not believe the client.
    raw.send(&[parse("s1", "SELECT 1"), sync.clone()].concat())
        .await;
    let reply = raw.read_until_ready().await;
    assert_eq!(crate::harness::errors_in(&reply)[0].0, "42P05");
    raw.send(&bind_execute_sync("s1")).await;
    raw.read_until_ready().await;
    assert_eq!(
        env.superuser_sql("SELECT count(*) FROM items WHERE id = 1"),
        "0",
        "the DELETE ran"
    );
    let (statements, outcomes) = settled(&env, &id, 1).await;
    assert_eq!(statements[0]["statement"], "DELETE FROM items WHERE id = 1");
    assert_eq!(statements[0]["kind"], "delete");
    assert_eq!(
        outcome_of(&outcomes, &statements[0])["command_tag"],
        "DELETE 1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_string_inside_a_failed_pipeline_is_recorded_as_not_executed() {
    let env = Env::start("relay_pipeline_query").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = crate::harness::Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let query = crate::harness::query;
    // Execute fails; the server then discards the Query up to the Sync.
    let mut pipeline = parse("", "SELECT 1/0");
    let mut bes = bind_execute_sync("");
    let sync = bes.split_off(bes.len() - 5);
    pipeline.extend(bes);
    pipeline.extend(query("SELECT 'skipped'"));
    pipeline.extend(sync);
    raw.send(&pipeline).await;
    let reply = raw.read_until_ready_after_error().await;
    assert_eq!(crate::harness::errors_in(&reply)[0].0, "22012");
    // Later statements are still matched with their own outcomes.
    raw.send(&query("SELECT 'after'")).await;
    raw.read_until_ready().await;
    let (statements, outcomes) = settled(&env, &id, 3).await;
    let status = |i: usize| outcome_of(&outcomes, &statements[i])["status"].clone();
    assert_eq!(statements[1]["statement"], "SELECT 'skipped'");
    assert_eq!(
        (status(0), status(1), status(2)),
        ("error".into(), "not_executed".into(), "ok".into()),
        "{outcomes:#?}"
    );
    assert_eq!(
        outcome_of(&outcomes, &statements[2])["command_tag"],
        "SELECT 1"
    );
}

/// A pipeline longer than the socket buffers hold, sent while the results are read (as
/// libpq's pipeline mode does): the proxy must keep reading the server's results while it
/// writes the rest of the pipeline, or each side waits for the other forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_larger_than_the_socket_buffers_does_not_stall() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const STATEMENTS: usize = 40;
    const VALUE: usize = 1_000_000;
    let env = Env::start("relay_big_pipeline").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = crate::harness::Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let sync = crate::harness::message(b'S', b"");
    raw.send(&[parse("echo", "SELECT $1::text"), sync.clone()].concat())
        .await;
    raw.read_until_ready().await;
    // Each Bind carries a 1 MB value and each result returns it: 40 MB each way.
    let value = "x".repeat(VALUE);
    let mut bind = vec![0u8];
    bind.extend_from_slice(b"echo\0");
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&(VALUE as i32).to_be_bytes());
    bind.extend_from_slice(value.as_bytes());
    bind.extend_from_slice(&0i16.to_be_bytes());
    let one = [
        crate::harness::message(b'B', &bind),
        crate::harness::message(b'E', b"\0\0\0\0\0"),
    ]
    .concat();
    let mut pipeline = one.repeat(STATEMENTS);
    pipeline.extend_from_slice(&sync);
    let (mut reader, mut writer) = raw.stream.into_split();
    // The writer half is kept until the end: dropping it would tell the proxy the client left.
    let send = tokio::spawn(async move { writer.write_all(&pipeline).await.map(|()| writer) });
    let read = async {
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "the proxy closed the session: {:?}",
                crate::harness::errors_in(&got)
            );
            got.extend_from_slice(&chunk[..n]);
            let mut events = Vec::new();
            lockbox::wire::BackendScanner::default().feed(&got, &mut events);
            if events
                .iter()
                .any(|e| matches!(e, lockbox::wire::BackendEvent::Ready(_)))
            {
                return events
                    .iter()
                    .filter(|e| matches!(e, lockbox::wire::BackendEvent::Complete(_)))
                    .count();
            }
        }
    };
    let completed = tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the pipeline stalled");
    assert_eq!(completed, STATEMENTS);
    send.await
        .expect("join")
        .expect("the whole pipeline was sent");
    // Every Execute recorded, each with its outcome.
    let (statements, outcomes) = settled(&env, &id, STATEMENTS).await;
    for statement in &statements {
        assert_eq!(statement["statement"], "SELECT $1::text", "{statement}");
        assert_eq!(outcome_of(&outcomes, statement)["status"], "ok");
    }
}
