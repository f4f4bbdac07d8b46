//! The spare pool's rules, on in-memory connections standing in for the server: what is
//! handed to whom, when a spare is opened, and every way one is closed.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

use super::*;
use crate::proxy::stream::AsyncStream;

fn key(params: &[(&str, &str)]) -> SpareKey {
    SpareKey {
        target: DialTarget::loopback(5432),
        database: "app".into(),
        dbname: "app".into(),
        role: "lockbox_req".into(),
        access: AccessLevel::Read,
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// A logged-in backend as the proxy holds it, and the server's end of its connection.
fn backend(pid: i32) -> (Upstream, DuplexStream) {
    let (proxy_side, server) = tokio::io::duplex(4096);
    let upstream = Upstream {
        stream: Box::new(proxy_side),
        greeting: BytesMut::new(),
        backend_pid: pid,
        backend_secret: 7,
        ready_status: b'I',
    };
    (upstream, server)
}

/// A spare filled in for `request` on the server at `port`, and its server end.
fn ready_spare(spares: &Arc<Spares>, request: &RequestId, port: u16) -> DuplexStream {
    let (upstream, server) = backend(1);
    let on_port = SpareKey {
        target: DialTarget::loopback(port),
        ..key(&[])
    };
    spares
        .reserve(request, &on_port, true, later())
        .expect("reservation")
        .fill(upstream);
    server
}

/// A login of `request` taking its spare, as a task: the pid of the backend it got.
fn taking(spares: &Arc<Spares>, request: &RequestId) -> tokio::task::JoinHandle<Option<i32>> {
    let (spares, request) = (spares.clone(), request.clone());
    tokio::spawn(async move {
        spares
            .take(&request, &key(&[]))
            .await
            .map(|u| u.backend_pid)
    })
}

fn pool() -> (Arc<Spares>, Arc<Metrics>) {
    let spares = Arc::new(Spares::default());
    let metrics = Arc::new(Metrics::default());
    spares.count_in(metrics.clone());
    (spares, metrics)
}

fn grant(name: &str) -> RequestId {
    RequestId(name.into())
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// The server's end read to its close: what the proxy sent before closing.
async fn sent_before_close(server: &mut DuplexStream) -> Vec<u8> {
    let mut sent = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), server.read_to_end(&mut sent))
        .await
        .expect("the spare is closed")
        .expect("read");
    sent
}

#[tokio::test]
async fn a_spare_goes_only_to_a_login_that_matches_it_exactly() {
    let (spares, metrics) = pool();
    let a = grant("a");
    let reservation = spares
        .reserve(&a, &key(&[("application_name", "psql")]), true, later())
        .expect("a reservation");
    let (upstream, _server) = backend(41);
    reservation.fill(upstream);

    for other in [
        key(&[("application_name", "pgbench")]),
        key(&[]),
        key(&[("application_name", "psql"), ("TimeZone", "UTC")]),
        SpareKey {
            role: "lockbox_service".into(),
            ..key(&[("application_name", "psql")])
        },
        SpareKey {
            access: AccessLevel::Write,
            ..key(&[("application_name", "psql")])
        },
        SpareKey {
            database: "other".into(),
            ..key(&[("application_name", "psql")])
        },
        SpareKey {
            dbname: "app_v2".into(),
            ..key(&[("application_name", "psql")])
        },
        SpareKey {
            target: DialTarget::loopback(5433),
            ..key(&[("application_name", "psql")])
        },
    ] {
        assert!(
            spares.take_ready(&a, &other).is_none(),
            "{:?}",
            other.params
        );
    }
    assert!(spares
        .take(&grant("b"), &key(&[("application_name", "psql")]))
        .await
        .is_none());
    let taken = spares
        .take(&a, &key(&[("application_name", "psql")]))
        .await
        .expect("the matching login takes it");
    assert_eq!(taken.backend_pid, 41);
    assert!(
        spares
            .take(&a, &key(&[("application_name", "psql")]))
            .await
            .is_none(),
        "a spare serves one session"
    );
    assert_eq!(metrics.spare_backends(SpareOutcome::Used), 1);
    assert_eq!(spares.held(), 0);
}

#[tokio::test]
async fn only_a_grant_that_reconnects_gets_a_spare_and_one_at_a_time() {
    let (spares, _) = pool();
    let a = grant("a");
    assert!(
        spares.reserve(&a, &key(&[]), false, later()).is_none(),
        "a first session has no spare opened beside it"
    );
    spares.ended(&a);
    let first = spares
        .reserve(&a, &key(&[]), false, later())
        .expect("it reconnects");
    assert!(spares.reserve(&a, &key(&[]), false, later()).is_none());
    assert!(
        spares.reserve(&a, &key(&[]), true, later()).is_none(),
        "one per grant"
    );
    assert!(
        spares
            .reserve(&grant("b"), &key(&[]), false, later())
            .is_none(),
        "another grant's end says nothing of this one"
    );
    // A login that failed frees the slot.
    first.failed();
    assert_eq!(spares.held(), 0);
    assert!(spares.reserve(&a, &key(&[]), false, later()).is_some());
    assert!(
        spares
            .reserve(&grant("c"), &key(&[]), true, Instant::now())
            .is_none(),
        "nor for a grant already over"
    );
    let soon = Instant::now() + LEAST_REMAINING - Duration::from_millis(1);
    assert!(
        spares.reserve(&grant("c"), &key(&[]), true, soon).is_none(),
        "nor for one about to end"
    );
}

#[tokio::test(start_paused = true)]
async fn a_session_that_ended_long_ago_does_not_make_its_grant_reconnect() {
    let (spares, _) = pool();
    let a = grant("a");
    spares.ended(&a);
    tokio::time::advance(RECONNECT_WINDOW + Duration::from_millis(1)).await;
    assert!(spares.reserve(&a, &key(&[]), false, later()).is_none());
}

#[tokio::test]
async fn a_spare_the_server_spoke_to_or_closed_is_never_handed_over() {
    let (spares, metrics) = pool();
    let a = grant("a");
    // A termination's FATAL (any byte will do: an idle backend says nothing).
    let mut server = ready_spare(&spares, &a, 5432);
    server.write_all(b"E").await.expect("write");
    assert!(spares.take_ready(&a, &key(&[])).is_none());
    assert_eq!(spares.held(), 0, "and it is gone");
    // A closed socket.
    let server = ready_spare(&spares, &a, 5432);
    drop(server);
    assert!(spares.take_ready(&a, &key(&[])).is_none());
    assert_eq!(metrics.spare_backends(SpareOutcome::Closed), 2);
    assert_eq!(metrics.spare_backends(SpareOutcome::Used), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unused_spare_is_logged_out_after_its_idle_time_or_its_grant_end() {
    let (spares, metrics) = pool();
    let (a, b) = (grant("a"), grant("b"));
    let mut idle_server = ready_spare(&spares, &a, 5432);
    let grant_end = Instant::now() + Duration::from_secs(4);
    let (upstream, mut ending_server) = backend(2);
    spares
        .reserve(&b, &key(&[]), true, grant_end)
        .expect("reservation")
        .fill(upstream);

    tokio::time::advance(Duration::from_secs(4)).await;
    // Terminate ('X'), then the close.
    assert_eq!(sent_before_close(&mut ending_server).await, b"X\0\0\0\x04");
    assert_eq!(spares.held(), 1, "the other grant's spare still waits");
    tokio::time::advance(SPARE_IDLE).await;
    assert_eq!(sent_before_close(&mut idle_server).await, b"X\0\0\0\x04");
    assert!(spares.take_ready(&a, &key(&[])).is_none());
    assert_eq!(metrics.spare_backends(SpareOutcome::Expired), 2);
}

#[tokio::test]
async fn dropping_a_grants_sessions_closes_its_spare_even_one_still_logging_in() {
    let (spares, metrics) = pool();
    let (a, b) = (grant("a"), grant("b"));
    let mut ready_server = ready_spare(&spares, &a, 5432);
    let logging_in = spares
        .reserve(&b, &key(&[]), true, later())
        .expect("reservation");
    spares.discard(&a);
    spares.discard(&b);
    assert_eq!(sent_before_close(&mut ready_server).await, b"X\0\0\0\x04");
    // The login that was running when its grant was dropped ends in a close, not a spare.
    let (upstream, mut late_server) = backend(2);
    logging_in.fill(upstream);
    assert_eq!(sent_before_close(&mut late_server).await, b"X\0\0\0\x04");
    assert!(spares.take_ready(&b, &key(&[])).is_none());
    assert_eq!(metrics.spare_backends(SpareOutcome::Closed), 2);
    // A dropped grant gets no spare again: not from a session admitted before the drop
    // that is still logging in (it took a spare, or its grant's sessions just ended).
    spares.ended(&a);
    assert!(spares.reserve(&a, &key(&[]), false, later()).is_none());
    assert!(spares.reserve(&a, &key(&[]), true, later()).is_none());
    assert!(spares.reserve(&b, &key(&[]), true, later()).is_none());
    assert!(spares
        .reserve(&grant("c"), &key(&[]), true, later())
        .is_some());
}

/// Reads the Terminate and closes, as a backend does as it exits.
fn exits(mut server: DuplexStream) -> tokio::task::JoinHandle<[u8; 5]> {
    tokio::spawn(async move {
        let mut terminate = [0u8; 5];
        server.read_exact(&mut terminate).await.expect("terminate");
        terminate
    })
}

#[tokio::test(start_paused = true)]
async fn a_login_refused_for_want_of_slots_has_the_spares_on_its_server_give_theirs_up() {
    let (spares, metrics) = pool();
    let (a, b, c, d) = (grant("a"), grant("b"), grant("c"), grant("d"));
    let on_server = [
        ready_spare(&spares, &a, 5432),
        ready_spare(&spares, &b, 5432),
    ];
    let mut elsewhere = ready_spare(&spares, &c, 6543);
    let logging_in = spares
        .reserve(&d, &key(&[]), true, later())
        .expect("reservation");
    let exits: Vec<_> = on_server.into_iter().map(exits).collect();

    assert!(spares.yield_slots(&DialTarget::loopback(5432)).await);
    for exit in exits {
        assert_eq!(&exit.await.expect("join"), b"X\0\0\0\x04");
    }
    assert_eq!(metrics.spare_backends(SpareOutcome::Closed), 2);
    // The one logging in is given up: its backend is closed when its login ends.
    let (upstream, mut late_server) = backend(4);
    logging_in.fill(upstream);
    assert_eq!(sent_before_close(&mut late_server).await, b"X\0\0\0\x04");
    // A spare on another server cannot hold this server's slots: it stays.
    assert_eq!(spares.grants(), vec![c.clone()]);
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(10), elsewhere.read(&mut byte))
            .await
            .is_err(),
        "nothing was sent to the other server's spare"
    );

    // A login refused at the same moment finds nothing left to close, yet tries again:
    // the slots were freed just now.
    assert!(spares.yield_slots(&DialTarget::loopback(5432)).await);
    tokio::time::advance(FREED_LATELY).await;
    assert!(
        !spares.yield_slots(&DialTarget::loopback(5432)).await,
        "with nothing freed lately, a refused login is refused"
    );
}

#[tokio::test]
async fn at_shutdown_every_spare_is_closed_and_none_is_opened_again() {
    let (spares, _) = pool();
    let a = grant("a");
    let mut server = ready_spare(&spares, &a, 5432);
    spares.close_all();
    assert_eq!(sent_before_close(&mut server).await, b"X\0\0\0\x04");
    assert!(spares.reserve(&a, &key(&[]), true, later()).is_none());
    assert!(spares.grants().is_empty());
}

#[tokio::test]
async fn spares_are_capped_over_all_grants() {
    let (spares, _) = pool();
    let held: Vec<Reservation> = (0..MAX_SPARES)
        .map(|i| {
            spares
                .reserve(&grant(&format!("g{i}")), &key(&[]), true, later())
                .expect("under the cap")
        })
        .collect();
    assert!(spares
        .reserve(&grant("one-more"), &key(&[]), true, later())
        .is_none());
    drop(held);
    assert!(spares
        .reserve(&grant("one-more"), &key(&[]), true, later())
        .is_some());
}

#[tokio::test]
async fn the_first_login_to_find_its_spare_still_logging_in_waits_for_it() {
    let (spares, metrics) = pool();
    let a = grant("a");
    let reservation = spares
        .reserve(&a, &key(&[]), true, later())
        .expect("reservation");
    let waiter = taking(&spares, &a);
    // Until the waiter has claimed it, a second look could claim it too: wait for that.
    for _ in 0..1000 {
        if spares
            .lock()
            .slots
            .get(&a)
            .is_some_and(|s| matches!(s, Slot::Opening { claimed: true, .. }))
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        spares.take(&a, &key(&[])).await.is_none(),
        "one session waits for it; the others log in as they would"
    );
    assert!(
        spares
            .take(&a, &key(&[("application_name", "x")]))
            .await
            .is_none(),
        "nor does a login it was not made for"
    );
    let (upstream, _server) = backend(9);
    reservation.fill(upstream);
    assert_eq!(waiter.await.expect("join"), Some(9));
    assert_eq!(metrics.spare_backends(SpareOutcome::Used), 1);
}

#[tokio::test]
async fn a_login_waiting_for_a_spare_that_fails_logs_in_as_it_would() {
    let (spares, metrics) = pool();
    let a = grant("a");
    let reservation = spares
        .reserve(&a, &key(&[]), true, later())
        .expect("reservation");
    let waiter = taking(&spares, &a);
    tokio::task::yield_now().await;
    reservation.failed();
    let taken = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter is told at once")
        .expect("join");
    assert_eq!(taken, None);
    assert_eq!(metrics.spare_backends(SpareOutcome::Failed), 1);
    assert_eq!(spares.held(), 0);
}

/// A runtime standing in for a session thread.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Fills `request`'s spare with a backend on `socket`, registered with the current runtime.
fn fill_on_this_thread(spares: &Arc<Spares>, request: &RequestId, socket: tokio::net::TcpStream) {
    let upstream = Upstream {
        stream: Box::new(socket),
        greeting: BytesMut::new(),
        backend_pid: 9,
        backend_secret: 7,
        ready_status: b'I',
    };
    spares
        .reserve(request, &key(&[]), true, later())
        .expect("reservation")
        .fill(upstream);
}

/// A spare logged in on one session thread and taken on another comes to the taker's
/// reactor: it still serves once the thread that opened it has stopped.
#[test]
fn a_spare_taken_on_another_thread_is_served_by_that_threads_reactor() {
    use tokio::net::{TcpListener, TcpStream};
    let (spares, metrics) = pool();
    let a = grant("a");
    let opener = runtime();
    let mut server = opener.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (connected, accepted) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        fill_on_this_thread(&spares, &a, connected.unwrap());
        accepted.unwrap().0
    });
    let taker = runtime();
    let mut upstream = taker
        .block_on(spares.take(&a, &key(&[])))
        .expect("the spare is handed over");
    opener.shutdown_background();
    taker.block_on(async {
        server.move_here().unwrap();
        upstream.stream.write_all(b"Q").await.expect("write");
        upstream.stream.flush().await.expect("flush");
        let mut got = [0u8; 1];
        server.read_exact(&mut got).await.expect("server reads");
        server.write_all(b"Z").await.expect("server writes");
        upstream
            .stream
            .read_exact(&mut got)
            .await
            .expect("the spare reads on the taker's reactor");
        assert_eq!(&got, b"Z");
    });
    assert_eq!(metrics.spare_backends(SpareOutcome::Used), 1);
}

/// A spare whose server already sent its termination is closed, not handed over, even when
/// the session thread it was logged in on has not handled that yet (here: its runtime never
/// runs again), and the taker is on another thread.
#[test]
fn a_spare_the_server_ended_unseen_by_its_own_thread_is_not_handed_over() {
    let (spares, metrics) = pool();
    let a = grant("a");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    // A second descriptor of the proxy's end, to see when the server's bytes are there.
    let observer = client.try_clone().unwrap();
    client.set_nonblocking(true).unwrap();
    let opener = runtime();
    opener.block_on(async {
        fill_on_this_thread(
            &spares,
            &a,
            tokio::net::TcpStream::from_std(client).unwrap(),
        );
    });
    std::io::Write::write_all(&mut server, b"E").unwrap();
    // Blocking for this one peek (the flag is the socket's, shared by both descriptors).
    observer.set_nonblocking(false).unwrap();
    observer.peek(&mut [0u8; 1]).unwrap();
    observer.set_nonblocking(true).unwrap();
    let taker = runtime();
    let taken = taker.block_on(spares.take(&a, &key(&[])));
    assert!(taken.is_none(), "an ended spare is never handed over");
    assert_eq!(metrics.spare_backends(SpareOutcome::Closed), 1);
    assert_eq!(metrics.spare_backends(SpareOutcome::Used), 0);
}
