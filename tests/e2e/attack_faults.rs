//! An independent review's attacks on the upstream-gone handling of the relay and on the
//! concurrent notification dispatcher: each test is a finding (or a promise checked).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockbox::policy::AccessLevel;
use lockbox::sandbox::PgSandbox;

use crate::harness::{
    create_roles, query, Env, Options, Raw, PROVISIONER_PASSWORD, PROVISIONER_ROLE,
};

/// A cluster of the test's own, for faults the shared one must not suffer. It stays
/// allocated for the test binary's life (`Options::cluster` takes a `'static`); the guard
/// resumes and stops it when the test ends, passed or failed.
fn own_cluster() -> (&'static PgSandbox, StopAtEnd) {
    let pg = PgSandbox::start().unwrap_or_else(|e| panic!("cannot start a test PostgreSQL: {e}"));
    create_roles(&pg);
    let pg: &'static PgSandbox = Box::leak(Box::new(pg));
    (pg, StopAtEnd(pg))
}

struct StopAtEnd(&'static PgSandbox);

impl Drop for StopAtEnd {
    fn drop(&mut self) {
        let _ = self.0.freeze(false);
        let _ = self.0.crash();
    }
}

/// The messages of a backend byte stream, each as (type, body); an error names the first
/// byte where the stream stops being whole messages.
fn frames(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 5) else {
            return Err(format!("a torn header at byte {at} of {}", bytes.len()));
        };
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let Ok(len) = usize::try_from(len) else {
            return Err(format!("a negative length at byte {at}"));
        };
        if len < 4 {
            return Err(format!("a length below 4 at byte {at}"));
        }
        let Some(body) = bytes.get(at + 5..at + 1 + len) else {
            return Err(format!(
                "a torn '{}' message at byte {at}: {} bytes declared, {} there",
                char::from(header[0]),
                len - 4,
                bytes.len() - at - 5
            ));
        };
        if !b"RSKZTDCEIsnNAGHWdc123tv".contains(&header[0]) {
            return Err(format!(
                "an unknown message type 0x{:02x} at byte {at} (a message spliced into another)",
                header[0]
            ));
        }
        out.push((header[0], body.to_vec()));
        at += 1 + len;
    }
    Ok(out)
}

/// The severity and SQLSTATE of an ErrorResponse body.
fn error_fields(body: &[u8]) -> (String, String, String) {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        let Some((&kind, value)) = field.split_first() else {
            continue;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'V' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (severity, code, message)
}

/// Asserts that `bytes` are whole messages ending with a FATAL of `code`; returns its text.
fn assert_ends_with_fatal(bytes: &[u8], code: &str) -> String {
    let messages = frames(bytes).unwrap_or_else(|e| {
        panic!(
            "the client got a broken stream ({e}); its last 64 bytes: {:?}",
            &bytes[bytes.len().saturating_sub(64)..]
        )
    });
    let Some((tag, body)) = messages.last() else {
        panic!("the client got nothing")
    };
    assert_eq!(
        char::from(*tag),
        'E',
        "the stream does not end with an ErrorResponse"
    );
    let (severity, got, message) = error_fields(body);
    assert_eq!(
        (severity.as_str(), got.as_str()),
        ("FATAL", code),
        "{message}"
    );
    message
}

/// Logs in raw, starts a result far larger than any buffer and reads `at_least` bytes of it.
async fn mid_result(env: &Env, token: &str, at_least: usize) -> (Raw, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut raw = Raw::login(env, "eve", token).await;
    let mut seen = raw.read_until_ready().await;
    // Rows of 1,011 bytes: the server's 8 KiB writes end inside a row almost every time.
    raw.send(&query(
        "SELECT repeat('x', 1000) FROM generate_series(1, 100000000)",
    ))
    .await;
    let mut chunk = vec![0u8; 64 * 1024];
    while seen.len() < at_least {
        let n = tokio::time::timeout(Duration::from_secs(20), raw.stream.read(&mut chunk))
            .await
            .expect("rows arrive")
            .expect("read");
        assert!(n > 0, "closed before the rows");
        seen.extend_from_slice(&chunk[..n]);
    }
    (raw, seen)
}

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

/// Finding: a database stalled (SIGSTOP) in the middle of a result, then the grant revoked:
/// the FATAL went after the half row the proxy had forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_while_the_database_is_stalled_mid_row_ends_with_a_whole_fatal() {
    let (pg, _stop) = own_cluster();
    let env = Env::with(
        "atk14_stall_mid_row",
        Options {
            cluster: Some(pg),
            ..Options::default()
        },
    )
    .await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (mut raw, mut seen) = mid_result(&env, &token, 2 << 20).await;
    pg.freeze(true).expect("stall the cluster");
    // Let what was on its way reach the client's socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.client("carol")
        .revoke(&id, "done")
        .await
        .expect("revoke");
    seen.extend(raw.read_to_close().await);
    pg.freeze(false).expect("resume the cluster");
    assert_ends_with_fatal(&seen, "57P01");
}

/// Finding: with TLS to the upstream, the TLS negotiation was outside the connect timeout:
/// admission against a stalled database hung for ever instead of failing clearly.
#[tokio::test(flavor = "multi_thread")]
async fn admission_to_a_stalled_database_over_tls_times_out_with_a_clear_error() {
    let (pg, _stop) = own_cluster();
    let (ca, cert, key) =
        lockbox::tls::generate_ca_signed(&["127.0.0.1".into()]).expect("generate CA");
    pg.enable_tls(&cert, &key).expect("TLS on the cluster");
    let env = Env::with(
        "atk14_stalled_tls",
        Options {
            cluster: Some(pg),
            upstream_tls: "tls = \"verify-full\"\ntls_ca = \"ca.pem\"",
            ca_override: Some(ca),
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    // Healthy first: the setup is right.
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    client.simple_query("SELECT 1").await.expect("query");
    pg.freeze(true).expect("stall the cluster");
    let connect = tokio::time::timeout(Duration::from_secs(45), env.connect("eve", &token)).await;
    pg.freeze(false).expect("resume the cluster");
    let Ok(result) = connect else {
        panic!("admission against a stalled database did not end within 45 s");
    };
    let Err(e) = result else {
        panic!("a session was admitted to a stalled database");
    };
    let (code, message) = crate::harness::db_error(&e);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("did not answer"), "{message}");
}

/// Finding: with per-grant roles, the role is made over a service connection whose login
/// was unbounded (tokio-postgres bounds only the TCP connect): a new grant's first session
/// against a stalled database hung for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_grants_first_session_to_a_stalled_database_times_out_with_a_clear_error() {
    let (pg, _stop) = own_cluster();
    let env = Env::with(
        "atk14_stalled_provision",
        Options {
            cluster: Some(pg),
            upstream_user: PROVISIONER_ROLE,
            upstream_password: PROVISIONER_PASSWORD,
            provisioning: "per_grant_roles = true",
            ..Options::default()
        },
    )
    .await;
    let (_, first) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &first).await.expect("connect");
    client.simple_query("SELECT 1").await.expect("query");
    let (_, second) = env.approved_token_for("bob", "1h", AccessLevel::Read).await;
    pg.freeze(true).expect("stall the cluster");
    let connect = tokio::time::timeout(Duration::from_secs(60), env.connect("bob", &second)).await;
    pg.freeze(false).expect("resume the cluster");
    let Ok(result) = connect else {
        panic!("admission of a new grant against a stalled database did not end within 60 s");
    };
    let Err(e) = result else {
        panic!("a session was admitted to a stalled database");
    };
    let (code, message) = crate::harness::db_error(&e);
    assert_eq!(code, "08006", "{message}");
}

/// An SMTP "server" that accepts connections and never says a word.
async fn silent_listener() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

/// Finding: lettre's `timeout` bounds only the SMTP connect; a relay that accepts and never
/// greets held the delivery (and one of the 8 slots) for ever, never retried, and 8 such
/// deliveries stopped every notification.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_smtp_relay_times_out_and_the_delivery_is_retried() {
    let smtp_port = silent_listener().await;
    let settings = format!(
        "\n[notifications]\nretry_base = \"100ms\"\nmax_attempts = 50\n\
         [notifications.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nfrom = \"lockbox@example.test\"\n"
    );
    let env = Env::with(
        "atk14_silent_smtp",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    let id = env.pending_request("eve", "1h").await;
    for _ in 0..400 {
        let list = env
            .client("alice")
            .notifications(Some(&id), None)
            .await
            .expect("status");
        if list
            .iter()
            .any(|d| d.channel == "smtp" && d.attempts >= 1 && d.last_error.is_some())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a delivery to a silent SMTP relay never ended in 40 s");
}

/// A webhook receiver answering 200 to every POST, recording each path.
async fn recording_receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let paths = Arc::new(Mutex::new(Vec::new()));
    let store = paths.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let store = store.clone();
        async move {
            store.lock().expect("paths").push(uri.path().to_owned());
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, paths)
}

/// Finding: the dispatcher polled its deliveries itself, and each records its attempt
/// through the PostgreSQL store's pool of 4 connections: deliveries that took a connection,
/// then were not polled while the dispatcher awaited the store, held all 4 for ever. The
/// node's API, decisions and admissions all hung behind them.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_deliveries_leaves_the_shared_store_answering() {
    let (port, paths) = recording_receiver().await;
    let mut settings = String::from("\n[notifications]\nretry_base = \"100ms\"\n");
    for n in 0..8 {
        settings.push_str(&format!(
            "[[notifications.webhooks]]\nurl = \"http://127.0.0.1:{port}/hook/{n}\"\n"
        ));
    }
    let env = Env::with(
        "atk14_pool",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            state_postgres: true,
            ..Options::default()
        },
    )
    .await;
    for round in 0..5 {
        let id = env.pending_request("eve", "1h").await;
        let mut delivered = 0;
        for _ in 0..300 {
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                env.client("alice").notifications(Some(&id), None),
            )
            .await;
            let Ok(list) = answer else {
                panic!(
                    "round {round}: the API hung on the state store after {} webhook calls",
                    paths.lock().expect("paths").len()
                );
            };
            delivered = list
                .expect("status")
                .iter()
                .filter(|d| d.status == "delivered")
                .count();
            if delivered == 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            delivered, 8,
            "round {round}: not every delivery was recorded"
        );
    }
}

/// Finding: on a shared (PostgreSQL) store the dispatcher claimed up to 100 due deliveries
/// for two minutes but sent only as many as it had free slots (8): the rest waited out the
/// claim before anyone sent them.
#[tokio::test(flavor = "multi_thread")]
async fn more_deliveries_than_slots_all_go_out_promptly_on_a_shared_store() {
    let (port, paths) = recording_receiver().await;
    let mut settings = String::from("\n[notifications]\nretry_base = \"100ms\"\n");
    for n in 0..12 {
        settings.push_str(&format!(
            "[[notifications.webhooks]]\nurl = \"http://127.0.0.1:{port}/hook/{n}\"\n"
        ));
    }
    let env = Env::with(
        "atk14_claims",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            state_postgres: true,
            ..Options::default()
        },
    )
    .await;
    env.pending_request("eve", "1h").await;
    for _ in 0..300 {
        let seen: BTreeSet<String> = paths.lock().expect("paths").iter().cloned().collect();
        if seen.len() == 12 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen: BTreeSet<String> = paths.lock().expect("paths").iter().cloned().collect();
    panic!(
        "only {} of 12 deliveries arrived within 30 s: {seen:?}",
        seen.len()
    );
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

/// Finding: delivery is at least once (an attempt the receiver took but whose answer was
/// lost to the timeout or to a crash of the proxy is made again), and a repeat looked like a
/// new notification: every attempt of one delivery now carries the same Idempotency-Key.
#[tokio::test(flavor = "multi_thread")]
async fn every_attempt_of_one_delivery_carries_the_same_idempotency_key() {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let store = keys.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let store = store.clone();
        async move {
            let key = headers
                .get("idempotency-key")
                .and_then(|k| k.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let mut keys = store.lock().expect("keys");
            keys.push(key);
            // The first attempt "fails" as one whose answer was lost would.
            if keys.len() == 1 {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                axum::http::StatusCode::OK
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let settings = format!(
        "\n[notifications]\nretry_base = \"100ms\"\n\
         [[notifications.webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\n"
    );
    let env = Env::with(
        "atk14_idempotency",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    env.pending_request("eve", "1h").await;
    for _ in 0..100 {
        let seen = keys.lock().expect("keys").clone();
        if seen.len() >= 2 {
            assert!(!seen[0].is_empty(), "an attempt without an Idempotency-Key");
            assert_eq!(seen[0], seen[1], "two attempts of one delivery");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the delivery was not retried");
}

/// A TCP server answering every connection with `serve`.
async fn raw_receiver<F, Fut>(serve: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket));
        }
    });
    port
}

/// Checked sound: a webhook receiver that drips its answer a byte a second (defeating a
/// per-read timeout) is cut at the delivery timeout and retried; one answering 200 with an
/// endless body is delivered at once (the body is never read).
#[tokio::test(flavor = "multi_thread")]
async fn a_dripping_receiver_times_out_and_an_endless_body_is_not_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let drip = raw_receiver(|mut socket| async move {
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf).await;
        for byte in b"HTTP/1.1 200 OK\r\n".iter().cycle() {
            if socket.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    let endless = raw_receiver(|mut socket| async move {
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf).await;
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n";
        if socket.write_all(head).await.is_err() {
            return;
        }
        let zeros = vec![0u8; 64 * 1024];
        while socket.write_all(&zeros).await.is_ok() {}
    })
    .await;
    let settings = format!(
        "\n[notifications]\nretry_base = \"100ms\"\nmax_attempts = 50\n\
         [[notifications.webhooks]]\nurl = \"http://127.0.0.1:{drip}/hook\"\n\
         [[notifications.webhooks]]\nurl = \"http://127.0.0.1:{endless}/hook\"\n"
    );
    let env = Env::with(
        "atk14_drip",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    let id = env.pending_request("eve", "1h").await;
    for _ in 0..300 {
        let list = env
            .client("alice")
            .notifications(Some(&id), None)
            .await
            .expect("status");
        let dripped = list.iter().any(|d| {
            d.target.contains(&drip.to_string()) && d.attempts >= 1 && d.last_error.is_some()
        });
        let endless_delivered = list
            .iter()
            .any(|d| d.target.contains(&endless.to_string()) && d.status == "delivered");
        if dripped && endless_delivered {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the dripping receiver was not cut, or the endless body held its delivery");
}

/// Checked sound: a cancel request for a session on a stalled database is forwarded and
/// its connection closed in bounded time (the server's answer is waited for 2 s at most).
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_request_to_a_stalled_database_does_not_hang() {
    let (pg, _stop) = own_cluster();
    let env = Env::with(
        "atk14_stalled_cancel",
        Options {
            cluster: Some(pg),
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    let hello = raw.read_until_ready().await;
    let messages = frames(&hello).expect("whole messages");
    let key = messages
        .iter()
        .find(|(tag, _)| *tag == b'K')
        .map(|(_, body)| body.clone())
        .expect("BackendKeyData");
    pg.freeze(true).expect("stall the cluster");
    let mut cancel = Raw::connect(env.proxy_port()).await;
    let mut packet = 16i32.to_be_bytes().to_vec();
    packet.extend(80_877_102i32.to_be_bytes());
    packet.extend(&key);
    cancel.send(&packet).await;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut sink = Vec::new();
        let _ = cancel.stream.read_to_end(&mut sink).await;
    })
    .await;
    pg.freeze(false).expect("resume the cluster");
    assert!(
        closed.is_ok(),
        "the cancel request hung on a stalled database"
    );
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
