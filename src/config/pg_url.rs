//! A PostgreSQL connection lockbox itself opens (the state store, the audit sink): a
//! `postgres://` URL that names a user and a database and holds no password, the password
//! from an environment variable or a file instead.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{invalid, resolve_password, ConfigError};

/// Where a connection's settings come from, under the config section `section`.
pub(super) struct PgUrlKeys<'a> {
    pub section: &'a str,
    pub url: &'a str,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// What the server's `pg_stat_activity` shows for these connections.
    pub application_name: &'a str,
}

pub(super) fn connect_config(
    keys: PgUrlKeys<'_>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<tokio_postgres::Config, ConfigError> {
    let key = |field: &str| format!("{}.{field}", keys.section);
    let mut connect = tokio_postgres::Config::from_str(keys.url)
        .map_err(|e| invalid(key("url"), format!("not a postgres:// URL: {e}")))?;
    if connect.get_password().is_some() {
        return Err(invalid(
            key("url"),
            "holds a password: put it in password_file or password_env instead",
        ));
    }
    if connect.get_user().is_none() || connect.get_dbname().is_none() {
        return Err(invalid(key("url"), "must name a user and a database"));
    }
    let password = match (keys.password_env, keys.password_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("password_env"),
                "set either password_env or password_file, not both",
            ))
        }
        (Some(var), None) => Some(std::env::var(&var).map_err(|_| {
            invalid(
                key("password_env"),
                format!("environment variable {var} is not set"),
            )
        })?),
        (None, file) => resolve_password(None, file, &format!("{}.", keys.section), resolve)?,
    };
    if let Some(password) = password {
        connect.password(password);
    }
    connect.application_name(keys.application_name);
    Ok(connect)
}
