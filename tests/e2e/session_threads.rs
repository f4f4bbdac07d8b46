//! `[proxy] threads`: sessions run on threads of their own, each thread serving many
//! sessions side by side.

use std::time::Duration;

use lockbox::policy::AccessLevel;

use crate::harness::{metric, Env, Options};

/// With one session thread, a session waiting on the server (here for a lock a direct
/// connection holds) does not hold up another session on that thread, and gets its answer
/// once the lock goes.
#[tokio::test(flavor = "multi_thread")]
async fn one_thread_serves_a_waiting_session_and_a_busy_one_side_by_side() {
    let env = Env::with(
        "threads_one",
        Options {
            proxy_extra: "threads = 1",
            ..Default::default()
        },
    )
    .await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (holder, holder_conn) =
        tokio_postgres::connect(&env.pg.url(&env.db), tokio_postgres::NoTls)
            .await
            .expect("direct connection");
    tokio::spawn(holder_conn);
    holder
        .execute("SELECT pg_advisory_lock(4711)", &[])
        .await
        .expect("lock");

    let (waiting, _w) = env.connect("eve", &token).await.expect("login");
    let mut waiter = tokio::spawn(async move {
        waiting
            .query_one("SELECT pg_advisory_lock(4711)::text", &[])
            .await
            .map(|row| row.get::<_, String>(0))
    });
    let (busy, _b) = env.connect("eve", &token).await.expect("login");
    for n in 0..50i32 {
        let row = busy
            .query_one("SELECT $1::int + 1", &[&n])
            .await
            .expect("the busy session is served");
        assert_eq!(row.get::<_, i32>(0), n + 1);
    }
    // The waiting session is still waiting on the server, not done and not failed.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut waiter)
            .await
            .is_err(),
        "the lock is held: the waiting statement cannot have finished"
    );
    holder
        .execute("SELECT pg_advisory_unlock(4711)", &[])
        .await
        .expect("unlock");
    let got = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("answered once the lock went")
        .expect("task")
        .expect("statement");
    assert_eq!(got, "");
}

async fn on_thread(env: &Env, thread: usize) -> f64 {
    metric(
        env,
        &format!("lockbox_session_thread_connections{{thread=\"{thread}\"}}"),
    )
    .await
}

/// Waits (bounded) until the session threads hold `expected` connections, by thread.
async fn until_threads_hold(env: &Env, expected: [f64; 2]) {
    let mut now = [0.0; 2];
    for _ in 0..200 {
        now = [on_thread(env, 0).await, on_thread(env, 1).await];
        if now == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("session threads hold {now:?}, not {expected:?}");
}

/// Connections are spread over the session threads, each to the one with the fewest, and
/// leave their thread when they close (`lockbox_session_thread_connections`).
#[tokio::test(flavor = "multi_thread")]
async fn connections_go_to_the_session_thread_with_the_fewest() {
    let env = Env::with(
        "threads_spread",
        Options {
            proxy_extra: "threads = 2",
            ..Default::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    until_threads_hold(&env, [0.0, 0.0]).await;
    let (first, first_conn) = env.connect("eve", &token).await.expect("login");
    until_threads_hold(&env, [1.0, 0.0]).await;
    let (second, _c) = env.connect("eve", &token).await.expect("login");
    until_threads_hold(&env, [1.0, 1.0]).await;
    // The first closes: its thread is the emptier one, and the next connection goes there.
    drop(first);
    let _ = first_conn.await;
    until_threads_hold(&env, [0.0, 1.0]).await;
    let (third, _c) = env.connect("eve", &token).await.expect("login");
    until_threads_hold(&env, [1.0, 1.0]).await;
    for client in [&second, &third] {
        let row = client.query_one("SELECT 1", &[]).await.expect("served");
        assert_eq!(row.get::<_, i32>(0), 1);
    }
}

/// Session threads that cannot all be started (here for want of file descriptors: each
/// runtime needs a few) stop `lockbox serve` with an error that says so, not a panic: the
/// ones already started are stopped without waiting, as async code must.
#[test]
fn threads_that_cannot_be_started_stop_serve_with_an_error() {
    let env = Env::prepare(
        "threads_fd_limit",
        Options {
            proxy_extra: "threads = 1024",
            ..Default::default()
        },
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 4096 && ulimit -Hn 4096 && exec \"$0\" serve --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_lockbox"))
        .arg(&env.config_path)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run lockbox serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("cannot start the proxy's session threads"),
        "{stderr}"
    );
}
