//! The configuration file as the operator writes it: what TOML deserialises into, with
//! the defaults of keys left out. `Config::from_file` validates it into runtime types.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{access, notify, workflow, DatabaseFile, PgSinkFile, UpstreamTls, UserFile};

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
    /// Most bytes all sessions together hold for client messages larger than a session's
    /// read buffer keeps anyway (256 KiB); past it such a message ends its session (53200).
    pub max_message_memory: Option<usize>,
    /// Most client connections held at once (default 1000); past it a new connection
    /// gets FATAL 53300 before any upstream work.
    pub max_connections: Option<usize>,
    /// Most sessions one grant may have open at once through this proxy (none by default);
    /// a request may ask for fewer (`max_sessions`). The grant's database role gets the
    /// same `CONNECTION LIMIT`, which holds across proxies.
    pub max_sessions_per_grant: Option<u32>,
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
    /// Whether a grant that reconnects has its next session's backend logged in ahead:
    /// `"reconnects"` (the default) or `"off"`.
    pub spare_backends: Option<String>,
    /// How many threads serve sessions (each a runtime of its own, a session on one of them
    /// throughout): the number of CPUs lockbox may use by default.
    pub threads: Option<usize>,
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
    /// How often a database's own code (functions, and the links between its relations)
    /// is read again while sessions that need it are open; a login finds a read older than
    /// this stale.
    #[serde(default = "default_catalog_refresh")]
    pub catalog_refresh: String,
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

fn default_catalog_refresh() -> String {
    "60s".into()
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
            catalog_refresh: default_catalog_refresh(),
        }
    }
}
