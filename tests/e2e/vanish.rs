//! A client that vanishes while the server is still sending (a large COPY or a pipeline's
//! results) takes its upstream backend with it: the proxy closes the upstream connection
//! at once, the backend stops at its next send, and nothing has to be terminated.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::harness::{message, query, Env, Raw};

/// More rows than any socket buffer holds: the backend is mid-send when the client goes.
/// The series streams from a subquery's column (in FROM it would be stored whole first).
const BIG_COPY: &str = "COPY (SELECT g, repeat('x', 1000) FROM (SELECT generate_series(1, 50000000) AS g) AS s) TO STDOUT";

fn count(env: &Env, sql: &str) -> i64 {
    env.superuser_sql(sql).parse().expect("a count")
}

/// The pid of the backend running `sql` in the test's database (waits for it to start).
pub(crate) async fn backend_running(env: &Env, sql: &str) -> i32 {
    let find = format!(
        "SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE datname = '{}' AND query = '{}'",
        env.db,
        sql.replace('\'', "''")
    );
    for _ in 0..100 {
        let pid = count(env, &find);
        if pid != 0 {
            return i32::try_from(pid).expect("a pid");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the statement never started: {sql}");
}

/// The trail once it holds the reaper's record of what became of backend `pid` of request
/// `id` (gone by itself, terminated, or not made sure of).
async fn backend_fate(env: &Env, id: &str, pid: i32) -> Vec<serde_json::Value> {
    env.wait_for_audit("what became of the backend", |records| {
        records.iter().any(|r| {
            r["request_id"] == id
                && r["backend_pid"] == pid
                && r["event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("backend_"))
        })
    })
    .await
}

/// An environment whose reaper waits its longest window (5 s) before it terminates a
/// backend, so that one that leaves by itself is seen to, even on a busy machine.
pub(crate) async fn with_a_patient_reaper(name: &str) -> Env {
    Env::with(
        name,
        crate::harness::Options {
            timings: "terminate_after = \"5s\"",
            ..Default::default()
        },
    )
    .await
}

/// The backend left by itself: the reaper found it gone within its window and did not
/// have to terminate it.
pub(crate) async fn assert_gone_by_itself(env: &Env, id: &str, pid: i32) {
    let records = backend_fate(env, id, pid).await;
    let fate = records
        .iter()
        .find(|r| r["request_id"] == id && r["backend_pid"] == pid)
        .expect("the reaper's record");
    assert_eq!(fate["event"], "backend_gone", "{fate}");
    assert_eq!(
        count(
            env,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_vanishing_mid_copy_frees_its_backend_at_once() {
    let env = with_a_patient_reaper("vanish_copy").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&query(BIG_COPY)).await;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 1024 * 1024 {
        let n = raw.stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the copy ended early");
        got += n;
    }
    let pid = backend_running(&env, BIG_COPY).await;
    drop(raw);
    assert_gone_by_itself(&env, &id, pid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_vanishing_mid_pipeline_frees_its_backend_at_once() {
    let env = with_a_patient_reaper("vanish_pipeline").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    // A pipeline whose results (1 MB each) the client never reads: the server, then the
    // proxy, wait on a full socket when the client goes.
    let sql = "SELECT repeat('y', 1000000), g FROM generate_series(1, 3) g";
    let mut parse = b"\0".to_vec();
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(b"\0\0\0");
    let one = [
        message(b'P', &parse),
        message(b'B', b"\0\0\0\0\0\0\0\0"),
        message(b'E', b"\0\0\0\0\0"),
    ]
    .concat();
    let mut pipeline = one.repeat(200);
    pipeline.extend_from_slice(&message(b'S', b""));
    raw.send(&pipeline).await;
    let pid = backend_running(&env, sql).await;
    drop(raw);
    assert_gone_by_itself(&env, &id, pid).await;
}

/// A Bind of `s1` (`SELECT $1::text`) with a `size`-byte parameter, then an Execute.
fn bind_execute(size: usize) -> Vec<u8> {
    let value = vec![b'q'; size];
    let mut bind = b"\0s1\0".to_vec();
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&i32::try_from(size).expect("a size").to_be_bytes());
    bind.extend_from_slice(&value);
    bind.extend_from_slice(&0i16.to_be_bytes());
    [message(b'B', &bind), message(b'E', b"\0\0\0\0\0")].concat()
}

const SLEEP: &str = "SELECT pg_sleep(600)";

/// Sends `pipeline` (which starts with [`SLEEP`]) until it stops moving: every buffer on
/// the way is full and the proxy reads the client no more. Then resets the connection and
/// checks that the session ends at once, long before the server would get to its input.
async fn reset_while_not_read(name: &str, pipeline: Vec<u8>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    let env = with_a_patient_reaper(name).await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    let total = pipeline.len();
    raw.stream.set_zero_linger().expect("linger");
    let (reader, mut writer) = raw.stream.into_split();
    let written = Arc::new(AtomicUsize::new(0));
    let progress = written.clone();
    let writing = tokio::spawn(async move {
        for chunk in pipeline.chunks(64 * 1024) {
            if writer.write_all(chunk).await.is_err() {
                return;
            }
            progress.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    });
    let pid = backend_running(&env, SLEEP).await;
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = written.load(Ordering::SeqCst);
        assert!(now < total, "the whole pipeline went through");
        if now == last {
            break;
        }
        last = now;
    }
    // With no lingering, the close resets the connection.
    writing.abort();
    let _ = writing.await;
    drop(reader);
    let records = backend_fate(&env, &id, pid).await;
    let ended = records
        .iter()
        .find(|r| r["request_id"] == id && r["event"] == "disconnected")
        .expect("the session's end");
    assert_eq!(
        ended["reason"], "client left while a statement ran; it was cancelled",
        "{ended}"
    );
    assert_eq!(
        count(
            &env,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")
        ),
        0
    );
}

/// A pipeline larger than every buffer between proxy and server waits behind a statement
/// the server is busy with: the proxy waits to write it upstream, and does not read the
/// client meanwhile. A client that resets then is seen gone at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_vanishing_while_its_pipeline_waits_on_a_busy_server_frees_its_backend_at_once() {
    // 64 MB: more than the client's, the proxy's and the server's socket buffers hold
    // together, so the writer never finishes while the server sleeps.
    let pipeline = [
        query(SLEEP),
        message(b'P', b"s1\0SELECT $1::text\0\0\0"),
        bind_execute(10_000).repeat(6_400),
    ]
    .concat();
    reset_while_not_read("vanish_stuck_pipeline", pipeline).await;
}

/// Binds of a statement parsed in a group the server has not answered yet (it is busy with
/// the statement before) are held back, and once the held bytes fill the client buffer the
/// proxy reads the client no more. A client that resets then is seen gone at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_vanishing_while_its_messages_are_held_frees_its_backend_at_once() {
    let group = [bind_execute(1_000), message(b'S', b"")].concat();
    // More than the client's and the proxy's socket buffers can hold once the proxy reads
    // no more (4 MB did not always: TCP grows a receive buffer up to `tcp_rmem`'s maximum).
    let groups = (most_kernel_buffers() + (4 << 20)) / group.len();
    let pipeline = [
        query(SLEEP),
        message(b'P', b"s1\0SELECT $1::text\0\0\0"),
        message(b'S', b""),
        group.repeat(groups),
    ]
    .concat();
    reset_while_not_read("vanish_held", pipeline).await;
}

/// The most a TCP connection's send and receive buffers may grow to together (Linux:
/// the maxima of `tcp_wmem` and `tcp_rmem`, which autotuning reaches on its own).
fn most_kernel_buffers() -> usize {
    ["tcp_rmem", "tcp_wmem"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            text.split_whitespace()
                .last()
                .and_then(|max| max.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{name}: {text}"))
        })
        .sum()
}
