use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::*;
use crate::proxy::Registry;

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

#[test]
fn an_admission_earns_trust_for_a_while_and_a_failure_loses_it() {
    let trusted = TrustedSources::default();
    let now = Instant::now();
    assert!(trusted.claim_at(v4(1), now).is_none(), "never admitted");
    trusted.earn_at(v4(1), now);
    assert!(trusted.claim_at(v4(2), now).is_none(), "another address");
    assert!(trusted.claim_at(v4(1), now + TRUST_FOR).is_none(), "lapsed");
    let claim = trusted.claim_at(v4(1), now + TRUST_FOR - Duration::from_secs(1));
    trusted.settled(claim.expect("trusted"));
    trusted.earn_at(v4(1), now + TRUST_FOR);
    let claim = trusted.claim_at(v4(1), now + TRUST_FOR);
    trusted.settled(claim.expect("earned again"));
    trusted.lose(v4(1));
    assert!(trusted.claim_at(v4(1), now + TRUST_FOR).is_none(), "lost");
}

#[test]
fn a_trusted_source_has_a_bounded_number_of_startup_dials_at_once() {
    let trusted = TrustedSources::default();
    let now = Instant::now();
    trusted.earn_at(v4(3), now);
    let mut claims: Vec<Claim> = (0..MAX_IN_FLIGHT)
        .map(|_| trusted.claim_at(v4(3), now).expect("a dial free"))
        .collect();
    assert!(
        trusted.claim_at(v4(3), now).is_none(),
        "all its dials are in flight"
    );
    // Being admitted again does not free a dial still in flight.
    trusted.earn_at(v4(3), now);
    assert!(trusted.claim_at(v4(3), now).is_none());
    trusted.settled(claims.remove(0));
    assert!(
        trusted.claim_at(v4(3), now).is_some(),
        "a used dial gives its place back"
    );
}

#[test]
fn a_dial_claimed_before_the_trust_was_lost_and_earned_again_does_not_free_a_new_place() {
    let trusted = TrustedSources::default();
    let now = Instant::now();
    trusted.earn_at(v4(5), now);
    let old = trusted.claim_at(v4(5), now).expect("trusted");
    // Another login from the source fails (the trust is lost), a third is admitted (earned
    // anew), and the new trust's dials are all taken while the old one is still in flight.
    trusted.lose(v4(5));
    trusted.earn_at(v4(5), now);
    for _ in 0..MAX_IN_FLIGHT {
        assert!(trusted.claim_at(v4(5), now).is_some());
    }
    trusted.settled(old);
    assert!(
        trusted.claim_at(v4(5), now).is_none(),
        "the old trust's dial ended: the new trust still has {MAX_IN_FLIGHT} in flight"
    );
}

#[test]
fn trust_is_per_host_an_ipv6_host_being_its_64() {
    let trusted = TrustedSources::default();
    let a: IpAddr = "2001:db8:1:2::10".parse().unwrap();
    let same_host: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
    let other_host: IpAddr = "2001:db8:1:3::10".parse().unwrap();
    let mapped: IpAddr = "::ffff:10.0.0.4".parse().unwrap();
    trusted.earn(a);
    trusted.earn(mapped);
    assert!(
        trusted.claim(v4(4)).is_some(),
        "an IPv4-mapped address is its IPv4 host"
    );
    assert!(trusted.claim(same_host).is_some());
    assert!(trusted.claim(other_host).is_none());
    // A failure anywhere in the /64 loses the host's trust.
    trusted.lose(same_host);
    assert!(trusted.claim(a).is_none());
}

#[test]
fn the_table_is_bounded_and_lapsed_trust_makes_room() {
    let trusted = TrustedSources::default();
    let start = Instant::now();
    let host = |i: usize| IpAddr::V6(Ipv6Addr::from((i as u128) << 64));
    for i in 0..MAX_TRUSTED {
        trusted.earn_at(host(i), start);
    }
    let newcomer = host(MAX_TRUSTED);
    trusted.earn_at(newcomer, start);
    assert!(
        trusted.claim_at(newcomer, start).is_none(),
        "full: not taken in"
    );
    assert!(trusted.claim_at(host(0), start).is_some(), "old trust kept");
    let later = start + TRUST_FOR;
    trusted.earn_at(newcomer, later);
    assert!(
        trusted.claim_at(newcomer, later).is_some(),
        "lapsed entries made room"
    );
    // The one with a dial in flight stays until it is settled.
    assert_eq!(trusted.sources().len(), 2);
}

/// A listener standing in for the database, and a dial to it from `source`.
async fn dial_to_listener(
    registry: &Arc<Registry>,
    metrics: &Arc<Metrics>,
    source: IpAddr,
    on_trust: Option<Claim>,
) -> (TcpListener, DialTarget, EarlyDial) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = DialTarget::loopback(listener.local_addr().unwrap().port());
    let dial = EarlyDial::start(
        target.clone(),
        source,
        on_trust,
        registry.clone(),
        metrics.clone(),
    )
    .expect("a dial free");
    (listener, target, dial)
}

fn counts(metrics: &Metrics) -> [u64; 4] {
    [
        EarlyDialOutcome::Used,
        EarlyDialOutcome::Unused,
        EarlyDialOutcome::Failed,
        EarlyDialOutcome::Stale,
    ]
    .map(|o| metrics.early_dials(o))
}

#[tokio::test]
async fn a_used_dial_hands_over_its_connection_keeps_the_trust_and_frees_its_place() {
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    registry.trusted.earn(v4(7));
    let mut claims: Vec<Claim> = (0..MAX_IN_FLIGHT)
        .map(|_| registry.trusted.claim(v4(7)).expect("a dial free"))
        .collect();
    let (listener, target, dial) =
        dial_to_listener(&registry, &metrics, v4(7), Some(claims.remove(0))).await;
    let (mut server, _) = listener.accept().await.unwrap();
    let mut stream = dial.stream(&target).await.expect("dialed");
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"hello")
        .await
        .unwrap();
    let mut got = [0u8; 5];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
    assert_eq!(counts(&metrics), [1, 0, 0, 0]);
    assert!(
        registry.trusted.claim(v4(7)).is_some(),
        "trusted, with a dial free again"
    );
}

#[tokio::test]
async fn an_unused_dial_closes_without_a_byte_and_costs_its_source_the_trust() {
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    registry.trusted.earn(v4(8));
    registry.trusted.earn(v4(9));
    let claim = registry.trusted.claim(v4(8));
    assert!(claim.is_some());
    let (listener, _, dial) = dial_to_listener(&registry, &metrics, v4(8), claim).await;
    let (mut server, _) = listener.accept().await.unwrap();
    // Accepted: whether or not the dial's task has seen its connect finish, dropping it
    // closes the connection.
    drop(dial);
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), server.read_to_end(&mut got))
        .await
        .expect("the dialed connection is closed when the dial is dropped");
    assert_eq!(read.unwrap(), 0, "nothing was sent on it: {got:?}");
    assert_eq!(counts(&metrics), [0, 1, 0, 0]);
    assert!(
        registry.trusted.claim(v4(8)).is_none(),
        "its source lost the trust"
    );
    assert!(
        registry.trusted.claim(v4(9)).is_some(),
        "other sources keep theirs"
    );
}

#[tokio::test]
async fn a_dial_to_a_database_configured_differently_since_is_closed_not_used() {
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    registry.trusted.earn(v4(11));
    let mut claims: Vec<Claim> = (0..MAX_IN_FLIGHT)
        .map(|_| registry.trusted.claim(v4(11)).expect("a dial free"))
        .collect();
    let (listener, _, dial) =
        dial_to_listener(&registry, &metrics, v4(11), Some(claims.remove(0))).await;
    let (mut server, _) = listener.accept().await.unwrap();
    let moved = DialTarget::loopback(1);
    let stale = dial.stream(&moved).await;
    assert!(
        matches!(stale, Err(EarlyDialError::Stale)),
        "{:?}",
        stale.as_ref().err()
    );
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), server.read_to_end(&mut got))
        .await
        .expect("closed");
    assert_eq!(read.unwrap(), 0);
    assert_eq!(counts(&metrics), [0, 0, 0, 1]);
    // Not the source's doing: its trust stays, its place is free again.
    assert!(registry.trusted.claim(v4(11)).is_some());
}

#[tokio::test]
async fn a_failed_dial_is_the_logins_to_redo_and_counted_as_failed() {
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    // A port nobody listens on (any more).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = DialTarget::loopback(listener.local_addr().unwrap().port());
    drop(listener);
    let dial = EarlyDial::start(
        target.clone(),
        v4(12),
        None,
        registry.clone(),
        metrics.clone(),
    )
    .expect("a dial free");
    let dialed = dial.stream(&target).await;
    assert!(
        matches!(
            dialed,
            Err(EarlyDialError::Dial(UpstreamError::Connect { .. }))
        ),
        "{:?}",
        dialed.as_ref().err()
    );
    assert_eq!(counts(&metrics), [0, 0, 1, 0]);
}

#[tokio::test]
async fn the_proxy_holds_a_bounded_number_of_early_dials_at_once() {
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = DialTarget::loopback(listener.local_addr().unwrap().port());
    let start = |i: u8| {
        EarlyDial::start(
            target.clone(),
            v4(i),
            None,
            registry.clone(),
            metrics.clone(),
        )
    };
    let mut open: Vec<EarlyDial> = (0..MAX_EARLY_IN_FLIGHT)
        .map(|i| start(i as u8).expect("under the cap"))
        .collect();
    assert!(
        start(200).is_none(),
        "past the cap: the login dials once admitted"
    );
    // A trusted source's claim is given back when its dial cannot start.
    registry.trusted.earn(v4(203));
    let claim = registry.trusted.claim(v4(203)).expect("trusted");
    let refused = EarlyDial::start(
        target.clone(),
        v4(203),
        Some(claim),
        registry.clone(),
        metrics.clone(),
    );
    assert!(refused.is_none());
    for _ in 0..MAX_IN_FLIGHT {
        assert!(
            registry.trusted.claim(v4(203)).is_some(),
            "the refused dial's claim was given back"
        );
    }
    // A dial dropped unused frees its place; so does one handed to its login.
    drop(open.pop());
    let next = start(201).expect("a place was freed");
    let _ = next.stream(&target).await;
    let after = start(202).expect("a used dial freed its place");
    drop(after);
    drop(open);
    assert_eq!(registry.trusted.in_flight.load(Ordering::SeqCst), 0);
}
