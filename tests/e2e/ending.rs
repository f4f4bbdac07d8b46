//! A session ends whole even when none of its waits waits: a client that floods a pipeline
//! and reads every answer as it comes keeps every write of the relay ready at once, so the
//! relay's end checks, not its races with the terminator, must stop it. (Grown from a
//! helper's attack on the relay's write waits.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockbox::policy::AccessLevel;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::harness::{query, tls_login, Env, Options, Raw};

/// What a client read: whole messages, up to the close.
#[derive(Default, Debug)]
struct Seen {
    bytes: u64,
    /// Where the stream stopped being whole messages, if it did.
    broken: Option<String>,
    /// The last message's type and, for an ErrorResponse, its severity and SQLSTATE.
    last: Option<(u8, Option<(String, String)>)>,
    /// Messages after the first FATAL: there must be none.
    after_fatal: u64,
}

/// Reads to the close as fast as it can, checking the framing as it goes; counts
/// CommandCompletes in `completes`.
async fn read_to_close(mut stream: impl AsyncRead + Unpin, completes: Arc<AtomicU64>) -> Seen {
    let mut seen = Seen::default();
    let (mut pending, mut chunk) = (Vec::new(), vec![0u8; 256 * 1024]);
    let mut fatal = false;
    loop {
        let read = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut chunk))
            .await
            .expect("the session was never closed");
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen.bytes += n as u64;
        pending.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Some(header) = pending.get(at..at + 5) {
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            if len < 4 || !b"RSKZTDCEIsnNAGHWdc123tv".contains(&header[0]) {
                seen.broken = Some(format!("bad header {header:?} at byte {}", seen.bytes));
                return seen;
            }
            let end = at + 1 + len as usize;
            if end > pending.len() {
                break;
            }
            let error = (header[0] == b'E').then(|| severity_and_code(&pending[at + 5..end]));
            seen.after_fatal += u64::from(fatal);
            fatal |= error
                .as_ref()
                .is_some_and(|(severity, _)| severity == "FATAL");
            if header[0] == b'C' {
                completes.fetch_add(1, Ordering::Relaxed);
            }
            seen.last = Some((header[0], error));
            at = end;
        }
        pending.drain(..at);
    }
    if !pending.is_empty() {
        seen.broken = Some(format!(
            "{} bytes of a torn message at the end",
            pending.len()
        ));
    }
    seen
}

fn severity_and_code(body: &[u8]) -> (String, String) {
    let (mut severity, mut code) = (String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'V', v)) => severity = String::from_utf8_lossy(v).into_owned(),
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    (severity, code)
}

/// Sends `statement` over and over, 64 at a time, staying under the proxy's cap on answers
/// outstanding, until `stop`; keeps the socket open after (a FIN would end the session as
/// the client's doing).
fn flood(
    mut stream: impl AsyncWrite + Unpin + Send + 'static,
    statement: &str,
    completes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let batch = query(statement).repeat(64);
    tokio::spawn(async move {
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if sent.saturating_sub(completes.load(Ordering::Relaxed)) > 4000 {
                tokio::task::yield_now().await;
                continue;
            }
            if stream.write_all(&batch).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            sent += 64;
        }
        std::future::pending::<()>().await;
    })
}

/// Waits (bounded) until `completes` passes `at_least`.
async fn wait_for_answers(completes: &AtomicU64, at_least: u64) {
    for _ in 0..300 {
        if completes.load(Ordering::Relaxed) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("only {} answers came", completes.load(Ordering::Relaxed));
}

fn assert_ended_whole(seen: &Seen) {
    assert!(seen.broken.is_none(), "{:?}", seen.broken);
    assert_eq!(seen.after_fatal, 0, "messages after the FATAL");
    let last = seen.last.as_ref().and_then(|(_, error)| error.clone());
    assert_eq!(
        last,
        Some(("FATAL".to_string(), "57P01".to_string())),
        "the stream ends with the session's FATAL: {seen:?}"
    );
}

fn count(env: &Env, sql: &str) -> i64 {
    let out = env.superuser_sql(sql);
    out.lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{sql}: {out}"))
}

/// Every statement of `request` has exactly one outcome and the chain verifies, once the
/// session's end and its backend's are recorded; returns the backend's pid and how many
/// statements ended ok and interrupted.
async fn settled(env: &Env, request: &str) -> (i64, usize, usize) {
    let of_request = |r: &&serde_json::Value| r["request_id"] == request;
    let records = env
        .wait_for_audit("the session's end and every outcome", |records| {
            let ended = records.iter().filter(of_request).any(|r| {
                r["type"] == "session"
                    && r["event"]
                        .as_str()
                        .is_some_and(|e| e == "disconnected" || e.starts_with("dropped"))
            });
            let statements = records.iter().filter(of_request);
            let statements = statements.filter(|r| r["type"] == "statement").count();
            let outcomes = records.iter().filter(of_request);
            let outcomes = outcomes.filter(|r| r["type"] == "outcome").count();
            // The reaper's record of the backend (gone, or terminated) names its pid.
            let reaped = records
                .iter()
                .filter(of_request)
                .any(|r| r["backend_pid"].is_i64());
            ended && reaped && statements > 0 && outcomes >= statements
        })
        .await;
    let mine: Vec<_> = records.iter().filter(of_request).collect();
    let mut outcomes = std::collections::HashMap::<u64, Vec<&str>>::new();
    for r in mine.iter().filter(|r| r["type"] == "outcome") {
        let seq = r["statement_seq"].as_u64().expect("statement_seq");
        outcomes
            .entry(seq)
            .or_default()
            .push(r["status"].as_str().unwrap_or("?"));
    }
    let statements: Vec<u64> = mine
        .iter()
        .filter(|r| r["type"] == "statement")
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    for seq in &statements {
        let got = outcomes.get(seq).map_or(0, Vec::len);
        assert_eq!(got, 1, "statement {seq} has {got} outcomes");
    }
    assert_eq!(
        outcomes.len(),
        statements.len(),
        "outcomes of unknown statements"
    );
    let report = lockbox::audit::chain::verify(&[&env.audit_path], None, true).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    let with = |name: &str| outcomes.values().filter(|o| o[0] == name).count();
    let pid = mine
        .iter()
        .find_map(|r| r["backend_pid"].as_i64())
        .expect("the session's backend pid");
    (pid, with("ok"), with("interrupted"))
}

/// Waits (bounded, to catch "never") until `pid` is no longer a backend.
async fn wait_until_gone(env: &Env, pid: i64) {
    let alive = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    for _ in 0..200 {
        if count(env, &alive) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("backend {pid} still runs after its session ended");
}

/// A write grant floods a pipeline of INSERTs and reads each answer as it comes; then the
/// grant is revoked. The session ends with whole messages and its FATAL, every statement
/// has one outcome, and the table holds exactly the rows the audit says ran (an
/// interrupted INSERT may or may not have committed): nothing ran unrecorded after the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_pipeline_read_at_full_speed_ends_whole_at_revoke_having_run_only_what_was_recorded(
) {
    let env = Env::with("ending_flood", Options::default()).await;
    env.superuser_sql(
        "CREATE TABLE hits (t timestamptz NOT NULL DEFAULT clock_timestamp());
         GRANT INSERT, SELECT ON hits TO lockbox_write, lockbox_md5, lockbox_trust;",
    );
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let (read, write) = raw.stream.into_split();
    let completes = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read_to_close(read, completes.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = flood(
        write,
        "INSERT INTO hits DEFAULT VALUES",
        completes.clone(),
        stop.clone(),
    );
    wait_for_answers(&completes, 2000).await;
    env.client("carol")
        .revoke(&id, "done")
        .await
        .expect("revoke");
    let seen = reader.await.expect("reader");
    stop.store(true, Ordering::Relaxed);
    writer.abort();
    assert_ended_whole(&seen);

    let (pid, ok, interrupted) = settled(&env, &id).await;
    wait_until_gone(&env, pid).await;
    let rows = usize::try_from(count(&env, "SELECT count(*) FROM hits")).expect("rows");
    assert!(ok >= 2000, "{ok} statements ran ok");
    assert!(
        (ok..=ok + interrupted).contains(&rows),
        "{rows} rows, but {ok} INSERTs ran and {interrupted} were interrupted"
    );
}

/// Over TLS: a result without end, read as fast as it comes, then the session is killed.
/// Every write of the relay is ready at once; the session still ends, with whole messages
/// and its FATAL last.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_result_read_at_full_speed_over_tls_ends_whole_when_the_session_is_killed() {
    let env = Env::with(
        "ending_tls_stream",
        Options {
            plaintext: false,
            ..Options::default()
        },
    )
    .await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut tls = tls_login_ready(&env, &token).await;
    let endless = query("SELECT repeat('x', 1000), generate_series(1, 100000000)");
    tls.write_all(&endless).await.expect("query");
    tls.flush().await.expect("flush");
    let (read, _write) = tokio::io::split(tls);
    let reader = tokio::spawn(read_to_close(read, Arc::default()));
    // Killed only once the proxy has the query (recorded, so forwarded right after): a
    // kill that came first would end a session that never ran it.
    env.wait_for_audit("the endless query recorded", |records| {
        records
            .iter()
            .any(|r| r["type"] == "statement" && r["request_id"] == id)
    })
    .await;
    let sessions = env.client("alice").list_sessions().await.expect("sessions");
    let session = sessions
        .iter()
        .find(|s| s.request_id == id)
        .expect("a live session");
    env.client("alice")
        .kill_session(&session.session_id, "done")
        .await
        .expect("kill");
    let seen = reader.await.expect("reader");
    assert!(seen.bytes > 0, "rows flowed");
    assert_ended_whole(&seen);
    let (pid, _, _) = settled(&env, &id).await;
    wait_until_gone(&env, pid).await;
}

/// Logs in over TLS with `token`, up to the first ReadyForQuery.
async fn tls_login_ready(
    env: &Env,
    token: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = tls_login(env, "eve", token).await;
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        let n = tls.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed during login: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let mut events = Vec::new();
        lockbox::wire::BackendScanner::default().feed(&got, &mut events);
        if events
            .iter()
            .any(|e| matches!(e, lockbox::wire::BackendEvent::Ready(_)))
        {
            return tls;
        }
    }
}

/// A script that sends its statement and the Terminate in one write, then reads, gets the
/// statement's answer, as from PostgreSQL itself, and its session ends as a client's own
/// leaving: nothing cancelled (an attack review found the answer lost and the session's end
/// saying the statement was cancelled).
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_sent_with_the_terminate_is_answered() {
    let env = Env::with("ending_goodbye", Options::default()).await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let terminate = [b'X', 0, 0, 0, 4];
    raw.send(&[query("SELECT 40 + 2 AS answer").as_slice(), &terminate].concat())
        .await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), raw.stream.read_to_end(&mut got))
        .await
        .expect("the proxy closes")
        .expect("read");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("answer") && text.contains("42") && text.contains("SELECT 1"),
        "{text:?}"
    );
    let of_request = |r: &&serde_json::Value| r["request_id"] == id.as_str();
    let records = env
        .wait_for_audit("the session's end", |records| {
            records
                .iter()
                .filter(of_request)
                .any(|r| r["type"] == "session" && r["event"] == "disconnected")
        })
        .await;
    let end = records
        .iter()
        .filter(of_request)
        .find(|r| r["event"] == "disconnected")
        .expect("found");
    assert!(end["reason"].is_null(), "{end}");
    let outcome = records
        .iter()
        .filter(of_request)
        .find(|r| r["type"] == "outcome")
        .expect("the statement's outcome");
    assert_eq!(outcome["status"], "ok", "{outcome}");
}
