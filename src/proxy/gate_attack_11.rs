//! attack-11: the per-source failed-login limit.

use std::net::{IpAddr, Ipv6Addr};

use super::gate::{Gate, Limits};

/// `gate::MAX_SOURCES`.
const MAX_SOURCES_FOR_TESTS: usize = 65_536;

fn limits() -> Limits {
    Limits {
        max_connections: 100,
        failed_login_limit: 5,
        failed_login_window: std::time::Duration::from_secs(3600),
    }
}

fn v6(n: u64) -> IpAddr {
    // One /64, as every IPv6 host is given: 2001:db8:0:1::/64.
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        0,
        1,
        (n >> 48) as u16,
        (n >> 32) as u16,
        (n >> 16) as u16,
        n as u16,
    ))
}

/// Once the table holds MAX_SOURCES sources (one failure each, e.g. from one IPv6 /64 or
/// a /48), a new source is never limited: it guesses tokens without end, each failure
/// recorded (an audit flood) and never `blocked`.
#[test]
fn attack_11_a_full_source_table_lifts_the_limit_for_new_sources() {
    let gate = Gate::default();
    let l = limits();
    for n in 0..MAX_SOURCES_FOR_TESTS as u64 {
        gate.failed(v6(n), &l);
    }
    let attacker = v6(u64::MAX);
    for _ in 0..1000 {
        gate.failed(attacker, &l);
    }
    assert!(
        gate.blocked(attacker, &l),
        "1000 failed logins from one address, yet it is not limited (the source table was full)"
    );
}

/// Every address of one IPv6 /64 gets a budget of its own: one host rotating its
/// interface identifier is never limited.
#[test]
fn attack_11_an_ipv6_host_rotating_addresses_in_its_64_is_never_limited() {
    let gate = Gate::default();
    let l = limits();
    for n in 0..100u64 {
        gate.failed(v6(n), &l);
    }
    assert!(
        gate.blocked(v6(100), &l),
        "100 failed logins from one /64, yet its next address is admitted"
    );
}
