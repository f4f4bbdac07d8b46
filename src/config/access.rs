//! What an engineer needs to reach the proxy — `[proxy] public_host`, `public_port` and
//! `ca_cert`, handed out with every token — and when a session is warned that its access
//! is about to end (`[timings] warn_before`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::{invalid, parse_duration, ConfigError};

/// How engineers' clients reach the proxy, as the token API reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectInfo {
    /// The host name clients connect to (and verify the proxy's certificate against).
    pub host: String,
    pub port: u16,
    /// `verify-full` when the proxy speaks TLS; `disable` when it only takes loopback
    /// plaintext (a sandbox).
    pub sslmode: String,
    /// Where engineers' clients find the CA certificate that signed the proxy's
    /// certificate. Handed out as written: it names a file on the engineer's machine,
    /// not the server's.
    pub ca_cert: Option<String>,
}

/// The default of `[timings] warn_before`.
pub fn default_warn_before() -> Vec<String> {
    vec!["10m".into(), "1m".into()]
}

/// `public_host` defaults to the listener's address unless that is a wildcard (which no
/// client can connect to, nor a certificate name): then `localhost`.
pub(super) fn connect_info(
    public_host: Option<&str>,
    public_port: Option<u16>,
    ca_cert: Option<&str>,
    listen: SocketAddr,
    tls: bool,
) -> Result<ConnectInfo, ConfigError> {
    let host = match public_host.map(str::trim) {
        Some("") => return Err(invalid("proxy.public_host", "must not be empty")),
        Some(host) => host.to_owned(),
        None if listen.ip().is_unspecified() => "localhost".to_owned(),
        None => listen.ip().to_string(),
    };
    if public_port == Some(0) {
        return Err(invalid("proxy.public_port", "must not be 0"));
    }
    let ca_cert = match ca_cert.map(str::trim) {
        Some("") => return Err(invalid("proxy.ca_cert", "must not be empty")),
        other => other.map(str::to_owned),
    };
    Ok(ConnectInfo {
        host,
        port: public_port.unwrap_or(listen.port()),
        sslmode: if tls { "verify-full" } else { "disable" }.to_owned(),
        ca_cert,
    })
}

/// The offsets before a session's end at which it is warned, longest first.
pub(super) fn warn_before(list: &[String]) -> Result<Vec<Duration>, ConfigError> {
    let mut offsets = list
        .iter()
        .map(|text| parse_duration("timings.warn_before", text))
        .collect::<Result<Vec<_>, _>>()?;
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    offsets.dedup();
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn connection_details_default_to_the_listener() {
        let info = connect_info(None, None, None, addr("127.0.0.1:6432"), true).expect("ok");
        assert_eq!(
            (info.host.as_str(), info.port, info.sslmode.as_str()),
            ("127.0.0.1", 6432, "verify-full")
        );
        let wildcard = connect_info(None, None, None, addr("0.0.0.0:6432"), false).expect("ok");
        assert_eq!(
            (wildcard.host.as_str(), wildcard.sslmode.as_str()),
            ("localhost", "disable")
        );
        let named = connect_info(
            Some("db-proxy.example.com"),
            Some(5432),
            Some("/etc/lockbox/ca.pem"),
            addr("0.0.0.0:6432"),
            true,
        )
        .expect("ok");
        assert_eq!(named.host, "db-proxy.example.com");
        assert_eq!(named.port, 5432);
        assert_eq!(named.ca_cert.as_deref(), Some("/etc/lockbox/ca.pem"));
        for (host, port, ca, key) in [
            (Some(" "), None, None, "proxy.public_host"),
            (None, Some(0), None, "proxy.public_port"),
            (None, None, Some(""), "proxy.ca_cert"),
        ] {
            let err = connect_info(host, port, ca, addr("127.0.0.1:1"), true).expect_err(key);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn warnings_are_ordered_longest_first_and_must_be_durations() {
        let list = |l: &[&str]| warn_before(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            list(&["1m", "10m", "1m"]).expect("ok"),
            [Duration::from_secs(600), Duration::from_secs(60)]
        );
        assert_eq!(list(&[]).expect("none"), Vec::<Duration>::new());
        let err = list(&["soon"]).expect_err("not a duration");
        assert!(err.to_string().contains("timings.warn_before"), "{err}");
    }
}
