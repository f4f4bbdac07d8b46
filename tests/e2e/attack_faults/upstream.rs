//! The database crashing or ending a backend in the middle of a result, a pipeline or a
//! COPY: the client gets one whole FATAL and every statement an outcome.

use super::*;

/// Finding: a revocation while a large result streams wrote the FATAL straight after the
/// last read from upstream, which ends inside a DataRow almost every time: the client read
/// the FATAL's bytes as row data and then lost the stream, never learning why.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_during_a_large_result_ends_with_a_whole_fatal() {
    let env = Env::start("atk14_revoke_mid_row").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (mut raw, mut seen) = mid_result(&env, &token, 2 << 20).await;
    env.client("carol")
        .revoke(&id, "done")
        .await
        .expect("revoke");
    seen.extend(raw.read_to_close().await);
    let message = assert_ends_with_fatal(&seen, "57P01");
    assert!(message.contains("revoked"), "{message}");
}

/// Finding: the database crashing while a result streams left the client with half a
/// DataRow and no word (the FATAL was skipped as the scanner was inside a message).
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_a_large_result_ends_with_a_whole_fatal_and_an_interrupted_outcome() {
    let (pg, _stop) = own_cluster();
    let env = Env::with(
        "atk14_crash_mid_row",
        Options {
            cluster: Some(pg),
            ..Options::default()
        },
    )
    .await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (mut raw, mut seen) = mid_result(&env, &token, 2 << 20).await;
    pg.crash().expect("crash the cluster");
    seen.extend(raw.read_to_close().await);
    let message = assert_ends_with_fatal(&seen, "08006");
    assert!(message.contains("upstream"), "{message}");
    let records = env
        .wait_for_audit("the interrupted outcome", |records| {
            records
                .iter()
                .any(|r| r["type"] == "outcome" && r["request_id"] == id.as_str())
        })
        .await;
    let outcomes: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "outcome" && r["request_id"] == id.as_str())
        .collect();
    assert_eq!(outcomes.len(), 1, "{outcomes:#?}");
    assert_eq!(outcomes[0]["status"], "interrupted", "{outcomes:#?}");
}

/// The FATAL fix holds back the start of a message until it is whole (up to 64 KiB) and
/// streams larger ones: rows on either side of the limit, and a notice between them, still
/// arrive whole and in order.
#[tokio::test(flavor = "multi_thread")]
async fn rows_either_side_of_the_hold_limit_arrive_whole() {
    let env = Env::start("atk14_hold_limit").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    let rows = client
        .query(
            "SELECT g, repeat(chr(65 + g % 26), CASE WHEN g % 3 = 0 THEN 200000 ELSE 30000 + g END) \
             FROM generate_series(1, 60) g",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(rows.len(), 60);
    for row in rows {
        let g: i32 = row.get(0);
        let text: String = row.get(1);
        let want = if g % 3 == 0 {
            200_000
        } else {
            30_000 + g as usize
        };
        assert_eq!(text.len(), want, "row {g}");
        let letter = char::from(b'A' + (g % 26) as u8);
        assert!(text.chars().all(|c| c == letter), "row {g} is intact");
    }
    client
        .simple_query("SELECT 1")
        .await
        .expect("the session goes on");
}

/// Finding: the relay took any ErrorResponse as the server's own last word, so a database
/// that crashed while a pipeline waited for its Sync after an ordinary ERROR left the
/// client with that ERROR and a closed socket: no FATAL, no cause.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_an_error_in_a_pipeline_still_gets_the_fatal() {
    use crate::harness::{errors_in, message};
    use tokio::io::AsyncReadExt;
    let (pg, _stop) = own_cluster();
    let env = Env::with(
        "atk14_crash_after_error",
        Options {
            cluster: Some(pg),
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    let mut seen = raw.read_until_ready().await;
    // Parse, Bind, Execute of a statement that fails, and a Flush: no Sync, so the server
    // sends the ERROR and waits.
    let mut batch = message(b'P', b"\0SELECT 1/0\0\0\0");
    batch.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(message(b'E', b"\0\0\0\0\0"));
    batch.extend(message(b'H', b""));
    raw.send(&batch).await;
    let mut chunk = [0u8; 4096];
    while !errors_in(&seen).iter().any(|(code, _)| code == "22012") {
        let n = tokio::time::timeout(Duration::from_secs(10), raw.stream.read(&mut chunk))
            .await
            .expect("the error arrives")
            .expect("read");
        assert!(n > 0, "closed before the error");
        seen.extend_from_slice(&chunk[..n]);
    }
    pg.crash().expect("crash the cluster");
    seen.extend(raw.read_to_close().await);
    assert_ends_with_fatal(&seen, "08006");
}

/// Checked sound (and kept so by the fix above): a backend the server itself ends says why
/// with its own FATAL, which reaches the client whole, and the proxy adds none of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_the_server_terminates_ends_with_the_servers_fatal_alone() {
    let env = Env::start("atk14_server_fatal").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    let mut seen = raw.read_until_ready().await;
    env.superuser_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND usename = 'lockbox_read'",
        env.db
    ));
    seen.extend(raw.read_to_close().await);
    let message = assert_ends_with_fatal(&seen, "57P01");
    assert!(message.contains("administrator command"), "{message}");
    let fatals = crate::harness::errors_in(&seen).len();
    assert_eq!(fatals, 1, "one FATAL, the server's");
}

/// Checked sound: the database crashing while a client streams COPY FROM STDIN ends the
/// session with a whole FATAL (the proxy drains what the client still writes, so no reset
/// throws it away), and the COPY's record gets an `interrupted` outcome.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_copy_in_ends_with_a_fatal_and_an_interrupted_copy() {
    use crate::harness::message;
    use tokio::io::AsyncWriteExt;
    let (pg, _stop) = own_cluster();
    let env = Env::with(
        "atk14_crash_copy_in",
        Options {
            cluster: Some(pg),
            ..Options::default()
        },
    )
    .await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    let mut seen = raw.read_until_ready().await;
    raw.send(&query("CREATE TEMP TABLE t (x text)")).await;
    seen.extend(raw.read_until_ready().await);
    raw.send(&query("COPY t FROM STDIN")).await;
    let (mut read, mut write) = raw.stream.into_split();
    let writer = tokio::spawn(async move {
        let row = message(b'd', format!("{}\n", "y".repeat(1000)).as_bytes());
        let chunk: Vec<u8> = row.iter().copied().cycle().take(row.len() * 64).collect();
        while write.write_all(&chunk).await.is_ok() {}
    });
    // Let the COPY run a while, then crash the database under it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.crash().expect("crash the cluster");
    let mut rest = Vec::new();
    let read_all = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 8192];
        while let Ok(n) = read.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(read_all.is_ok(), "the proxy did not close the connection");
    writer.abort();
    seen.extend(rest);
    assert_ends_with_fatal(&seen, "08006");
    let records = env
        .wait_for_audit("the COPY's outcome", |records| {
            records.iter().any(|r| {
                r["type"] == "outcome" && r["request_id"] == id.as_str() && r["status"] != "ok"
            })
        })
        .await;
    let copy = records
        .iter()
        .find(|r| {
            r["type"] == "statement"
                && r["request_id"] == id.as_str()
                && r["statement"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("COPY"))
        })
        .expect("the COPY's statement record");
    let outcome = records
        .iter()
        .find(|r| r["type"] == "outcome" && r["statement_seq"] == copy["seq"])
        .expect("the COPY's outcome");
    assert_eq!(outcome["status"], "interrupted", "{outcome:#?}");
}

/// Statement records of `request` that have no outcome record.
fn statements_without_outcome(env: &Env, request: &str) -> Vec<u64> {
    let records = env.audit();
    let settled: BTreeSet<u64> = records
        .iter()
        .filter(|r| r["type"] == "outcome")
        .filter_map(|r| r["statement_seq"].as_u64())
        .collect();
    records
        .iter()
        .filter(|r| r["type"] == "statement" && r["request_id"] == request)
        .filter_map(|r| r["seq"].as_u64())
        .filter(|seq| !settled.contains(seq))
        .collect()
}

/// Finding: a revocation while a batch's records waited for their fsync left them in the
/// trail (they were written before the wait) with no outcome, and never sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_while_records_wait_for_their_fsync_leaves_no_statement_without_outcome() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::start("atk14_revoke_in_fsync").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut raw = Raw::login(&env, "eve", &token).await;
        raw.read_until_ready().await;
        let (mut read, mut write) = raw.stream.into_split();
        tasks.push(tokio::spawn(async move {
            // One query per write: each read of the relay is a batch of its own, and most
            // of a batch's time is its fsync.
            let q = query("SELECT 1");
            while write.write_all(&q).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
        tasks.push(tokio::spawn(async move {
            let mut sink = [0u8; 8192];
            while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.client("carol")
        .revoke(&id, "done")
        .await
        .expect("revoke");
    env.wait_for_audit("the 4 sessions' ends", |records| {
        records
            .iter()
            .filter(|r| {
                r["type"] == "session"
                    && r["request_id"] == id.as_str()
                    && r["event"] == "dropped_revoked"
            })
            .count()
            == 4
    })
    .await;
    for task in tasks {
        task.abort();
    }
    let mut missing = Vec::new();
    for _ in 0..20 {
        missing = statements_without_outcome(&env, &id);
        if missing.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("statement records without an outcome: {missing:?}");
}

/// Checked sound: while one database is down the proxy serves another, and once the first
/// is back new sessions to it work; the live-session count falls back to zero.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_database_spares_the_other_and_serves_again_once_back() {
    let (pg, _stop) = own_cluster();
    // The deployment's `other` database, on the shared cluster (made once, kept).
    let _ = crate::harness::cluster().psql(
        "postgres",
        &format!(
            "CREATE DATABASE other OWNER {}",
            crate::harness::SERVICE_ROLE
        ),
    );
    let env = Env::with(
        "atk14_crash_other",
        Options {
            cluster: Some(pg),
            other_cluster: Some(crate::harness::cluster()),
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (_, other_token) = env
        .approved(
            "bob",
            lockbox::policy::NewRequest {
                database: "other".into(),
                ticket: "T-2".into(),
                reason: "investigate".into(),
                access: AccessLevel::Read,
                duration: Some("1h".into()),
                ..lockbox::policy::NewRequest::default()
            },
        )
        .await;
    let (client, conn) = env.connect("eve", &token).await.expect("connect");
    client.simple_query("SELECT 1").await.expect("query");
    pg.crash().expect("crash the cluster");
    let failed = client.simple_query("SELECT 1").await;
    assert!(failed.is_err(), "a query on a crashed database fails");
    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
    // The other database, on another cluster, is served meanwhile.
    let mut other = env.pg_config("bob", &other_token);
    other.dbname("other");
    let (other_client, other_conn) = other
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the other database");
    tokio::spawn(other_conn);
    other_client
        .simple_query("SELECT 1")
        .await
        .expect("the other database answers");
    // A new session to the crashed one is refused clearly, then works once it is back.
    let Err(refused) = env.connect("eve", &token).await else {
        panic!("a session was admitted to a crashed database");
    };
    let (code, message) = crate::harness::db_error(&refused);
    assert_eq!(code, "08006", "{message}");
    pg.start_again().expect("start the cluster again");
    let (again, _conn) = env.connect("eve", &token).await.expect("connect again");
    again.simple_query("SELECT 1").await.expect("query again");
}

/// Checked with the fix above: a grant expiring while a large result streams, with a
/// warning due meanwhile, gives whole messages throughout (the warning between two rows)
/// and ends with the expiry's FATAL.
#[tokio::test(flavor = "multi_thread")]
async fn an_expiry_during_a_large_result_warns_between_rows_and_ends_with_a_whole_fatal() {
    use tokio::io::AsyncReadExt;
    let env = Env::with(
        "atk14_expiry_mid_row",
        Options {
            timings: "warn_before = [\"8s\"]",
            ..Options::default()
        },
    )
    .await;
    // Long enough that a loaded machine still logs in and reads the first MiB well
    // before the warning: the test is about what the end looks like, not when it comes.
    let (_, token) = env.approved_token("eve", "20s").await;
    let (mut raw, seen) = mid_result(&env, &token, 1 << 20).await;
    // Checked as it streams: only whole messages are kept, so memory stays small.
    let mut buf = seen;
    let mut notices = Vec::new();
    let mut last = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut at = 0;
        while let Some(header) = buf.get(at..at + 5) {
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            let end = at + 1 + usize::try_from(len).expect("a length");
            let Some(message) = buf.get(at..end) else {
                break;
            };
            let whole = frames(message).unwrap_or_else(|e| panic!("{e}"));
            if message[0] == b'N' {
                notices.push(error_fields(&message[5..]).2);
            }
            last = whole.into_iter().next();
            at = end;
        }
        buf.drain(..at);
        let n = tokio::time::timeout_at(deadline, raw.stream.read(&mut chunk))
            .await
            .expect("the session ends by its deadline")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(
        buf.is_empty(),
        "a torn message at the end: {} bytes",
        buf.len()
    );
    assert!(
        notices.iter().any(|n| n.contains("ends in")),
        "the warning arrived: {notices:?}"
    );
    let (tag, body) = last.expect("messages");
    assert_eq!(char::from(tag), 'E');
    let (severity, code, message) = error_fields(&body);
    assert_eq!(
        (severity.as_str(), code.as_str()),
        ("FATAL", "57P01"),
        "{message}"
    );
    assert!(message.contains("expired"), "{message}");
}

/// A server that ends a backend itself while its client streams COPY FROM STDIN: the
/// client still reads the server's FATAL (no reset from unread COPY data discards it).
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_terminated_during_copy_in_still_shows_the_servers_fatal() {
    use crate::harness::message;
    use tokio::io::AsyncWriteExt;
    let env = Env::start("atk14_terminate_copy_in").await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    let mut seen = raw.read_until_ready().await;
    raw.send(&query("CREATE TEMP TABLE t (x text)")).await;
    seen.extend(raw.read_until_ready().await);
    raw.send(&query("COPY t FROM STDIN")).await;
    let (mut read, mut write) = raw.stream.into_split();
    let writer = tokio::spawn(async move {
        let row = message(b'd', format!("{}\n", "y".repeat(1000)).as_bytes());
        let chunk: Vec<u8> = row.iter().copied().cycle().take(row.len() * 64).collect();
        while write.write_all(&chunk).await.is_ok() {}
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.superuser_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND usename = 'lockbox_write'",
        env.db
    ));
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 8192];
        while let Ok(n) = read.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    writer.abort();
    seen.extend(rest);
    let message = assert_ends_with_fatal(&seen, "57P01");
    assert!(message.contains("administrator command"), "{message}");
}
