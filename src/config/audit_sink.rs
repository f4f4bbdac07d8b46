//! `[audit.postgres]`: the optional PostgreSQL audit sink. The local file stays the
//! durable, fail-closed record; the sink copies it into a table of an audit database the
//! customer owns, so several proxies can be read in one place.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{invalid, tls_client_config, ConfigError, UpstreamTls};

/// The section as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PgSinkFile {
    /// `postgres://user@host:port/dbname` of the audit database, without a password.
    pub url: String,
    /// File holding the password (first line).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Table the records go to (`name`, which is `public.name`, or `schema.name`); created
    /// when missing.
    #[serde(default = "default_table")]
    pub table: String,
    /// Names this proxy's trail in the table; unique per proxy. Default: the host name.
    pub proxy_id: Option<String>,
    /// Most records per INSERT.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// TLS towards the audit database, as for `[[databases]]`.
    #[serde(default)]
    pub tls: UpstreamTls,
    pub tls_ca: Option<PathBuf>,
}

fn default_table() -> String {
    "lockbox_audit".into()
}

fn default_batch_size() -> usize {
    500
}

/// The validated sink settings.
#[derive(Clone)]
pub struct PgSink {
    /// The audit database, password included (from the file or variable).
    pub connect: tokio_postgres::Config,
    /// The table, ready to put in SQL (each part double-quoted).
    pub table_sql: String,
    /// The table as written, for `to_regclass`.
    pub table: String,
    pub proxy_id: String,
    pub batch_size: usize,
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    /// Turns for reading the fleet's trail from this database (`audit/fleet.rs`), shared
    /// by every clone of these settings: one server's reads at once are bounded.
    pub readers: Arc<tokio::sync::Semaphore>,
}

// tokio_postgres::Config redacts its password in Debug; say nothing of TLS internals.
impl fmt::Debug for PgSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSink")
            .field("connect", &self.connect)
            .field("table", &self.table)
            .field("proxy_id", &self.proxy_id)
            .field("batch_size", &self.batch_size)
            .field("tls", &self.tls_client.is_some())
            .finish()
    }
}

const KEY: &str = "audit.postgres";

pub(super) fn validate(
    file: PgSinkFile,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<PgSink, ConfigError> {
    let key = |field: &str| format!("{KEY}.{field}");
    let mut connect = super::pg_url::connect_config(
        super::pg_url::PgUrlKeys {
            section: KEY,
            url: &file.url,
            password_env: file.password_env,
            password_file: file.password_file,
            application_name: "lockbox-audit-sink",
        },
        resolve,
    )?;
    // A bare name is public's table, never the search path's: there `"$user"` comes first,
    // and whoever may create schemas in the audit database could make one named after the
    // sink's role, holding a table of that name, and take the trail's rows (or feed the
    // fleet's reads its own).
    let table = if file.table.contains('.') {
        file.table
    } else {
        format!("public.{}", file.table)
    };
    let table_sql = quote_table(&table).ok_or_else(|| {
        invalid(
            key("table"),
            "must be `name` or `schema.name` of lowercase letters, digits and _",
        )
    })?;
    let proxy_id = match file.proxy_id {
        Some(id) if id.trim().is_empty() => return Err(invalid(key("proxy_id"), "is empty")),
        Some(id) => id,
        None => host_name(),
    };
    if !(1..=100_000).contains(&file.batch_size) {
        return Err(invalid(key("batch_size"), "must be between 1 and 100000"));
    }
    let tls_client = tls_client_config(file.tls, file.tls_ca.as_deref(), &key, resolve)?;
    if tls_client.is_some() {
        connect.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    Ok(PgSink {
        connect,
        table_sql,
        table,
        proxy_id,
        batch_size: file.batch_size,
        tls_client,
        readers: Arc::new(tokio::sync::Semaphore::new(
            crate::audit::fleet::MAX_READERS,
        )),
    })
}

/// `schema.name` → `"schema"."name"`, for plain lowercase identifiers only: what is written
/// is what PostgreSQL stores, with no case folding or quoting left to guess.
fn quote_table(table: &str) -> Option<String> {
    let parts: Vec<&str> = table.split('.').collect();
    let plain = |p: &&str| {
        !p.is_empty()
            && p.len() <= 63
            && !p.starts_with(|c: char| c.is_ascii_digit())
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if parts.len() > 2 || !parts.iter().all(plain) {
        return None;
    }
    Some(
        parts
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// This machine's name, the default proxy id (and node id).
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "lockbox".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<PgSink, ConfigError> {
        let text = format!("url = \"postgres://audit@db.example:5432/audit\"\n{extra}");
        let file: PgSinkFile = toml::from_str(&text).expect("toml");
        validate(file, &|p: &Path| p.to_owned())
    }

    #[test]
    fn defaults_and_errors_name_their_key() {
        let sink = parse("").expect("valid");
        assert_eq!(sink.table_sql, "\"public\".\"lockbox_audit\"");
        assert_eq!(sink.table, "public.lockbox_audit");
        assert_eq!(sink.batch_size, 500);
        assert!(!sink.proxy_id.is_empty());
        assert_eq!(
            parse("table = \"audit.records\"").expect("valid").table_sql,
            "\"audit\".\"records\""
        );
        for (extra, key) in [
            ("table = \"Robert'); DROP\"", "audit.postgres.table"),
            ("batch_size = 0", "audit.postgres.batch_size"),
            ("proxy_id = \" \"", "audit.postgres.proxy_id"),
            (
                "password_env = \"LOCKBOX_SURELY_UNSET_VARIABLE\"",
                "audit.postgres.password_env",
            ),
            ("tls = \"verify-full\"", "audit.postgres.tls_ca"),
        ] {
            let err = parse(extra).expect_err(extra).to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let file: PgSinkFile =
            toml::from_str("url = \"postgres://audit:secret@db/audit\"").expect("toml");
        let err = validate(file, &|p: &Path| p.to_owned()).expect_err("password in URL");
        assert!(err.to_string().contains("password_file"), "{err}");
    }
}
