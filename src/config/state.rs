//! `[state]`: where requests, settings, export schedules and the notification outbox live.
//! SQLite (`sqlite_path`, the embedded default) for one node; PostgreSQL (`url`) for
//! several nodes sharing one state.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{invalid, tls_client_config, ConfigError, UpstreamTls};

/// Where the SQLite file goes when `[state]` names nothing.
pub(crate) const DEFAULT_SQLITE_PATH: &str = "lockbox-data/state.db";

/// The PostgreSQL state store, validated.
#[derive(Clone)]
pub struct StatePostgres {
    /// The state database, password included (from the file or variable).
    pub connect: tokio_postgres::Config,
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
}

// tokio_postgres::Config redacts its password in Debug; say nothing of TLS internals.
impl fmt::Debug for StatePostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatePostgres")
            .field("connect", &self.connect)
            .field("tls", &self.tls_client.is_some())
            .finish()
    }
}

// Two configurations name the same store when they connect the same way; the TLS
// configuration itself cannot be compared, only whether there is one.
impl PartialEq for StatePostgres {
    fn eq(&self, other: &Self) -> bool {
        format!("{:?}", self.connect) == format!("{:?}", other.connect)
            && self.connect.get_password() == other.connect.get_password()
            && self.tls_client.is_some() == other.tls_client.is_some()
    }
}

/// The parts of `[state]` that describe a PostgreSQL store.
pub(crate) struct PostgresKeys {
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub tls: Option<UpstreamTls>,
    pub tls_ca: Option<PathBuf>,
}

const KEY: &str = "state";

/// `[state]` as written → the SQLite path and, with `url`, the PostgreSQL store.
pub(crate) fn validate_file(
    file: &super::StateFile,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(PathBuf, Option<StatePostgres>), ConfigError> {
    let postgres = match &file.url {
        Some(url) => Some(PostgresKeys {
            url: url.clone(),
            password_file: file.password_file.clone(),
            password_env: file.password_env.clone(),
            tls: file.tls,
            tls_ca: file.tls_ca.clone(),
        }),
        None if file.password_file.is_some() || file.password_env.is_some() => {
            return Err(invalid(
                "state.url",
                "a password is set for a PostgreSQL store, but url is missing",
            ))
        }
        None => None,
    };
    validate(file.sqlite_path.as_deref(), postgres, resolve)
}

/// `[node] id`, or the host name.
pub(crate) fn node_id(id: Option<&str>) -> Result<String, ConfigError> {
    match id {
        Some(id) if id.trim().is_empty() || id.len() > 63 || id.chars().any(char::is_control) => {
            Err(invalid(
                "node.id",
                "must be 1 to 63 characters, none of them control characters",
            ))
        }
        Some(id) => Ok(id.to_owned()),
        None => Ok(super::audit_sink::host_name()),
    }
}

/// The SQLite path (when no `url`), or the PostgreSQL store; both given is an error.
pub(crate) fn validate(
    sqlite_path: Option<&Path>,
    postgres: Option<PostgresKeys>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(PathBuf, Option<StatePostgres>), ConfigError> {
    match (sqlite_path, postgres) {
        (Some(_), Some(_)) => Err(invalid(
            "state.url",
            "set either url (PostgreSQL) or sqlite_path (SQLite), not both",
        )),
        (path, None) => Ok((
            resolve(path.unwrap_or(Path::new(DEFAULT_SQLITE_PATH))),
            None,
        )),
        (None, Some(keys)) => Ok((
            resolve(Path::new(DEFAULT_SQLITE_PATH)),
            Some(postgres_store(keys, resolve)?),
        )),
    }
}

fn postgres_store(
    keys: PostgresKeys,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<StatePostgres, ConfigError> {
    let key = |field: &str| format!("{KEY}.{field}");
    let mut connect = super::pg_url::connect_config(
        super::pg_url::PgUrlKeys {
            section: KEY,
            url: &keys.url,
            password_env: keys.password_env,
            password_file: keys.password_file,
            application_name: "lockbox-state",
        },
        resolve,
    )?;
    // `sslmode=require` in the URL without a `tls` key means encrypted, unverified, as
    // libpq does; `tls` says more (verify-ca, verify-full with `tls_ca`).
    let url_requires = connect.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    let mode = match keys.tls {
        Some(mode) => mode,
        None if url_requires => UpstreamTls::Require,
        None => UpstreamTls::Disable,
    };
    let tls_client = tls_client_config(mode, keys.tls_ca.as_deref(), &key, resolve)?;
    connect.ssl_mode(match tls_client {
        Some(_) => tokio_postgres::config::SslMode::Require,
        None => tokio_postgres::config::SslMode::Disable,
    });
    Ok(StatePostgres {
        connect,
        tls_client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(url: &str) -> PostgresKeys {
        PostgresKeys {
            url: url.into(),
            password_file: None,
            password_env: None,
            tls: None,
            tls_ca: None,
        }
    }

    fn check(
        sqlite: Option<&str>,
        pg: Option<PostgresKeys>,
    ) -> Result<(PathBuf, Option<StatePostgres>), ConfigError> {
        validate(sqlite.map(Path::new), pg, &|p: &Path| {
            Path::new("/base").join(p)
        })
    }

    #[test]
    fn sqlite_is_the_default_and_url_selects_postgres() {
        let (path, pg) = check(None, None).expect("default");
        assert_eq!(path, Path::new("/base").join(DEFAULT_SQLITE_PATH));
        assert!(pg.is_none());
        let (_, pg) = check(None, Some(keys("postgres://lockbox@db:5432/state"))).expect("pg");
        let pg = pg.expect("a PostgreSQL store");
        assert_eq!(pg.connect.get_dbname(), Some("state"));
        assert!(pg.tls_client.is_none());
    }

    #[test]
    fn mistakes_name_their_key() {
        for (sqlite, pg, key) in [
            (
                Some("state.db"),
                Some(keys("postgres://lockbox@db/state")),
                "state.url",
            ),
            (
                None,
                Some(keys("postgres://lockbox:pw@db/state")),
                "state.url",
            ),
            (None, Some(keys("postgres://db/state")), "state.url"),
            (None, Some(keys("mysql:/nope")), "state.url"),
            (
                None,
                Some(PostgresKeys {
                    password_env: Some("LOCKBOX_SURELY_UNSET_STATE_VARIABLE".into()),
                    ..keys("postgres://lockbox@db/state")
                }),
                "state.password_env",
            ),
            (
                None,
                Some(PostgresKeys {
                    tls: Some(UpstreamTls::VerifyFull),
                    ..keys("postgres://lockbox@db/state")
                }),
                "state.tls_ca",
            ),
        ] {
            let err = check(sqlite, pg).expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn node_id_defaults_to_the_host_name_and_refuses_empty() {
        assert!(!node_id(None).expect("host name").is_empty());
        assert_eq!(node_id(Some("node-2")).expect("valid"), "node-2");
        let err = node_id(Some(" ")).expect_err("empty").to_string();
        assert!(err.contains("node.id"), "{err}");
    }

    #[test]
    fn sslmode_require_in_the_url_turns_tls_on() {
        let (_, pg) = check(
            None,
            Some(keys("postgres://lockbox@db/state?sslmode=require")),
        )
        .expect("valid");
        assert!(pg.expect("pg").tls_client.is_some());
    }
}
