//! `[[databases]]`: what engineers may ask for, and how the proxy logs in upstream.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};
use crate::policy::AccessLevel;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseFile {
    /// The name engineers put in `dbname`.
    pub name: String,
    /// Whether access needs a customer approval.
    #[serde(default = "yes")]
    pub protected: bool,
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Database name on the upstream server (defaults to `name`).
    pub dbname: Option<String>,
    /// Service role the proxy logs in as; engineers never see its credentials.
    pub user: String,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// `disable`, `require` (encrypt, no verification), `verify-ca` (chain to `tls_ca`),
    /// `verify-full` (chain and host name).
    #[serde(default)]
    pub tls: UpstreamTls,
    /// PEM file of the CA(s) that sign the upstream server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// Upstream roles per access level (`read`, `write`, `admin`), each with just those
    /// privileges. `read` is required: a read grant must never log in as a role that can
    /// write. `write` and `admin` without an entry use `user`/`password` above.
    #[serde(default)]
    pub access: BTreeMap<AccessLevel, CredentialsFile>,
    /// `[databases.provisioning]`: per-grant upstream roles.
    #[serde(default)]
    pub provisioning: Provisioning,
    /// Statement rules for this database, binding every access level.
    #[serde(default)]
    pub guardrails: Guardrails,
    /// What the audit trail keeps out of its records for this database.
    #[serde(default)]
    pub redaction: crate::audit::redact::Redaction,
    /// Customer approvers of this database (user names or groups); any approver when empty.
    #[serde(default)]
    pub approvers: Vec<String>,
}

/// Per-database statement rules (`[databases.guardrails]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Guardrails {
    /// Refuse DROP of anything.
    #[serde(default)]
    pub deny_drop: bool,
    /// Refuse TRUNCATE.
    #[serde(default)]
    pub deny_truncate: bool,
    /// Refuse DELETE without a WHERE clause.
    #[serde(default)]
    pub deny_delete_without_where: bool,
    /// Refuse UPDATE without a WHERE clause.
    #[serde(default)]
    pub deny_update_without_where: bool,
    /// Tables no statement may name: `table` (any schema), `schema.table`, `schema.*`.
    #[serde(default)]
    pub off_limits: Vec<String>,
}

/// `[databases.provisioning]`: which role a grant's sessions log in as upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provisioning {
    /// One login role per grant, `lockbox_<request id>`, member of the level's role and
    /// valid until the access window ends; dropped when the grant ends. Unset: on when the
    /// service role may create roles (checked at start or first use), else off.
    #[serde(default)]
    pub per_grant_roles: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    pub user: String,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}
fn default_pg_port() -> u16 {
    5432
}

/// TLS towards the upstream database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    #[default]
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A database engineers may ask for, with the upstream coordinates the proxy uses.
#[derive(Clone)]
pub struct Database {
    pub name: String,
    pub protected: bool,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Option<String>,
    pub tls: UpstreamTls,
    /// The TLS client configuration for `tls` (absent when `disable`).
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    /// Credentials per access level, where they differ from `user`/`password`.
    pub access: BTreeMap<AccessLevel, Credentials>,
    pub provisioning: Provisioning,
    pub guardrails: Guardrails,
    pub redaction: crate::audit::redact::Redaction,
    pub approvers: Vec<String>,
}

/// An upstream role and its password.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Database {
    /// The upstream login for a session with `access`.
    pub fn credentials(&self, access: AccessLevel) -> Credentials {
        self.access
            .get(&access)
            .cloned()
            .unwrap_or_else(|| Credentials {
                user: self.user.clone(),
                password: self.password.clone(),
            })
    }
}

// The password must never reach a log line through `{:?}`.
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .field("protected", &self.protected)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("access", &self.access)
            .field("provisioning", &self.provisioning)
            .finish()
    }
}

pub(super) fn validate_databases(
    list: Vec<DatabaseFile>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<BTreeMap<String, Database>, ConfigError> {
    let mut out = BTreeMap::new();
    for (i, db) in list.into_iter().enumerate() {
        let key = |field: &str| format!("databases[{i}].{field}");
        if db.name.is_empty() {
            return Err(invalid(key("name"), "must not be empty"));
        }
        if db.host.is_empty() {
            return Err(invalid(key("host"), "must not be empty"));
        }
        if db.user.is_empty() {
            return Err(invalid(key("user"), "must not be empty"));
        }
        let password = resolve_password(db.password, db.password_file, &key(""), resolve)?;
        let tls_client = tls_client_config(db.tls, db.tls_ca.as_deref(), &key, resolve)?;
        let mut access = BTreeMap::new();
        for (level, creds) in db.access {
            let prefix = key(&format!("access.{}.", level.as_str()));
            if creds.user.is_empty() {
                return Err(invalid(format!("{prefix}user"), "must not be empty"));
            }
            let password = resolve_password(creds.password, creds.password_file, &prefix, resolve)?;
            access.insert(
                level,
                Credentials {
                    user: creds.user,
                    password,
                },
            );
        }
        let database = Database {
            dbname: db.dbname.unwrap_or_else(|| db.name.clone()),
            name: db.name,
            protected: db.protected,
            host: db.host,
            port: db.port,
            user: db.user,
            password,
            tls: db.tls,
            tls_client,
            access,
            provisioning: db.provisioning,
            guardrails: db.guardrails,
            redaction: db.redaction,
            approvers: db.approvers,
        };
        check_read_role(&database)?;
        if out.contains_key(&database.name) {
            return Err(invalid(
                key("name"),
                format!("database `{}` is listed twice", database.name),
            ));
        }
        out.insert(database.name.clone(), database);
    }
    Ok(out)
}

/// A read grant must never log in as a role that can write. Per-grant roles are members of
/// the read role, and without them read sessions log in as it, so every database needs
/// one, and it must not be the service role or another level's role.
fn check_read_role(db: &Database) -> Result<(), ConfigError> {
    let key = format!("databases.{}.access.read", db.name);
    let Some(read) = db.access.get(&AccessLevel::Read) else {
        return Err(invalid(
            key,
            format!(
                "missing: read grants would log in as the service role `{}`, which can write; \
                 configure a role that may only read (per-grant roles become its members)",
                db.user
            ),
        ));
    };
    let writers = std::iter::once(("the service role".to_owned(), &db.user)).chain(
        db.access
            .iter()
            .filter(|(level, _)| **level != AccessLevel::Read)
            .map(|(level, c)| (format!("the {} role", level.as_str()), &c.user)),
    );
    for (which, user) in writers {
        if *user == read.user {
            return Err(invalid(
                format!("{key}.user"),
                format!("`{user}` is {which} too, which can write"),
            ));
        }
    }
    Ok(())
}

/// The TLS client configuration for a connection to a PostgreSQL server in `mode`
/// (`None` when TLS is off); `key(field)` names config keys in errors.
pub(crate) fn tls_client_config(
    mode: UpstreamTls,
    ca: Option<&Path>,
    key: &dyn Fn(&str) -> String,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<Arc<rustls::ClientConfig>>, ConfigError> {
    Ok(match (mode, ca) {
        (UpstreamTls::Disable, _) => None,
        (UpstreamTls::Require, _) => Some(
            crate::tls::client_config_encrypt_only()
                .map_err(|e| invalid(key("tls"), e.to_string()))?,
        ),
        (UpstreamTls::VerifyCa | UpstreamTls::VerifyFull, None) => {
            return Err(invalid(
                key("tls_ca"),
                "verify-ca and verify-full need the CA file that signs the server",
            ))
        }
        (mode, Some(ca)) => Some(
            crate::tls::client_config_verified(&resolve(ca), mode == UpstreamTls::VerifyFull)
                .map_err(|e| invalid(key("tls_ca"), e.to_string()))?,
        ),
    })
}

/// `password` or the contents of `password_file`; `prefix` names the keys in errors.
pub(crate) fn resolve_password(
    password: Option<String>,
    password_file: Option<PathBuf>,
    prefix: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<String>, ConfigError> {
    match (password, password_file) {
        (Some(_), Some(_)) => Err(invalid(
            format!("{prefix}password_file"),
            "set either password or password_file, not both",
        )),
        (Some(p), None) => Ok(Some(p)),
        (None, Some(file)) => {
            let path = resolve(&file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    format!("{prefix}password_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
        }
        (None, None) => Ok(None),
    }
}
