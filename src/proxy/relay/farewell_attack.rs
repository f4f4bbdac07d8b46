//! Attack review of d0ec59e at the socket level: the farewell's bounds and the
//! connection slot it holds. These are non-findings (they pass): each pins a bound the
//! change relies on.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::farewell::tests::{farewell, queued_pair};

/// A client that keeps taking a trickle of bytes, forever, never reaching the end: the
/// farewell still lets it go (30 s cap), so one client cannot hold its socket and slot
/// for longer than that after its session ended.
#[tokio::test]
async fn attack_a_client_taking_a_trickle_forever_is_let_go() {
    let (proxy, mut client, filler) = queued_pair(Some(4096)).await;
    let words = b"the FATAL".repeat(100);
    let started = Instant::now();
    let deliver = tokio::spawn(farewell(proxy, &words).deliver());
    let trickle = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        let mut got = 0usize;
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(45), deliver)
        .await
        .expect("the farewell ends within its hard cap, however steadily the client reads")
        .expect("join");
    let took = started.elapsed();
    trickle.abort();
    eprintln!("{filler} bytes queued; the farewell lasted {took:?}");
}

/// A client that keeps sending during the drain and never closes: the drain ends once the
/// queue is empty (plus `CLOSE_WAIT`), it is not held open by the client's writes.
#[tokio::test]
async fn attack_a_client_that_keeps_sending_during_the_drain_is_let_go() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (proxy, _) = listener.accept().await.expect("accept");
    let (mut client_r, mut client_w) = client.into_split();
    let writer = tokio::spawn(async move {
        let junk = vec![b'Q'; 8192];
        while client_w.write_all(&junk).await.is_ok() {}
    });
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = client_r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        farewell(proxy, b"the FATAL").deliver(),
    )
    .await
    .expect("a client sending forever does not hold the farewell");
    eprintln!("farewell lasted {:?}", started.elapsed());
    writer.abort();
    let got = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("reader ends")
        .expect("join");
    assert_eq!(got, b"the FATAL", "exactly the words, nothing after them");
}

/// The connection slot goes back as the session ends, farewell or not (a slow reader must
/// not keep another engineer out); a patient farewell holds a pass instead, given back when
/// it ends, and past `max` passes a farewell hurries (no more than a moment per step).
#[tokio::test]
async fn attack_the_aftermath_gives_the_slot_back_and_bounds_patient_farewells() {
    use crate::proxy::aftermath::Aftermath;
    use crate::proxy::gate::{take_slot, Limits};
    let registry = Arc::new(crate::proxy::Registry::default());
    let limits = Limits {
        max_connections: 4,
        failed_login_limit: 10,
        failed_login_window: Duration::from_secs(60),
    };
    // No farewell, no reaper: nothing to run, and the slot goes with the session.
    let slot = take_slot(&registry, &limits).expect("slot");
    assert_eq!(registry.gate.open(), 1);
    let none = Aftermath::new(None, None, None)
        .into_work()
        .map(|a| a.releasing(slot, 1));
    assert!(none.is_none());
    assert_eq!(
        registry.gate.open(),
        0,
        "the slot of a session with no aftermath"
    );

    // A farewell to a client that reads nothing for now: the slot is back at once, the
    // pass held while the farewell waits.
    let (proxy, mut client, _filler) = queued_pair(None).await;
    let slot = take_slot(&registry, &limits).expect("slot");
    let after = Aftermath::new(None, None, Some(farewell(proxy, b"the FATAL")))
        .into_work()
        .expect("a farewell is work")
        .releasing(slot, 1);
    assert_eq!(
        registry.gate.open(),
        0,
        "the slot is back as the session ends"
    );
    assert_eq!(
        registry.gate.farewells(),
        1,
        "a pass for the patient farewell"
    );
    assert_eq!(after.farewell_is_patient(), Some(true));
    // The second farewell's stalled client is made before the first farewell starts: its
    // filling takes a while, which a busy machine could stretch past the first one's
    // stall limit, while its client reads nothing yet.
    let (proxy2, _client2, _) = queued_pair(None).await;
    let run = tokio::spawn(after.run());

    // A second farewell finds no pass left: it hurries, and gives up on its stalled client
    // within a moment rather than the stall limit.
    let slot = take_slot(&registry, &limits).expect("slot");
    let hurried = Aftermath::new(None, None, Some(farewell(proxy2, b"the FATAL")))
        .into_work()
        .expect("work")
        .releasing(slot, 1);
    assert_eq!(registry.gate.farewells(), 1, "no second pass");
    assert_eq!(hurried.farewell_is_patient(), Some(false), "it hurries");
    tokio::time::timeout(Duration::from_secs(10), hurried.run())
        .await
        .expect("a hurried farewell ends");

    let mut got = Vec::new();
    client.read_to_end(&mut got).await.expect("read");
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the aftermath ends once the client closed")
        .expect("join");
    assert_eq!(registry.gate.farewells(), 0, "the pass is given back");
    assert!(got.ends_with(b"the FATAL"));
}
