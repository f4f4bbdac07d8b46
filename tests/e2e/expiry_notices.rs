//! When access ends, as the engineer's client sees it: a NOTICE at login, warnings before
//! the end (`[timings] warn_before`), each written between two messages of the stream —
//! also while a large result or a COPY is streaming.

use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::harness::{query, Env, Options, Raw};

/// Connects with tokio-postgres; the notices the connection receives come on the channel.
async fn connect_with_notices(
    env: &Env,
    token: &str,
) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) = env
        .pg_config("eve", token)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("login");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(notice) = message {
                let _ = tx.send(notice.message().to_owned());
            }
        }
    });
    (client, rx)
}

async fn next_notice(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a notice in time")
        .expect("the connection is up")
}

#[tokio::test(flavor = "multi_thread")]
async fn login_says_when_access_ends() {
    let env = Env::start("notice_login").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let end = env
        .client("eve")
        .show_request(&id)
        .await
        .expect("show")
        .access_expires_at
        .expect("window end");
    let (client, mut notices) = connect_with_notices(&env, &token).await;
    client.simple_query("SELECT 1").await.expect("query");
    let login = next_notice(&mut notices).await;
    assert_eq!(
        login,
        format!(
            "lockbox: access for request {id} ends at {} (in 1h)",
            end.format("%Y-%m-%d %H:%M:%S UTC")
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_is_warned_before_the_end() {
    let env = Env::with(
        "notice_idle",
        Options {
            timings: "warn_before = [\"1h\", \"3s\"]",
            ..Default::default()
        },
    )
    .await;
    // The login must come before the warning is due (a warning already past at login is
    // skipped): 7s leave a busy machine room for it.
    let (id, token) = env.approved_token("eve", "10s").await;
    let (_client, mut notices) = connect_with_notices(&env, &token).await;
    assert!(next_notice(&mut notices).await.contains("ends at"));
    // The 1h offset is longer than the window: skipped.
    let warning = next_notice(&mut notices).await;
    assert!(
        warning.starts_with(&format!("lockbox: access for request {id} ends in 3s, at "))
            || warning.starts_with(&format!("lockbox: access for request {id} ends in 2s, at ")),
        "{warning}"
    );
    assert!(warning.contains(&format!("lockbox request extend {id}")));
}

/// One backend message: its tag and body.
fn messages(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        assert!(at + 5 <= bytes.len(), "a torn header at {at}");
        let len = i32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]]);
        let end = at + 1 + usize::try_from(len).expect("length");
        assert!(end <= bytes.len(), "a torn message at {at}");
        out.push((bytes[at], &bytes[at + 5..end]));
        at = end;
    }
    out
}

/// Reads until a ReadyForQuery follows the query's response (bounded).
async fn read_response(raw: &mut Raw) -> Vec<u8> {
    let mut out = Vec::new();
    let mut scanner = lockbox::wire::BackendScanner::default();
    let mut ready = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    while ready < 2 {
        let n = tokio::time::timeout(Duration::from_secs(30), raw.stream.read(&mut chunk))
            .await
            .expect("the response in time")
            .expect("read");
        assert!(n > 0, "closed early");
        let mut events = Vec::new();
        scanner.feed(&chunk[..n], &mut events);
        ready += events
            .iter()
            .filter(|e| matches!(e, lockbox::wire::BackendEvent::Ready(_)))
            .count();
        out.extend_from_slice(&chunk[..n]);
    }
    out
}

/// A result that streams for at least 9s in rows of 20 kB: the warning (due 4s after the
/// approval) falls in the middle of it, while reads end inside rows. The margins are for a
/// busy machine: 4s for the login and the query's start, 5s of rows after the warning, and
/// 6s more before the window's end would cut the stream.
const ROWS: usize = 900;
const ROW_BYTES: usize = 20_000;

async fn warned_mid_stream(name: &str, sql: &str, row_tag: u8) {
    let env = Env::with(
        name,
        Options {
            timings: "warn_before = [\"12s\"]",
            ..Default::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "16s").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.send(&query(sql)).await;
    let bytes = read_response(&mut raw).await;
    let all = messages(&bytes);
    let notices: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (tag, _))| *tag == b'N')
        .map(|(i, _)| i)
        .collect();
    assert_eq!(notices.len(), 2, "login and one warning");
    let rows: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (tag, _))| *tag == row_tag)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(rows.len(), ROWS, "every row arrived");
    for (_, body) in rows.iter().map(|i| all[*i]) {
        let x = body.iter().filter(|b| **b == b'x').count();
        assert_eq!(x, ROW_BYTES, "each row whole");
    }
    let warning = notices[1];
    assert!(
        rows[0] < warning && warning < rows[ROWS - 1],
        "the warning came while rows were streaming (message {warning} of {})",
        all.len()
    );
    let text = String::from_utf8_lossy(all[warning].1);
    assert!(text.contains("ends in"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warning_due_mid_result_arrives_whole_between_rows() {
    warned_mid_stream(
        "notice_rows",
        &format!("SELECT repeat('x', {ROW_BYTES}) FROM generate_series(1, {ROWS}) g WHERE pg_sleep(0.01) IS NOT NULL"),
        b'D',
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warning_due_mid_copy_arrives_whole_between_copy_data() {
    warned_mid_stream(
        "notice_copy",
        &format!("COPY (SELECT repeat('x', {ROW_BYTES}) FROM generate_series(1, {ROWS}) g WHERE pg_sleep(0.01) IS NOT NULL) TO STDOUT"),
        b'd',
    )
    .await;
}
