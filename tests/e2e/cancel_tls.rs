//! A CancelRequest over TLS ends with a TLS close (close_notify), as PostgreSQL ends it:
//! libpq 17's `PQcancelBlocking` reports a cancel whose connection was cut without one as
//! failed, though the cancel worked.

use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{tls_to_proxy, Env, Options};

async fn tls_env(name: &str) -> Env {
    Env::with(
        name,
        Options {
            plaintext: false,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_over_tls_ends_with_close_notify() {
    let env = tls_env("cancel_tls_close").await;
    let mut tls = tls_to_proxy(&env).await;
    // CancelRequest: length 16, code 80877102, a key no session has (ignored, as the
    // server ignores one).
    let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    cancel.extend_from_slice(&7i32.to_be_bytes());
    cancel.extend_from_slice(&11i32.to_be_bytes());
    tls.write_all(&cancel).await.expect("CancelRequest");
    tls.flush().await.expect("flush");
    let mut rest = Vec::new();
    // rustls reads a close without close_notify as UnexpectedEof; with it, a clean EOF.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tls.read_to_end(&mut rest),
    )
    .await
    .expect("the proxy never closed the cancel connection");
    assert!(
        matches!(read, Ok(0)),
        "expected a clean TLS close, got {read:?}"
    );
}

/// psycopg 3's `cancel_safe` is libpq's `PQcancelBlocking` (libpq 17+), which raises when
/// the cancel connection does not end cleanly. It is retried until the query ends, since
/// a cancel that arrives before the query starts cancels nothing; each one must succeed.
const PSYCOPG_CANCEL: &str = r#"
import os, threading, psycopg

assert psycopg.pq.version() >= 170000, f"libpq {psycopg.pq.version()} has no PQcancelBlocking"
conn = psycopg.connect(host="127.0.0.1", port=int(os.environ["LB_PORT"]), user="eve",
                       password=os.environ["LB_TOKEN"], dbname=os.environ["LB_DB"],
                       sslmode="require", autocommit=True)
outcome = []
def run():
    try:
        conn.execute("SELECT pg_sleep(60)")
        outcome.append("finished")
    except psycopg.errors.QueryCanceled:
        outcome.append("canceled")
worker = threading.Thread(target=run)
worker.start()
cancels = 0
while worker.is_alive():
    conn.cancel_safe(timeout=10)
    cancels += 1
    worker.join(0.2)
print(outcome[0], cancels > 0)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn psycopg_cancel_safe_over_tls_succeeds() {
    let env = tls_env("cancel_tls_psycopg").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let port = env.proxy_port().to_string();
    let db = env.db.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", PSYCOPG_CANCEL])
            .env("LB_PORT", port)
            .env("LB_DB", db)
            .env("LB_TOKEN", token)
            .output()
            .expect("python3 with psycopg is needed for this test")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psycopg failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "canceled True");
}
