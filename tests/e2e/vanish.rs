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
async fn backend_running(env: &Env, sql: &str) -> i32 {
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

/// The backend left by itself: the reaper found it gone within its window and did not
/// have to terminate it.
async fn assert_gone_by_itself(env: &Env, id: &str, pid: i32) {
    let records = env
        .wait_for_audit("what became of the backend", |records| {
            records.iter().any(|r| {
                r["request_id"] == id
                    && r["backend_pid"] == pid
                    && r["event"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("backend_"))
            })
        })
        .await;
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
    let env = Env::start("vanish_copy").await;
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
    let env = Env::start("vanish_pipeline").await;
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
