//! Attack review of d0ec59e (the farewell: upstream closed first, the FATAL delivered
//! beside the reaper while the client drains its send queue).
//!
//! The three findings failed on d0ec59e and hold since the fix (the cancel runs beside the
//! farewell in the `Aftermath`; a farewell holds no connection slot, a pass instead); the
//! non-findings pinned bounds that held already.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::harness::{errors_in, message, query, startup_packet, Env, Options};

/// A TCP forwarder in front of the test cluster: the proxy's `[[databases]]` entry points
/// at it. `partition()` simulates the database host becoming unreachable for NEW
/// connections (a firewall dropping SYNs, a network partition, a postmaster wedged with
/// a full accept queue): it stops accepting and fills its (tiny) accept queue, so that
/// the kernel drops further SYNs and a `connect` hangs. Connections already forwarded
/// (the session's upstream) keep working.
struct Forwarder {
    port: u16,
    stalled: Arc<AtomicBool>,
    /// Set by the acceptor once it saw `stalled`: it accepts nothing after that.
    stopped: Arc<AtomicBool>,
    /// Sockets parked in the accept queue to keep it full.
    parked: Vec<TcpStream>,
}

const BACKLOG: u32 = 2;

impl Forwarder {
    async fn start(target: u16) -> Forwarder {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(([127, 0, 0, 1], 0).into())
            .expect("bind forwarder");
        let listener = socket.listen(BACKLOG).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let stalled = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        let acceptor_stopped = stopped.clone();
        tokio::spawn(async move {
            loop {
                if flag.load(Ordering::SeqCst) {
                    acceptor_stopped.store(true, Ordering::SeqCst);
                    // Keep the listener open (so SYNs are dropped, not refused), never
                    // accept again.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    continue;
                }
                let accepted =
                    tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
                let Ok(Ok((mut inbound, _))) = accepted else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Forwarder {
            port,
            stalled,
            stopped,
            parked: Vec::new(),
        }
    }

    /// New connections to the database host now hang in `connect`.
    async fn partition(&mut self) {
        self.stalled.store(true, Ordering::SeqCst);
        for _ in 0..200 {
            if self.stopped.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            self.stopped.load(Ordering::SeqCst),
            "the forwarder still accepts"
        );
        // Connections complete into the accept queue until it is full; then one hangs.
        let mut full = false;
        for _ in 0..(BACKLOG + 8) {
            let connect = TcpStream::connect(("127.0.0.1", self.port));
            match tokio::time::timeout(Duration::from_millis(500), connect).await {
                Ok(Ok(parked)) => self.parked.push(parked),
                Ok(Err(e)) => panic!("the forwarder refused a connection: {e}"),
                Err(_) => {
                    full = true;
                    break;
                }
            }
        }
        assert!(
            full,
            "the accept queue never filled: the partition is not simulated"
        );
        // The partition holds: a new connection does not get through in 2 s.
        let probe = tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(("127.0.0.1", self.port)),
        )
        .await;
        assert!(
            probe.is_err(),
            "the accept queue is not full: the partition is not simulated"
        );
    }
}

/// An env whose test database is reached through a forwarder.
async fn env_behind_forwarder(name: &str) -> (Env, Forwarder) {
    let mut env = Env::prepare(name, Options::default());
    let forwarder = Forwarder::start(env.pg.port).await;
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    // The test database is the deployment's first [[databases]] entry.
    let text = text.replacen(
        &format!("port = {}\n", env.pg.port),
        &format!("port = {}\n", forwarder.port),
        1,
    );
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    (env, forwarder)
}

/// Connects (plain), logs in and reads up to the first ReadyForQuery.
pub(crate) async fn login_plain(env: &Env, token: &str, rcvbuf: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("rcvbuf");
    }
    let mut stream = socket
        .connect(([127, 0, 0, 1], env.proxy_port()).into())
        .await
        .expect("connect");
    stream
        .write_all(&startup_packet(&[("user", "eve"), ("database", &env.db)]))
        .await
        .expect("startup");
    stream
        .write_all(&message(b'p', &[token.as_bytes(), b"\0"].concat()))
        .await
        .expect("password");
    read_until_ready(&mut stream).await;
    stream
}

async fn read_until_ready(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut events = Vec::new();
        lockbox::wire::BackendScanner::default().feed(&got, &mut events);
        if events
            .iter()
            .any(|e| matches!(e, lockbox::wire::BackendEvent::Ready(_)))
        {
            return got;
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("ReadyForQuery in time")
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
}

/// Reads everything until the proxy closes (or resets), bounded by `limit`; returns the
/// bytes and when the first ErrorResponse was complete in them.
async fn read_to_end_timed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let mut got = Vec::new();
    let mut fatal_at = None;
    let deadline = Instant::now() + limit;
    loop {
        let mut chunk = [0u8; 16 * 1024];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return (got, fatal_at),
        };
        if n == 0 {
            return (got, fatal_at);
        }
        got.extend_from_slice(&chunk[..n]);
        if fatal_at.is_none() && !errors_in(&got).is_empty() {
            fatal_at = Some(Instant::now());
        }
    }
}

/// FINDING (fixed). The FATAL waited for `session::end::finish`, which sends the upstream
/// cancel (`upstream::send_cancel`: a new TCP connection to the database, up to a 10 s
/// connect timeout, then up to 2 s waiting for the server to close). Before d0ec59e the
/// FATAL was written inside `relay.run()`, before the cancel. With the database host
/// unreachable for new connections (partition, full accept queue), a revoked client
/// is told why only ~10 s later (the upstream connection is closed, so this is no access
/// leak, but the "immediately told" contract and every client's view of the revoke is
/// delayed by the database's reachability).
#[tokio::test(flavor = "multi_thread")]
async fn farewell_a_revoke_is_told_at_once_even_when_the_database_takes_no_new_connections() {
    let (env, mut forwarder) = env_behind_forwarder("af_cancel_revoke").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut client = login_plain(&env, &token, None).await;
    client.write_all(&query("SELECT 1")).await.expect("query");
    read_until_ready(&mut client).await;

    forwarder.partition().await;
    let revoked = Instant::now();
    env.client("carol")
        .revoke(&id, "done")
        .await
        .expect("revoke");
    let (got, fatal_at) = read_to_end_timed(&mut client, Duration::from_secs(30)).await;
    let errors = errors_in(&got);
    assert!(
        errors.iter().any(|(_, m)| m.contains("was revoked")),
        "the revoke's FATAL: {errors:?}"
    );
    let took = fatal_at.expect("a FATAL") - revoked;
    eprintln!("FATAL {took:?} after the revoke");
    assert!(
        took < Duration::from_secs(5),
        "the client was told of the revoke only {took:?} later: the FATAL waited for the \
         upstream cancel to a database that takes no new connections"
    );
}

/// FINDING (fixed; same cause, worse outcome). At shutdown the proxy waits `SHUTDOWN_GRACE +
/// terminate_after` (7 s by default) for its sessions, then aborts them. A session whose
/// `finish` is stuck in the upstream cancel's connect (10 s) is aborted before its
/// farewell ever starts: the client never gets "lockbox proxy is shutting down", only a
/// close. Before d0ec59e the FATAL was written before the cancel.
#[tokio::test(flavor = "multi_thread")]
async fn farewell_shutdown_still_tells_the_client_when_the_database_takes_no_new_connections() {
    let (mut env, mut forwarder) = env_behind_forwarder("af_cancel_shutdown").await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let mut client = login_plain(&env, &token, None).await;
    client.write_all(&query("SELECT 1")).await.expect("query");
    read_until_ready(&mut client).await;

    forwarder.partition().await;
    let reader = tokio::spawn(async move {
        let (got, _) = read_to_end_timed(&mut client, Duration::from_secs(40)).await;
        got
    });
    let stopping = Instant::now();
    env.stop().await;
    eprintln!("shutdown took {:?}", stopping.elapsed());
    let got = reader.await.expect("reader");
    let errors = errors_in(&got);
    assert!(
        errors.iter().any(|(_, m)| m.contains("shutting down")),
        "the client was never told the proxy is shutting down: got {errors:?} ({} bytes) \
         then the close",
        got.len()
    );
}

fn big_result_sql(marker: &str, rows: usize, width: usize) -> String {
    format!("SELECT /* {marker} */ g, repeat('x', {width}) FROM generate_series(1, {rows}) g")
}

/// Logs in with a small receive buffer, sends a query for 2,000 rows of 20 kB tagged with
/// `marker`, and reads its first bytes: the proxy's send queue then fills behind them.
async fn big_result_started(env: &Env, token: &str, marker: &str) -> TcpStream {
    let mut client = login_plain(env, token, Some(4096)).await;
    client
        .write_all(&query(&big_result_sql(marker, 2000, 20_000)))
        .await
        .expect("query");
    let mut first = vec![0u8; 4096];
    let _ = client.read(&mut first).await.expect("first bytes");
    client
}

/// Reads 512 bytes every 50 ms until the close.
fn trickle(mut client: TcpStream) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
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

/// NON-FINDING. A client reading its last rows slowly keeps nothing of the database's:
/// while megabytes of rows still drain to it after a revoke, its backend is already gone.
#[tokio::test(flavor = "multi_thread")]
async fn farewell_a_slow_reader_after_a_revoke_holds_no_backend() {
    let env = Env::with("af_slow_no_backend", Options::default()).await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let marker = "farewell_marker_slow";
    // The proxy's send queue fills (the backend blocks behind it).
    let mut client = big_result_started(&env, &token, marker).await;
    for _ in 0..40 {
        if activity(&env, marker) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(activity(&env, marker), 1, "the statement runs upstream");
    env.client("carol")
        .revoke(&id, "done")
        .await
        .expect("revoke");
    let revoked = Instant::now();
    // Read slowly: a small receive buffer, read every 10 ms.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut fatal_at = None;
        loop {
            let n = match tokio::time::timeout(Duration::from_secs(30), client.read(&mut buf)).await
            {
                Ok(Ok(n)) if n > 0 => n,
                _ => break,
            };
            let from = got.len().saturating_sub(64);
            got.extend_from_slice(&buf[..n]);
            if fatal_at.is_none() && got[from..].windows(11).any(|w| w == b"was revoked") {
                fatal_at = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (got.len(), fatal_at)
    });
    let mut gone_at = None;
    for _ in 0..200 {
        if activity(&env, marker) == 0 {
            gone_at = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone_at = gone_at.expect("the backend is gone within 10 s of the revoke");
    let (len, fatal_at) = reader.await.expect("reader");
    eprintln!(
        "backend gone {:?} after the revoke; client read {len} bytes, FATAL {:?} after",
        gone_at - revoked,
        fatal_at.map(|f| f - revoked)
    );
    let fatal_at = fatal_at.expect("the slow reader gets the FATAL");
    assert!(
        gone_at < fatal_at,
        "the backend outlived the farewell (or the farewell was too short to tell)"
    );
}

/// FINDING (low, fixed). A revoked engineer's connections keep their `max_connections` slots
/// for up to `FAREWELL_LIMIT` (30 s) after the revoke, by reading their queued rows a
/// trickle at a time: the farewell holds the slot, while the session is already
/// unregistered (not in `/v1/sessions`, not killable by an operator). With the proxy
/// full, another engineer is refused with 53300 for those 30 s (before d0ec59e: ~1 s).
#[tokio::test(flavor = "multi_thread")]
async fn farewell_a_revoked_slow_reader_does_not_keep_other_engineers_out() {
    let env = crate::ops_limits::start_with_proxy_keys("af_slot", "max_connections = 1").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (_bob_id, bob_token) = env.approved_token("bob", "1h").await;
    let client = big_result_started(&env, &token, "farewell_marker_slot").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.client("carol")
        .revoke(&id, "done")
        .await
        .expect("revoke");
    let revoked = Instant::now();
    // The revoked client takes a trickle: 512 bytes every 50 ms.
    let trickle = trickle(client);
    // Bob keeps trying to log in for 10 s.
    let mut admitted_after = None;
    let mut last_error = String::new();
    while revoked.elapsed() < Duration::from_secs(10) {
        match env.connect("bob", &bob_token).await {
            Ok(_) => {
                admitted_after = Some(revoked.elapsed());
                break;
            }
            Err(e) => last_error = format!("{:?}", crate::harness::db_error(&e)),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    trickle.abort();
    let sessions = env
        .client("alice")
        .list_sessions()
        .await
        .map(|v| v.len().to_string())
        .unwrap_or_else(|e| format!("{e:?}"));
    eprintln!("bob admitted after {admitted_after:?}; last error {last_error}; sessions listed {sessions}");
    assert!(
        admitted_after.is_some(),
        "10 s after eve's revoke her farewell still holds the only connection slot: {last_error}"
    );
}

/// NON-FINDING. A slow reader's farewell does not hold shutdown past its grace
/// (`SHUTDOWN_GRACE + terminate_after`, 7 s here): the farewell is aborted with the rest.
/// (Shutdown does now wait the whole grace for such a client, where it took ~1 s before.)
#[tokio::test(flavor = "multi_thread")]
async fn farewell_a_slow_reader_does_not_hold_shutdown_past_its_grace() {
    let mut env = Env::with("af_slow_shutdown", Options::default()).await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let client = big_result_started(&env, &token, "farewell_marker_shut").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trickle = trickle(client);
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), env.stop())
        .await
        .expect("shutdown ends within its grace");
    let took = stopping.elapsed();
    // The kernel may go on sending the rows already queued after the proxy closed (an
    // orphaned socket), so the client's end is not waited for.
    trickle.abort();
    eprintln!("shutdown took {took:?}");
}
