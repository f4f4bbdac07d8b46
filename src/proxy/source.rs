//! Who a connection counts against: one key per client *host*, not per address. An IPv6
//! host is given a whole /64 and can pick any address in it, so IPv6 sources are keyed by
//! their /64; an IPv4-mapped IPv6 address is the IPv4 host it maps.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A source the per-source limits count against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(Ipv4Addr),
    /// The first 64 bits of the address.
    V6Net(u64),
}

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ip: &str, expected: &str) {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(Source::of(ip).to_string(), expected);
    }

    #[test]
    fn sources_are_hosts() {
        check("10.1.2.3", "10.1.2.3");
        check("::ffff:10.1.2.3", "10.1.2.3");
        check("2001:db8:0:1:aaaa:bbbb:cccc:dddd", "2001:db8:0:1::/64");
        check("2001:db8:0:1::1", "2001:db8:0:1::/64");
        check("::1", "::/64");
    }
}
