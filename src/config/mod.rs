//! Configuration: parse the TOML file, validate it into runtime types, pass it down as
//! `Arc<Config>`. Every error names the key that is wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod access;
pub(crate) mod api_tls;
mod audit_clip;
mod audit_sink;
mod check;
mod databases;
mod limits;
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
// The file as written.
// ---------------------------------------------------------------------------------------

/// The configuration file, as the operator writes it.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub proxy: ProxyFile,
    #[serde(default)]
    pub api: ApiFile,
    #[serde(default)]
    pub state: StateFile,
    #[serde(default)]
    pub audit: AuditFile,
    pub token: TokenFile,
    #[serde(default)]
    pub timings: TimingsFile,
    #[serde(default)]
    pub databases: Vec<DatabaseFile>,
    #[serde(default)]
    pub users: Vec<UserFile>,
    /// Which databases need customer approval, and break-glass.
    #[serde(default)]
    pub policy: workflow::PolicyFile,
    /// JIT rules, evaluated on every new request (the safe defaults when absent).
    #[serde(default)]
    pub rules: Option<Vec<workflow::RuleFile>>,
    #[serde(default)]
    pub notifications: notify::NotificationsFile,
    /// Accept identity tokens of this OIDC provider besides API keys.
    pub oidc: Option<OidcFile>,
    /// This node's name among several sharing one state store.
    #[serde(default)]
    pub node: NodeFile,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// Names this node on audit records, sessions and `lockbox status`; unique per node.
    /// Default: the host name.
    pub id: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    /// The provider's `iss`.
    pub issuer: String,
    /// The `aud` tokens must carry (lockbox's client id at the provider).
    pub audience: String,
    /// The provider's public keys (a JWKS document saved to a file).
    pub jwks_file: PathBuf,
    /// The claim holding the user name configured in `[[users]]`.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
}

/// `sub` is the claim OIDC promises is stable and unique per issuer; `preferred_username`
/// is not (many providers let people change it), so it is only used when configured.
fn default_username_claim() -> String {
    "sub".into()
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// Address of the PostgreSQL-protocol listener, e.g. `0.0.0.0:6432`.
    pub listen: String,
    /// PEM certificate chain presented to clients. Without it the proxy refuses
    /// TLS and therefore every token that does not come over loopback plaintext.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Accept tokens over plaintext from loopback clients (demo and tests only).
    #[serde(default)]
    pub allow_plaintext_loopback: bool,
    /// Largest client message accepted, in bytes.
    pub max_message_size: Option<usize>,
    /// Most client connections held at once (default 1000); past it a new connection
    /// gets FATAL 53300 before any upstream work.
    pub max_connections: Option<usize>,
    /// Failed logins one source address may have per `failed_login_window` (default 20);
    /// past it the source is refused (FATAL 08004) and its failures are counted in one
    /// `logins_throttled` record per window instead of one record each.
    pub failed_login_limit: Option<u32>,
    /// The failed-login window, e.g. `"1m"` (the default).
    pub failed_login_window: Option<String>,
    /// When a login's upstream is dialed: `"trusted"` (the default: at the startup packet
    /// for a source admitted in the last 10 minutes, else once the token verifies),
    /// `"verified"` (once the token verifies) or `"off"` (once the login is admitted).
    pub early_dial: Option<String>,
    /// Host name engineers connect to (given out with tokens); the listen address by default.
    pub public_host: Option<String>,
    /// Port engineers connect to (given out with tokens); the listen port by default.
    pub public_port: Option<u16>,
    /// Path of the CA certificate engineers' clients verify the proxy with, as it is on
    /// their machines (given out with tokens; `LOCKBOX_CA_CERT` overrides it in the CLI).
    pub ca_cert: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFile {
    /// Address of the control-plane HTTP API.
    pub listen: String,
    /// PEM certificate chain the API serves HTTPS with. Required unless `listen` is a
    /// loopback address: the API hands out database credentials.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How long a sign-in to the admin center in the browser lasts (`8h`).
    #[serde(default = "default_web_session_ttl")]
    pub web_session_ttl: String,
}

fn default_web_session_ttl() -> String {
    "8h".into()
}

impl Default for ApiFile {
    fn default() -> Self {
        ApiFile {
            listen: "127.0.0.1:8432".into(),
            tls_cert: None,
            tls_key: None,
            web_session_ttl: default_web_session_ttl(),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// SQLite file that holds requests and grants (the default, `lockbox-data/state.db`,
    /// when neither it nor `url` is set).
    pub sqlite_path: Option<PathBuf>,
    /// `postgres://user@host:port/db` of a PostgreSQL state store shared by several
    /// nodes, without a password; instead of `sqlite_path`.
    pub url: Option<String>,
    /// File holding the state database's password (first line).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the state database's password.
    pub password_env: Option<String>,
    /// TLS towards the state database, as for `[[databases]]`.
    pub tls: Option<UpstreamTls>,
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// Append-only JSON Lines file of every lockbox action and SQL statement.
    pub path: PathBuf,
    /// `fsync`: a statement is forwarded once its record is fsynced (group commit).
    /// `write`: once the record is handed to the kernel (survives a crash of the proxy, not
    /// of the machine), with an fsync every `sync_interval`.
    #[serde(default)]
    pub durability: Durability,
    /// How often `write` mode fsyncs.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: String,
    /// Start a new file once the active one reaches this size (`100MiB`, `1GB`, bytes).
    #[serde(default = "default_rotate_size")]
    pub rotate_size: String,
    /// Start a new file once the active one is this old (`1d`, `6h`); unset: by size only.
    #[serde(default)]
    pub rotate_interval: Option<String>,
    /// `[audit.postgres]`: also copy the trail into a PostgreSQL table.
    #[serde(default)]
    pub postgres: Option<PgSinkFile>,
    /// Most bytes of one value (statement text, parameter, error message) a record keeps;
    /// beyond it, a prefix, the length and a SHA-256 (default `64KiB`).
    #[serde(default)]
    pub max_field_bytes: Option<String>,
    /// Most bytes of values one record keeps in all (default `1MiB`).
    #[serde(default)]
    pub max_record_bytes: Option<String>,
}

fn default_rotate_size() -> String {
    "100MiB".into()
}

fn default_sync_interval() -> String {
    "1s".into()
}

/// When an audit record counts as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    #[default]
    Fsync,
    Write,
}

impl Default for AuditFile {
    fn default() -> Self {
        AuditFile {
            path: "lockbox-data/audit.jsonl".into(),
            durability: Durability::Fsync,
            sync_interval: default_sync_interval(),
            rotate_size: default_rotate_size(),
            rotate_interval: None,
            postgres: None,
            max_field_bytes: None,
            max_record_bytes: None,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// PKCS#8 PEM Ed25519 private key that signs lockbox tokens (`lockbox keygen signing-key`).
    pub signing_key: PathBuf,
    /// `iss` claim of issued tokens.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// `aud` claim of issued tokens.
    #[serde(default = "default_audience")]
    pub audience: String,
}

fn default_issuer() -> String {
    "lockbox".into()
}
fn default_audience() -> String {
    "lockbox-proxy".into()
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimingsFile {
    /// How long a request may wait for a decision before it expires.
    #[serde(default = "default_request_ttl")]
    pub request_ttl: String,
    /// Access window granted when a request names no duration.
    #[serde(default = "default_access")]
    pub default_access: String,
    /// Longest access window anyone may ask for.
    #[serde(default = "default_max_access")]
    pub max_access: String,
    /// How long the upstream backend of a session the proxy ended may linger before the
    /// proxy terminates it (`pg_terminate_backend`).
    #[serde(default = "default_terminate_after")]
    pub terminate_after: String,
    /// Before a session's end, at each of these offsets, it gets a NOTICE (offsets longer
    /// than the window are skipped).
    #[serde(default = "access::default_warn_before")]
    pub warn_before: Vec<String>,
}

fn default_request_ttl() -> String {
    "12h".into()
}
fn default_access() -> String {
    "8h".into()
}
fn default_max_access() -> String {
    "24h".into()
}
/// A backend that heeds the cancel or the closed socket is gone within milliseconds; one
/// still there after this ignores both.
fn default_terminate_after() -> String {
    "2s".into()
}

/// Longest `timings.terminate_after`: the backend keeps its access until then, and shutdown
/// waits for it.
pub const MAX_TERMINATE_AFTER: Duration = Duration::from_secs(5);

impl Default for TimingsFile {
    fn default() -> Self {
        TimingsFile {
            request_ttl: default_request_ttl(),
            default_access: default_access(),
            max_access: default_max_access(),
            terminate_after: default_terminate_after(),
            warn_before: access::default_warn_before(),
        }
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
    /// `[proxy] max_connections` and the failed-login limit.
    pub connection_limits: crate::proxy::ConnectionLimits,
    /// `[proxy] early_dial`.
    pub early_dial: crate::proxy::EarlyDialPolicy,
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

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
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
            connection_limits,
            early_dial: limits::early_dial(&file.proxy)?,
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
