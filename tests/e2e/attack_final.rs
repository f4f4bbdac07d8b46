//! Attack review of c391f98 / a7cc473 / d0ec59e (the farewell without words, the cancel in
//! the `Aftermath`, farewell passes). The two findings failed on the commit under review
//! and hold since every end the proxy makes cancels and reaps the backend; `held_*` are
//! attacks that held.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::attack_farewell::login_plain;
use crate::harness::{errors_in, query, Env, Options};

async fn read_to_end(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    loop {
        let mut chunk = [0u8; 16 * 1024];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return got,
        };
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&chunk[..n]);
    }
}

fn activity(env: &Env, marker: &str) -> i64 {
    // Not the asking queries themselves: an earlier one's backend may still be listed while
    // it exits (CI counted two under load).
    env.superuser_sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND query NOT LIKE '%pg_stat_activity%' AND pid <> pg_backend_pid()"
    ))
    .trim()
    .parse()
    .unwrap_or(-1)
}

/// Starts a long statement, waits until it runs upstream, then sends `ending` (a client
/// message that makes the proxy end the session) and returns what the client read to the
/// close and whether the backend was gone within 10 s.
async fn end_mid_statement(name: &str, marker: &str, ending: &[u8]) -> (Vec<u8>, bool) {
    let env = Env::with(name, Options::default()).await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let mut client = login_plain(&env, &token, None).await;
    client
        .write_all(&query(&format!("SELECT /* {marker} */ pg_sleep(40)")))
        .await
        .expect("query");
    for _ in 0..100 {
        if activity(&env, marker) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(activity(&env, marker), 1, "the statement runs upstream");
    client.write_all(ending).await.expect("ending message");
    let got = read_to_end(&mut client, Duration::from_secs(10)).await;
    drop(client);
    let mut gone = false;
    for _ in 0..100 {
        if activity(&env, marker) == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (got, gone)
}

/// FINDING (medium, fixed; beyond the reviewed diff, but the rule a7cc473 moved). A client that
/// ends its own session with a protocol violation while a statement runs upstream leaves
/// that statement running: `ended_by_proxy` covers `Dropped`, `RowLimit` and
/// `ClientLeftMidStatement` only, so a `ProtocolError` gets no cancel and no reaper, the
/// Terminate sent upstream waits behind the statement, and the backend runs on
/// unsupervised (a procedure that never touches the socket would outlive the grant, which
/// is what `ClientLeftMidStatement` was made to prevent for a client that just leaves).
#[tokio::test(flavor = "multi_thread")]
async fn a_protocol_error_mid_statement_ends_the_running_backend() {
    // 0x01 is no frontend message type: the relay ends the session at once (08P01).
    let (got, gone) =
        end_mid_statement("afin_proto_mid", "afin_marker_proto", &[1, 0, 0, 0, 4]).await;
    let errors = errors_in(&got);
    assert!(
        errors.iter().any(|(code, _)| code == "08P01"),
        "the client is told of its protocol violation: {errors:?}"
    );
    assert!(
        gone,
        "the running statement of a session ended by a protocol violation is still running 10 s later (no cancel, no reaper)"
    );
}

/// FINDING (medium, fixed; same cause). A client message declaring a size over
/// `proxy.max_message_size` (End::MessageTooLarge) while a statement runs: no cancel, no
/// reaper, the backend runs on.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_mid_statement_ends_the_running_backend() {
    let mut huge = vec![b'Q'];
    huge.extend_from_slice(&(1i32 << 30).to_be_bytes());
    let (got, gone) = end_mid_statement("afin_oversize_mid", "afin_marker_oversize", &huge).await;
    let errors = errors_in(&got);
    assert!(
        errors.iter().any(|(code, _)| code == "08P01"),
        "the client is told its message is too large: {errors:?}"
    );
    assert!(
        gone,
        "the running statement of a session ended by an oversized message is still running 10 s later (no cancel, no reaper)"
    );
}

/// HELD (control for the two findings): a client that sends Terminate while a statement
/// runs gets its statement cancelled (ClientLeftMidStatement).
#[tokio::test(flavor = "multi_thread")]
async fn held_a_terminate_mid_statement_cancels_the_backend() {
    let (_got, gone) = end_mid_statement(
        "afin_terminate_mid",
        "afin_marker_terminate",
        &[b'X', 0, 0, 0, 4],
    )
    .await;
    assert!(gone, "a Terminate mid-statement cancels the statement");
}

async fn farewells_gauge(env: &Env) -> f64 {
    crate::harness::metric(env, "lockbox_farewells").await
}

/// HELD. `lockbox_farewells` counts a revoked slow reader while it drains (and it holds no
/// connection), and is back to 0 once the farewell is over: the pass is given back.
#[tokio::test(flavor = "multi_thread")]
async fn held_the_farewells_gauge_follows_a_slow_readers_farewell() {
    let env = Env::with("afin_gauge", Options::default()).await;
    assert_eq!(farewells_gauge(&env).await, 0.0);
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut client = login_plain(&env, &token, Some(4096)).await;
    client
        .write_all(&query(
            "SELECT g, repeat('x', 20000) FROM generate_series(1, 2000) g",
        ))
        .await
        .expect("query");
    let mut first = vec![0u8; 4096];
    let _ = client.read(&mut first).await.expect("first bytes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.client("carol")
        .revoke(&id, "done")
        .await
        .expect("revoke");
    // The client reads a trickle: its farewell is patient, with a pass.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(40), client.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        got
    });
    let mut seen = 0.0;
    for _ in 0..50 {
        seen = farewells_gauge(&env).await;
        if seen > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 1.0, "one patient farewell");
    let got = reader.await.expect("reader");
    let errors = errors_in(&got);
    eprintln!("slow reader got {} bytes, errors {errors:?}", got.len());
    let mut after = -1.0;
    for _ in 0..50 {
        after = farewells_gauge(&env).await;
        if after == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after, 0.0, "the pass is given back when the farewell ends");
}

/// A client that breaks the protocol while rows are queued for it is told why, but its
/// farewell takes no pass: clients cannot use up, by sending garbage and reading a trickle,
/// the patience kept for those whose access ended under them.
#[tokio::test(flavor = "multi_thread")]
async fn a_protocol_violation_gets_a_farewell_without_a_pass() {
    let env = Env::with("afin_violation_pass", Options::default()).await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let mut client = login_plain(&env, &token, Some(4096)).await;
    client
        .write_all(&query(
            "SELECT g, repeat('x', 20000) FROM generate_series(1, 2000) g",
        ))
        .await
        .expect("query");
    let mut first = vec![0u8; 4096];
    let _ = client.read(&mut first).await.expect("first bytes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 0x01 is no frontend message type: the relay ends the session once it reads it.
    client.write_all(&[1, 0, 0, 0, 4]).await.expect("garbage");
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(40), client.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        got
    });
    let mut most = 0.0f64;
    while !reader.is_finished() {
        most = most.max(farewells_gauge(&env).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.await.expect("reader");
    // The session ended for the violation (its FATAL may not have been waited for).
    env.wait_for_audit("the violation's end record", |records| {
        records.iter().any(|r| {
            r["event"] == "disconnected"
                && r["reason"]
                    .as_str()
                    .is_some_and(|why| why.starts_with("client protocol violation"))
        })
    })
    .await;
    assert_eq!(most, 0.0, "a protocol violation's farewell held a pass");
}
