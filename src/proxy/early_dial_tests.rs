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
    assert!(!trusted.holds_at(v4(1), now), "never admitted");
    trusted.earn_at(v4(1), now);
    assert!(trusted.holds_at(v4(1), now + TRUST_FOR - Duration::from_secs(1)));
    assert!(!trusted.holds_at(v4(2), now), "another address");
    assert!(!trusted.holds_at(v4(1), now + TRUST_FOR), "lapsed");
    trusted.earn_at(v4(1), now + TRUST_FOR);
    assert!(trusted.holds_at(v4(1), now + TRUST_FOR), "earned again");
    trusted.lose(v4(1));
    assert!(!trusted.holds_at(v4(1), now + TRUST_FOR), "lost");
}

#[test]
fn trust_is_per_host_an_ipv6_host_being_its_64() {
    let trusted = TrustedSources::default();
    let a: IpAddr = "2001:db8:1:2::10".parse().unwrap();
    let same_host: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
    let other_host: IpAddr = "2001:db8:1:3::10".parse().unwrap();
    trusted.earn(a);
    assert!(trusted.holds(same_host));
    assert!(!trusted.holds(other_host));
    // A failure anywhere in the /64 loses the host's trust.
    trusted.lose(same_host);
    assert!(!trusted.holds(a));
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
    assert!(!trusted.holds_at(newcomer, start), "full: not taken in");
    assert!(trusted.holds_at(host(0), start), "old trust kept");
    let later = start + TRUST_FOR;
    trusted.earn_at(newcomer, later);
    assert!(
        trusted.holds_at(newcomer, later),
        "lapsed entries made room"
    );
    assert_eq!(trusted.admitted().len(), 1);
}

/// A listener standing in for the database, and a dial to it from `source`.
async fn dial_to_listener(
    registry: &Arc<Registry>,
    metrics: &Arc<Metrics>,
    source: IpAddr,
) -> (TcpListener, EarlyDial) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dial = EarlyDial::start(
        DialTarget::loopback(port),
        source,
        registry.clone(),
        metrics.clone(),
    );
    (listener, dial)
}

#[tokio::test]
async fn a_used_dial_hands_over_its_connection_and_keeps_the_trust() {
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    registry.trusted.earn(v4(7));
    let (listener, dial) = dial_to_listener(&registry, &metrics, v4(7)).await;
    let (mut server, _) = listener.accept().await.unwrap();
    let mut stream = dial.stream().await.expect("dialed");
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"hello")
        .await
        .unwrap();
    let mut got = [0u8; 5];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
    assert_eq!(metrics.early_dials(), (1, 0));
    assert!(registry.trusted.holds(v4(7)));
}

#[tokio::test]
async fn an_unused_dial_closes_without_a_byte_and_costs_its_source_the_trust() {
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    registry.trusted.earn(v4(8));
    registry.trusted.earn(v4(9));
    let (listener, dial) = dial_to_listener(&registry, &metrics, v4(8)).await;
    let (mut server, _) = listener.accept().await.unwrap();
    // Accepted: whether or not the dial's task has seen its connect finish, dropping it
    // closes the connection.
    drop(dial);
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), server.read_to_end(&mut got))
        .await
        .expect("the dialed connection is closed when the dial is dropped");
    assert_eq!(read.unwrap(), 0, "nothing was sent on it: {got:?}");
    assert_eq!(metrics.early_dials(), (0, 1));
    assert!(!registry.trusted.holds(v4(8)), "its source lost the trust");
    assert!(registry.trusted.holds(v4(9)), "other sources keep theirs");
}
