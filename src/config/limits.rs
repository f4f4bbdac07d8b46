//! `[proxy] max_connections`, `failed_login_limit`, `failed_login_window`, `early_dial`,
//! `spare_backends` and `max_sessions_per_grant`.

use super::{invalid, parse_duration, ConfigError, ProxyFile};
use crate::proxy::{ConnectionLimits, EarlyDialPolicy};

/// A cap well above what one proxy serves, so a flood of connections (each a task, a
/// socket and maybe a TLS handshake) cannot exhaust the process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Failed logins a source may have per window before it is refused without a look.
pub const DEFAULT_FAILED_LOGIN_LIMIT: u32 = 20;
pub const DEFAULT_FAILED_LOGIN_WINDOW: &str = "1m";

pub(super) fn validate(proxy: &ProxyFile) -> Result<ConnectionLimits, ConfigError> {
    let max_connections = proxy.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(invalid("proxy.max_connections", "must be at least 1"));
    }
    let failed_login_limit = proxy
        .failed_login_limit
        .unwrap_or(DEFAULT_FAILED_LOGIN_LIMIT);
    if failed_login_limit == 0 {
        return Err(invalid("proxy.failed_login_limit", "must be at least 1"));
    }
    let window = proxy
        .failed_login_window
        .as_deref()
        .unwrap_or(DEFAULT_FAILED_LOGIN_WINDOW);
    let failed_login_window = parse_duration("proxy.failed_login_window", window)?;
    Ok(ConnectionLimits {
        max_connections,
        failed_login_limit,
        failed_login_window,
    })
}

pub(super) fn early_dial(proxy: &ProxyFile) -> Result<EarlyDialPolicy, ConfigError> {
    match proxy.early_dial.as_deref() {
        None | Some("trusted") => Ok(EarlyDialPolicy::Trusted),
        Some("verified") => Ok(EarlyDialPolicy::Verified),
        Some("off") => Ok(EarlyDialPolicy::Off),
        Some(other) => Err(invalid(
            "proxy.early_dial",
            format!("\"{other}\" is not one of \"trusted\", \"verified\", \"off\""),
        )),
    }
}

/// `[proxy] spare_backends`: whether grants that reconnect get a backend logged in ahead.
pub(super) fn spare_backends(proxy: &ProxyFile) -> Result<bool, ConfigError> {
    match proxy.spare_backends.as_deref() {
        None | Some("reconnects") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(invalid(
            "proxy.spare_backends",
            format!("\"{other}\" is not one of \"reconnects\", \"off\""),
        )),
    }
}

/// The most sessions a grant's limit may name: far past what one PostgreSQL server takes
/// (at most 262,143 backends), and what its role's `CONNECTION LIMIT` (an int4, one more
/// than the limit) always holds.
pub const MOST_SESSIONS_PER_GRANT: u32 = 100_000;

/// `[proxy] max_sessions_per_grant`: none by default (a pgbench of 64 clients, or a pool,
/// may rightly hold many sessions of one grant); when set, at least one.
pub(super) fn max_sessions_per_grant(proxy: &ProxyFile) -> Result<Option<u32>, ConfigError> {
    match proxy.max_sessions_per_grant {
        Some(0) => Err(invalid(
            "proxy.max_sessions_per_grant",
            "must be at least 1 (leave it out for no limit)",
        )),
        Some(n) if n > MOST_SESSIONS_PER_GRANT => Err(invalid(
            "proxy.max_sessions_per_grant",
            format!("{n} is more than {MOST_SESSIONS_PER_GRANT}"),
        )),
        most => Ok(most),
    }
}

/// The most `[proxy] threads`: far past any CPU count a proxy is given, low enough that a
/// typo does not start thousands of threads.
const MAX_THREADS: usize = 1024;

/// `[proxy] threads`: how many threads serve sessions; the CPUs lockbox may use by default.
pub(super) fn threads(proxy: &ProxyFile) -> Result<usize, ConfigError> {
    match proxy.threads {
        None => Ok(std::thread::available_parallelism().map_or(1, std::num::NonZero::get)),
        Some(0) => Err(invalid("proxy.threads", "must be at least 1")),
        Some(n) if n > MAX_THREADS => Err(invalid(
            "proxy.threads",
            format!("{n} is more than {MAX_THREADS}"),
        )),
        Some(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(extra: &str) -> Result<ConnectionLimits, String> {
        let text = format!("listen = \"127.0.0.1:6432\"\nallow_plaintext_loopback = true\n{extra}");
        let file: ProxyFile = toml::from_str(&text).map_err(|e| e.to_string())?;
        validate(&file).map_err(|e| e.to_string())
    }

    fn early(extra: &str) -> Result<EarlyDialPolicy, String> {
        let text = format!("listen = \"127.0.0.1:6432\"\n{extra}");
        let file: ProxyFile = toml::from_str(&text).map_err(|e| e.to_string())?;
        early_dial(&file).map_err(|e| e.to_string())
    }

    #[test]
    fn early_dial_defaults_to_trusted_and_names_its_key_when_wrong() {
        assert_eq!(early(""), Ok(EarlyDialPolicy::Trusted));
        assert_eq!(
            early("early_dial = \"trusted\""),
            Ok(EarlyDialPolicy::Trusted)
        );
        assert_eq!(
            early("early_dial = \"verified\""),
            Ok(EarlyDialPolicy::Verified)
        );
        assert_eq!(early("early_dial = \"off\""), Ok(EarlyDialPolicy::Off));
        let wrong = early("early_dial = \"always\"").expect_err("not a policy");
        assert!(
            wrong.contains("proxy.early_dial") && wrong.contains("always"),
            "{wrong}"
        );
    }

    #[test]
    fn sessions_per_grant_are_unlimited_unless_set_and_never_zero() {
        let most = |extra: &str| -> Result<Option<u32>, String> {
            let text = format!("listen = \"127.0.0.1:6432\"\n{extra}");
            let file: ProxyFile = toml::from_str(&text).map_err(|e| e.to_string())?;
            max_sessions_per_grant(&file).map_err(|e| e.to_string())
        };
        assert_eq!(most(""), Ok(None));
        assert_eq!(most("max_sessions_per_grant = 8"), Ok(Some(8)));
        let zero = most("max_sessions_per_grant = 0").expect_err("zero sessions");
        assert!(zero.contains("proxy.max_sessions_per_grant"), "{zero}");
        assert!(most("max_sessions_per_grant = -1").is_err());
        assert_eq!(most("max_sessions_per_grant = 100000"), Ok(Some(100_000)));
        let huge = most("max_sessions_per_grant = 2147483648").expect_err("past the most");
        assert!(huge.contains("proxy.max_sessions_per_grant"), "{huge}");
    }

    #[test]
    fn spare_backends_default_to_reconnects_and_name_their_key_when_wrong() {
        let spares = |extra: &str| -> Result<bool, String> {
            let text = format!("listen = \"127.0.0.1:6432\"\n{extra}");
            let file: ProxyFile = toml::from_str(&text).map_err(|e| e.to_string())?;
            spare_backends(&file).map_err(|e| e.to_string())
        };
        assert_eq!(spares(""), Ok(true));
        assert_eq!(spares("spare_backends = \"reconnects\""), Ok(true));
        assert_eq!(spares("spare_backends = \"off\""), Ok(false));
        let wrong = spares("spare_backends = \"always\"").expect_err("not a policy");
        assert!(
            wrong.contains("proxy.spare_backends") && wrong.contains("always"),
            "{wrong}"
        );
    }

    #[test]
    fn threads_default_to_the_cpus_and_name_their_key_when_wrong() {
        let threads_of = |extra: &str| -> Result<usize, String> {
            let text = format!("listen = \"127.0.0.1:6432\"\n{extra}");
            let file: ProxyFile = toml::from_str(&text).map_err(|e| e.to_string())?;
            threads(&file).map_err(|e| e.to_string())
        };
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(threads_of(""), Ok(cpus));
        assert_eq!(threads_of("threads = 3"), Ok(3));
        for wrong in ["threads = 0", "threads = 100000"] {
            let e = threads_of(wrong).expect_err(wrong);
            assert!(e.contains("proxy.threads"), "{e}");
        }
        assert!(threads_of("threads = -1").is_err());
    }

    #[test]
    fn limits_default_and_validate() {
        let d = check("").expect("defaults");
        assert_eq!(d.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(d.failed_login_limit, DEFAULT_FAILED_LOGIN_LIMIT);
        assert_eq!(d.failed_login_window.as_secs(), 60);
        let set =
            check("max_connections = 5\nfailed_login_limit = 3\nfailed_login_window = \"10s\"")
                .expect("set");
        assert_eq!((set.max_connections, set.failed_login_limit), (5, 3));
        for (extra, key) in [
            ("max_connections = 0", "proxy.max_connections"),
            ("failed_login_limit = 0", "proxy.failed_login_limit"),
            (
                "failed_login_window = \"soon\"",
                "proxy.failed_login_window",
            ),
        ] {
            let e = check(extra).expect_err(extra);
            assert!(e.contains(key), "{e}");
        }
    }
}
