//! Configuration: parse the TOML file, validate it into runtime types, pass it down as
//! `Arc<Config>`. Every error names the key that is wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

mod access;
pub(crate) mod api_tls;
mod audit_clip;
mod audit_sink;
mod check;
mod databases;
mod file;
mod limits;
pub use limits::MOST_SESSIONS_PER_GRANT;
pub mod notify;
mod pg_url;
pub(crate) mod state;
mod users;
pub mod workflow;
pub use access::ConnectInfo;
pub use audit_sink::{PgSink, PgSinkFile};
pub(crate) use check::check;
pub(crate) use check::state_store_problem;
pub use databases::*;
pub use file::*;
pub use state::StatePostgres;
pub use users::*;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Validated runtime configuration.
// ---------------------------------------------------------------------------------------

/// Validated configuration, with paths resolved against the config file's folder.
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy_listen: SocketAddr,
    pub api_listen: SocketAddr,
    /// The API's certificate and key (`[api] tls_cert`/`tls_key`): HTTPS when set.
    pub api_tls: Option<TlsFiles>,
    /// `[api] web_session_ttl`: how long an admin center sign-in lasts.
    pub web_session_ttl: Duration,
    pub tls: Option<TlsFiles>,
    pub allow_plaintext_loopback: bool,
    pub max_message_size: usize,
    /// `[proxy] max_message_memory` (see `proxy::message_memory`).
    pub max_message_memory: usize,
    /// `[proxy] max_connections` and the failed-login limit.
    pub connection_limits: crate::proxy::ConnectionLimits,
    /// `[proxy] max_sessions_per_grant`: no grant has more sessions open at once.
    pub max_sessions_per_grant: Option<u32>,
    /// `[proxy] early_dial`.
    pub early_dial: crate::proxy::EarlyDialPolicy,
    /// `[proxy] spare_backends`: a grant that reconnects has a backend logged in ahead.
    pub spare_backends: bool,
    /// `[proxy] threads`: how many threads serve sessions.
    pub proxy_threads: usize,
    pub state_path: PathBuf,
    /// `[state] url`: the shared PostgreSQL state store (SQLite at `state_path` when absent).
    pub state_postgres: Option<StatePostgres>,
    /// `[node] id`.
    pub node_id: String,
    pub audit_path: PathBuf,
    pub audit_durability: Durability,
    pub audit_sync_interval: Duration,
    pub audit_rotate_size: u64,
    pub audit_rotate_interval: Option<Duration>,
    /// The PostgreSQL audit sink, when configured.
    pub audit_pg_sink: Option<PgSink>,
    /// `[audit] max_field_bytes`/`max_record_bytes`.
    pub audit_clip: crate::audit::ClipLimits,
    pub signing_key_path: PathBuf,
    pub issuer: String,
    pub audience: String,
    pub request_ttl: Duration,
    pub default_access: Duration,
    pub max_access: Duration,
    /// How long a dropped session's backend may linger before it is terminated.
    pub terminate_after: Duration,
    /// `[timings] catalog_refresh`: how often a database's own code is read again.
    pub catalog_refresh: Duration,
    /// `[timings] warn_before`, longest first.
    pub warn_before: Vec<Duration>,
    /// How engineers reach the proxy (`[proxy] public_host`, `public_port`, `ca_cert`).
    pub connect: ConnectInfo,
    pub databases: BTreeMap<String, Database>,
    pub users: Vec<User>,
    /// Which databases need customer approval, as the file says (the store may hold a
    /// newer choice made with `lockbox policy set`).
    pub protection: crate::policy::rules::Protection,
    pub rules: Vec<crate::policy::rules::Rule>,
    pub break_glass: Option<workflow::BreakGlass>,
    pub notifications: notify::Notifications,
    pub oidc: Option<Arc<crate::oidc::OidcVerifier>>,
    /// The file this configuration was read from (for reloads).
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Default upper bound on one client message: PostgreSQL itself accepts up to 1 GiB, but
/// a proxy that buffers a message to audit it should not let one client claim that much.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Default bound on what all sessions hold together for large client messages: sixteen
/// messages of the default largest size at once, whatever `max_connections` is.
pub const DEFAULT_MAX_MESSAGE_MEMORY: usize = 1024 * 1024 * 1024;

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        // Relative paths resolve against the config's folder as the filesystem names it, so
        // one deployment's paths (and the keys made of them) are the same however the config
        // was reached: a relative `--config`, a linked folder.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let canonical = std::fs::canonicalize(parent.unwrap_or(Path::new("."))).ok();
        let base = canonical.as_deref().or(parent).unwrap_or(Path::new("."));
        let mut config = Config::from_toml(&text, base).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses and validates TOML text; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        Config::validate(file, base)
    }

    fn validate(file: ConfigFile, base: &Path) -> Result<Config, ConfigError> {
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let proxy_listen = parse_addr("proxy.listen", &file.proxy.listen)?;
        let api_listen = parse_addr("api.listen", &file.api.listen)?;
        let api_tls = api_tls::validate(&file.api, api_listen, &resolve)?;
        let web_session_ttl = parse_duration("api.web_session_ttl", &file.api.web_session_ttl)?;
        let tls = match (&file.proxy.tls_cert, &file.proxy.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: resolve(cert),
                key: resolve(key),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "proxy.tls_key",
                    "tls_cert is set but tls_key is missing",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "proxy.tls_cert",
                    "tls_key is set but tls_cert is missing",
                ))
            }
        };
        if tls.is_none() && !file.proxy.allow_plaintext_loopback {
            return Err(invalid(
                "proxy.tls_cert",
                "no TLS certificate and allow_plaintext_loopback is off: no client could ever log in",
            ));
        }
        let max_message_size = file
            .proxy
            .max_message_size
            .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
        if !(1024..=1 << 30).contains(&max_message_size) {
            return Err(invalid(
                "proxy.max_message_size",
                "must be between 1024 and 1073741824 bytes",
            ));
        }
        let max_message_memory = file
            .proxy
            .max_message_memory
            .unwrap_or(DEFAULT_MAX_MESSAGE_MEMORY.max(max_message_size));
        if max_message_memory < max_message_size {
            return Err(invalid(
                "proxy.max_message_memory",
                "must be at least proxy.max_message_size, or no message of that size could ever be taken",
            ));
        }
        let connection_limits = limits::validate(&file.proxy)?;
        let audit_sync_interval = parse_duration("audit.sync_interval", &file.audit.sync_interval)?;
        let audit_rotate_size = parse_size("audit.rotate_size", &file.audit.rotate_size)?;
        if audit_rotate_size < 4096 {
            return Err(invalid("audit.rotate_size", "must be at least 4KiB"));
        }
        let audit_rotate_interval = file
            .audit
            .rotate_interval
            .as_deref()
            .map(|t| parse_duration("audit.rotate_interval", t))
            .transpose()?;
        let audit_clip = audit_clip::validate(
            file.audit.max_field_bytes.as_deref(),
            file.audit.max_record_bytes.as_deref(),
        )?;
        let audit_pg_sink = file
            .audit
            .postgres
            .map(|sink| audit_sink::validate(sink, &resolve))
            .transpose()?;
        let (state_path, state_postgres) = state::validate_file(&file.state, &resolve)?;
        let node_id = state::node_id(file.node.id.as_deref())?;
        let request_ttl = parse_duration("timings.request_ttl", &file.timings.request_ttl)?;
        let default_access =
            parse_duration("timings.default_access", &file.timings.default_access)?;
        let max_access = parse_duration("timings.max_access", &file.timings.max_access)?;
        if default_access > max_access {
            return Err(invalid(
                "timings.default_access",
                "is longer than timings.max_access",
            ));
        }
        let terminate_after =
            parse_duration("timings.terminate_after", &file.timings.terminate_after)?;
        if terminate_after > MAX_TERMINATE_AFTER {
            return Err(invalid(
                "timings.terminate_after",
                format!(
                    "must be at most {}",
                    humantime::format_duration(MAX_TERMINATE_AFTER)
                ),
            ));
        }
        let catalog_refresh =
            parse_duration("timings.catalog_refresh", &file.timings.catalog_refresh)?;
        if catalog_refresh < Duration::from_secs(1) {
            return Err(invalid("timings.catalog_refresh", "must be at least 1s"));
        }
        let warn_before = access::warn_before(&file.timings.warn_before)?;
        let connect = access::connect_info(
            file.proxy.public_host.as_deref(),
            file.proxy.public_port,
            file.proxy.ca_cert.as_deref(),
            proxy_listen,
            tls.is_some(),
        )?;
        if file.token.issuer.is_empty() {
            return Err(invalid("token.issuer", "must not be empty"));
        }
        if file.token.audience.is_empty() {
            return Err(invalid("token.audience", "must not be empty"));
        }
        let databases = validate_databases(file.databases, &resolve)?;
        let users = validate_users(file.users, file.oidc.is_some())?;
        let oidc = file
            .oidc
            .map(|o| {
                crate::oidc::OidcVerifier::load(
                    &resolve(&o.jwks_file),
                    &o.issuer,
                    &o.audience,
                    &o.username_claim,
                )
                .map(Arc::new)
                .map_err(|e| invalid("oidc.jwks_file", e.to_string()))
            })
            .transpose()?;
        let protection = workflow::protection(file.policy.protect.as_ref(), &databases)?;
        let rules = workflow::rules(file.rules, &databases)?;
        let break_glass = workflow::break_glass(file.policy.break_glass)?;
        workflow::check_roles(&users, &rules, break_glass.as_ref())?;
        let notifications =
            notify::validate(file.notifications, api_listen, api_tls.is_some(), &resolve)?;
        Ok(Config {
            proxy_listen,
            api_listen,
            api_tls,
            web_session_ttl,
            tls,
            allow_plaintext_loopback: file.proxy.allow_plaintext_loopback,
            max_message_size,
            max_message_memory,
            connection_limits,
            early_dial: limits::early_dial(&file.proxy)?,
            spare_backends: limits::spare_backends(&file.proxy)?,
            max_sessions_per_grant: limits::max_sessions_per_grant(&file.proxy)?,
            proxy_threads: limits::threads(&file.proxy)?,
            state_path,
            state_postgres,
            node_id,
            audit_path: resolve(&file.audit.path),
            audit_durability: file.audit.durability,
            audit_sync_interval,
            audit_rotate_size,
            audit_rotate_interval,
            audit_pg_sink,
            audit_clip,
            signing_key_path: resolve(&file.token.signing_key),
            issuer: file.token.issuer,
            audience: file.token.audience,
            request_ttl,
            default_access,
            max_access,
            terminate_after,
            catalog_refresh,
            warn_before,
            connect,
            databases,
            users,
            protection,
            rules,
            break_glass,
            notifications,
            oidc,
            source: None,
        })
    }

    /// The user whose API key hashes to `hash`.
    pub fn user_by_key_hash(&self, hash: &[u8; 32]) -> Option<&User> {
        use subtle::ConstantTimeEq;
        self.users
            .iter()
            .find(|u| u.api_key_sha256.is_some_and(|k| bool::from(k.ct_eq(hash))))
    }
}

fn parse_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    SocketAddr::from_str(text).map_err(|e| {
        invalid(
            key,
            format!("`{text}` is not an address like 127.0.0.1:6432 ({e})"),
        )
    })
}

/// `100MiB`, `1GB`, `4096`: a size in bytes, with an optional binary or decimal unit.
pub fn parse_size(key: &str, text: &str) -> Result<u64, ConfigError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => 0,
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            invalid(
                key,
                format!("`{text}` is not a size like 100MiB, 1GB or 65536"),
            )
        })
}

/// Parses a human duration (`30s`, `15m`, `8h`, `4d`) for config key `key`.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("`{text}` is not a duration like 30s, 15m, 8h ({e})"),
        )
    })?;
    if d.is_zero() {
        return Err(invalid(key, "must be longer than zero"));
    }
    Ok(d)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
