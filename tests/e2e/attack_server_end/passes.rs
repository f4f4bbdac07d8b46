//! What a server-ended farewell holds: passes, bookkeeping, shutdown.

use super::*;

/// A session that ends itself: idle_session_timeout behind ~300 kB of rows queued for a
/// client with a tiny receive buffer, who then reads a trickle (512 B / 50 ms).
async fn self_ended_trickle(
    env: &Env,
    token: &str,
    rows: usize,
) -> tokio::task::JoinHandle<(Vec<u8>, Close, Instant)> {
    let mut tls = tls_session(env, "eve", token, Some(4096)).await;
    tls.write_all(&query("SET idle_session_timeout = '200ms'"))
        .await
        .unwrap();
    tls.flush().await.unwrap();
    read_until_ready(&mut tls).await;
    tls.write_all(&query(&format!(
        "SELECT g, repeat('x', 2000) FROM generate_series(1, {rows}) g"
    )))
    .await
    .unwrap();
    tls.flush().await.unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (got, close) = read_to_end_slowly(
            &mut tls,
            512,
            Duration::from_millis(50),
            Duration::from_secs(90),
        )
        .await;
        (got, close, Instant::now())
    })
}

/// The farewell passes held (`lockbox_farewells`), sampled `n` times 100 ms apart once at
/// least one is held (waited for up to 30 s: a farewell starts only once its session ended,
/// which a busy machine may take a while to reach).
async fn farewells_once_held(env: &Env, n: usize) -> Vec<f64> {
    let held =
        crate::harness::metric_when(env, "lockbox_farewells", Duration::from_secs(30), |n| {
            n >= 1.0
        })
        .await;
    let mut seen = vec![held];
    for _ in 1..n {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen.push(crate::harness::metric(env, "lockbox_farewells").await);
    }
    seen
}

/// FINDING (fixed): any read grant can end its own sessions at will (`SET
/// idle_session_timeout`, a result queued, a trickle read), and each such farewell held a
/// pass for up to its 30 s limit after the session's slot was given back: a client could
/// hold every pass, and another engineer's revoke or expiry farewell then hurried. Such
/// farewells now take passes only from the first half: here one of two.
#[tokio::test(flavor = "multi_thread")]
async fn se_self_ended_sessions_hold_at_most_half_the_passes() {
    let env = crate::ops_limits::start_with_proxy_keys("se_passes", "max_connections = 2").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let a = self_ended_trickle(&env, &token, 400).await;
    let b = self_ended_trickle(&env, &token, 400).await;
    let seen = farewells_once_held(&env, 30).await;
    a.abort();
    b.abort();
    assert!(
        seen.contains(&1.0),
        "a self-ended farewell holds a pass: {seen:?}"
    );
    assert!(
        seen.iter().all(|&n| n <= 1.0),
        "at most half the passes: {seen:?}"
    );
}

/// A server-ended session whose client neither reads nor closes: the end record and the
/// session list do not wait for the farewell; the farewell ends within its bound.
#[tokio::test(flavor = "multi_thread")]
async fn se_bookkeeping_does_not_wait_for_the_farewell() {
    let env = Env::with("se_books", tls_options()).await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut tls = tls_session(&env, "eve", &token, Some(4096)).await;
    tls.write_all(&query(
        "SELECT g, repeat('x', 2000) FROM generate_series(1, 400) g",
    ))
    .await
    .unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(terminate_backends(&env, "lockbox_read"), "1");
    let ended = Instant::now();
    env.wait_for_audit("the disconnected record", |records| {
        records.iter().any(|r| {
            r["event"] == "disconnected"
                && r["request_id"] == id.as_str()
                && r["reason"] == "upstream closed the connection"
        })
    })
    .await;
    let recorded = ended.elapsed();
    // The end record is written before the session leaves the registry: the list follows
    // at once, but not in the same instant.
    let mut listed = usize::MAX;
    for _ in 0..50 {
        listed = env
            .client("alice")
            .list_sessions()
            .await
            .expect("list")
            .len();
        if listed == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open = crate::harness::metric(&env, "lockbox_sessions_open").await;
    let passes = crate::harness::metric(&env, "lockbox_farewells").await;
    eprintln!("recorded after {recorded:?}; listed {listed}; open {open}; passes {passes}");
    assert!(recorded < Duration::from_secs(5));
    assert_eq!(listed, 0);
    assert_eq!(open, 0.0);
    // Never read: the farewell gives up (stall) and the pass comes back.
    let mut back = None;
    for _ in 0..400 {
        if crate::harness::metric(&env, "lockbox_farewells").await == 0.0 {
            back = Some(ended.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("pass back after {back:?}");
    assert!(back.is_some_and(|t| t < Duration::from_secs(35)));
    // What the client gets now: whatever queued, and no FATAL promise.
    let (got, close) =
        read_to_end_slowly(&mut tls, 65536, Duration::ZERO, Duration::from_secs(30)).await;
    eprintln!(
        "late reader: {} bytes, {close:?}, errors {:?}, torn {}",
        got.len(),
        errors(&got),
        shape(&got).torn
    );
}

/// Shutdown while a server-ended session's farewell trickles: bounded by the grace.
#[tokio::test(flavor = "multi_thread")]
async fn se_shutdown_during_server_end_farewell() {
    let mut env = Env::with("se_shutdown", tls_options()).await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let reader = self_ended_trickle(&env, &token, 400).await;
    assert_eq!(farewells_once_held(&env, 1).await, [1.0]);
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), env.stop())
        .await
        .expect("shutdown within its grace");
    eprintln!("shutdown took {:?}", stopping.elapsed());
    let (got, close, _) = reader.await.unwrap();
    eprintln!(
        "reader: {} bytes, {close:?}, errors {:?}",
        got.len(),
        errors(&got)
    );
}

/// A client that sends Terminate: closed at once, as before.
#[tokio::test(flavor = "multi_thread")]
async fn se_terminate_closes_at_once() {
    let env = Env::with("se_terminate", tls_options()).await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut tls = tls_session(&env, "eve", &token, None).await;
    tls.write_all(&[b'X', 0, 0, 0, 4]).await.unwrap();
    tls.flush().await.unwrap();
    let t = Instant::now();
    let (got, close) =
        read_to_end_slowly(&mut tls, 4096, Duration::ZERO, Duration::from_secs(10)).await;
    eprintln!(
        "terminate: {} bytes, {close:?} after {:?}",
        got.len(),
        t.elapsed()
    );
    assert_ne!(close, Close::Open);
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// Bob reads a large result slowly (about 1 MB/s, well within a patient farewell's
/// bounds) and is revoked meanwhile: what he got, and how it closed.
async fn bob_revoked_while_reading(env: &Env, bob_id: &str, bob_token: &str) -> (Vec<u8>, Close) {
    let mut bob = tls_session(env, "bob", bob_token, Some(4096)).await;
    bob.write_all(&query(
        "SELECT g, repeat('x', 20000) FROM generate_series(1, 2000) g",
    ))
    .await
    .unwrap();
    bob.flush().await.unwrap();
    let mut got = vec![0u8; 4096];
    let n = bob.read(&mut got).await.unwrap();
    got.truncate(n);
    tokio::time::sleep(Duration::from_millis(700)).await;
    env.client("carol")
        .revoke(bob_id, "done")
        .await
        .expect("revoke");
    let (rest, close) = read_to_end_slowly(
        &mut bob,
        32 * 1024,
        Duration::from_millis(30),
        Duration::from_secs(60),
    )
    .await;
    got.extend_from_slice(&rest);
    (got, close)
}

/// The impact of the passes above: with one engineer's self-ended sessions (SET
/// idle_session_timeout, a queued result, a trickle read) holding all they may, another
/// engineer revoked while reading a large result slowly still gets a patient farewell, and
/// the revoke's FATAL after whole rows. Control: `exhaust = false`.
async fn revoked_victim(name: &str, exhaust: bool) -> Vec<(String, String, String)> {
    let env = crate::ops_limits::start_with_proxy_keys(name, "max_connections = 2").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (bob_id, bob_token) = env.approved_token("bob", "1h").await;
    let mut hogs = Vec::new();
    if exhaust {
        hogs.push(self_ended_trickle(&env, &token, 400).await);
        hogs.push(self_ended_trickle(&env, &token, 400).await);
        // The hogs' farewells hold what they may (half the passes) before the revoke.
        let held = farewells_once_held(&env, 1).await;
        assert_eq!(held, [1.0], "eve's self-ended sessions hold a pass");
    }
    let (got, close) = bob_revoked_while_reading(&env, &bob_id, &bob_token).await;
    let s = shape(&got);
    eprintln!(
        "{name}: bob got {} bytes, torn {}, close {close:?}, errors {:?}",
        got.len(),
        s.torn,
        errors(&got)
    );
    for h in hogs {
        h.abort();
    }
    errors(&got)
}

#[tokio::test(flavor = "multi_thread")]
async fn se_victim_control_gets_the_revoke_fatal() {
    let errors = revoked_victim("se_victim_ctl", false).await;
    assert!(errors.iter().any(|e| e.2.contains("revoked")), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn se_victim_gets_the_revoke_fatal_while_self_ended_sessions_hold_passes() {
    let errors = revoked_victim("se_victim_hog", true).await;
    assert!(errors.iter().any(|e| e.2.contains("revoked")), "{errors:?}");
}

/// The same self-ended session with ~200 kB queued instead of ~800 kB: the FATAL, then
/// close_notify (the review saw a close without it, timing-dependent and unexplained; it
/// did not recur). At the trickle's 10 kB/s the queue drains in ~20 s, within the
/// farewell's 30 s: a client still reading at the limit gets a reset, which drops the rest
/// (300 kB took the whole 30 s, and a loaded machine failed it so).
#[tokio::test(flavor = "multi_thread")]
async fn se_self_ended_small_queue_still_gets_close_notify() {
    let env = Env::with("se_small_queue", tls_options()).await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let reader = self_ended_trickle(&env, &token, 100).await;
    let (got, close, _) = reader.await.unwrap();
    assert_ends_with_fatal_then_clean_close("small queue", &got, &close);
}

/// FINDING of the second review (fixed): an engineer may revoke their own grant, and a
/// revoke is no end the client provoked, so the farewells of that grant's sessions, each
/// with a large result queued and read as a trickle, took every pass; another engineer
/// revoked meanwhile got a hurried farewell: no FATAL, a torn row, no close_notify. One
/// grant now holds at most half the passes, whatever ended its sessions.
#[tokio::test(flavor = "multi_thread")]
async fn se_a_self_revoked_grant_holds_at_most_half_the_passes() {
    let env =
        crate::ops_limits::start_with_proxy_keys("se_self_revoke", "max_connections = 2").await;
    let (eve_id, token) = env.approved_token("eve", "1h").await;
    let (bob_id, bob_token) = env.approved_token("bob", "1h").await;
    let mut eves = Vec::new();
    for _ in 0..2 {
        let mut tls = tls_session(&env, "eve", &token, Some(4096)).await;
        tls.write_all(&query(
            "SELECT g, repeat('x', 2000) FROM generate_series(1, 2000) g",
        ))
        .await
        .unwrap();
        tls.flush().await.unwrap();
        eves.push(tls);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    env.client("eve")
        .revoke(&eve_id, "giving it up")
        .await
        .expect("an engineer may revoke their own grant");
    let hogs: Vec<_> = eves
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                read_to_end_slowly(
                    &mut s,
                    512,
                    Duration::from_millis(50),
                    Duration::from_secs(60),
                )
                .await
            })
        })
        .collect();
    let seen = farewells_once_held(&env, 20).await;
    assert!(seen.contains(&1.0), "eve's farewells hold a pass: {seen:?}");
    assert!(seen.iter().all(|&n| n <= 1.0), "at most half: {seen:?}");
    // Bob, revoked while reading a large result, still gets a patient farewell.
    let (got, close) = bob_revoked_while_reading(&env, &bob_id, &bob_token).await;
    for hog in hogs {
        hog.abort();
    }
    let code = assert_ends_with_fatal_then_clean_close("bob", &got, &close);
    assert_eq!(code, "57P01");
    assert!(
        errors(&got).iter().any(|e| e.2.contains("revoked")),
        "{:?}",
        errors(&got)
    );
}
