//! Per-grant upstream roles (`[databases.provisioning] per_grant_roles`): the database
//! itself enforces the grant. The first session of a grant creates `lockbox_<request id>`,
//! a login role that is a member of the level's role only and valid until the access window
//! ends, with a random password this process keeps in memory; every session of the grant
//! logs in as it; the role is dropped when the grant ends. Without per-grant roles,
//! sessions log in as the level's configured role.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use rand::Rng;

use crate::config::{Config, ConfigError, Credentials, Database};
use crate::ids::RequestId;
use crate::policy::{AccessLevel, Request};

mod catalog;
mod code;
mod roles;
pub mod sql;

use code::CodeWatch;
pub use code::{CodeRead, CodeUpdates, DatabaseCode};
pub use sql::RoleName;
use sql::RoleTerms;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot connect to database `{database}` as its service role: {source}")]
    Connect {
        database: String,
        source: tokio_postgres::Error,
    },
    #[error("database `{database}`: the service connection's task failed: {source}")]
    Task {
        database: String,
        source: tokio::task::JoinError,
    },
    #[error("database `{database}` did not answer lockbox's service connection within {secs} s")]
    Timeout { database: String, secs: u64 },
    #[error("database `{database}`: {step}: {source}")]
    Sql {
        database: String,
        step: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("database `{0}` has no read role: read grants cannot log in")]
    NoReadRole(String),
    #[error("request {0} has no access window")]
    NoWindow(String),
    #[error("request id `{0}` cannot name a role")]
    BadName(String),
    #[error("the grant of request {0} has ended")]
    Ended(String),
    #[error("role {role} is still a member of {member_of:?} after lockbox revoked that (may the service role revoke it?): kept as the owner of what its grant created, locked out")]
    StillMember {
        role: String,
        member_of: Vec<String>,
    },
    #[error("role {0} was dropped while it was being taken over")]
    Vanished(String),
    #[error("role {role} exists but is not one lockbox made (member of {member_of:?}, or with special attributes)")]
    Unexpected {
        role: String,
        member_of: Vec<String>,
    },
}

/// The upstream login of one session.
pub struct Login {
    pub credentials: Credentials,
    /// Logging in as the grant's own role (whose password another proxy may have reset).
    pub per_grant: bool,
}

/// The `application_name` of provisioning connections, so they are told apart from
/// sessions in the server's logs and `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "lockbox provisioning";

/// How long an ended grant is remembered, so that a session admitted just before the end
/// cannot bring its role back.
const ENDED_MEMORY: Duration = Duration::from_secs(600);

/// Decides, creates and drops per-grant roles; shared by the proxy and the service.
#[derive(Default)]
pub struct Provisioner {
    /// Each database's decision, by name, valid while its coordinates stay the same.
    modes: DashMap<String, Decided>,
    /// Each database's latest read of its own code, with the sessions that follow it, by
    /// name and server (host, port, database name): a reload that moves a database does
    /// not feed its open sessions the new server's catalog, nor its new logins the old's.
    code: DashMap<(String, String, u16, String), Arc<CodeWatch>>,
    /// Each database's code generation: how many statements that may change its schema or
    /// code (DDL) the sessions of this process forwarded to it. A list read before the
    /// latest is stale, and so is a session's view of it.
    generations: DashMap<String, Arc<AtomicU64>>,
    /// Each grant's role as this process knows it. The lock makes the first session of a
    /// grant create the role and the others wait for it; the end of the grant takes it too.
    grants: DashMap<RequestId, Arc<tokio::sync::Mutex<GrantRole>>>,
}

/// How long one step of role work on a service connection may take, its login included.
const ROLE_STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// `step` bounded by [`ROLE_STEP_TIMEOUT`]: a database that stalls after taking the
/// service connection's login would otherwise hold it, and the grant's lock, for as long.
async fn bounded<T>(
    db: &Database,
    step: impl std::future::Future<Output = Result<T, ProvisionError>>,
) -> Result<T, ProvisionError> {
    tokio::time::timeout(ROLE_STEP_TIMEOUT, step)
        .await
        .unwrap_or_else(|_| {
            Err(ProvisionError::Timeout {
                database: db.name.clone(),
                secs: ROLE_STEP_TIMEOUT.as_secs(),
            })
        })
}

/// What a decision depends on: a reload that changes any of it decides again.
#[derive(Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    dbname: String,
    user: String,
    setting: Option<bool>,
}

impl Target {
    fn of(db: &Database) -> Target {
        Target {
            host: db.host.clone(),
            port: db.port,
            dbname: db.dbname.clone(),
            user: db.user.clone(),
            setting: db.provisioning.per_grant_roles,
        }
    }
}

#[derive(Clone)]
struct Decided {
    target: Target,
    per_grant: bool,
    server_version: i32,
}

enum GrantRole {
    /// Not made or taken over by this process (yet).
    Unknown,
    Live {
        password: String,
        until: DateTime<Utc>,
        /// The session limit the role's `CONNECTION LIMIT` holds.
        sessions: Option<u32>,
    },
    /// The grant ended: its role is dropped (or will be) and never made again — unless it
    /// ended with its window (`window`, the end reached) and an extension has moved the
    /// window past that since: an extension approved as the window ended may reach a
    /// session only after it ended and dropped the role.
    Ended {
        since: Instant,
        window: Option<DateTime<Utc>>,
    },
}

impl Provisioner {
    /// The login for a session of `request` on `db`; a per-grant role is made with at most
    /// `sessions` connections at once.
    pub async fn login(
        &self,
        db: &Database,
        request: &Request,
        sessions: Option<u32>,
    ) -> Result<Login, ProvisionError> {
        let Some(level_role) = db.access.get(&request.access) else {
            // Validation requires a read role; this keeps the rule even if it did not.
            if request.access == AccessLevel::Read {
                return Err(ProvisionError::NoReadRole(db.name.clone()));
            }
            // A write or admin level without a role of its own logs in as the service role,
            // as configured: a per-grant role would need a membership to stand in for it.
            return Ok(Login {
                credentials: db.credentials(request.access),
                per_grant: false,
            });
        };
        if !self.mode(db).await?.per_grant {
            return Ok(Login {
                credentials: level_role.clone(),
                per_grant: false,
            });
        }
        let until = request
            .access_expires_at
            .ok_or_else(|| ProvisionError::NoWindow(request.id.0.clone()))?;
        let role = role_name(&request.id)?;
        let terms = RoleTerms {
            until,
            member_of: &level_role.user,
            sessions,
        };
        let slot = self.slot(&request.id);
        let mut state = slot.lock().await;
        let password = match &*state {
            GrantRole::Ended { window, .. } if !extended_past(*window, until) => {
                return Err(ProvisionError::Ended(request.id.0.clone()))
            }
            GrantRole::Ended { .. } => {
                let password = generate_password();
                roles::create_or_reset(db, &role, &password, &terms).await?;
                password
            }
            GrantRole::Live {
                password,
                until: u,
                sessions: s,
            } => {
                if *u != until {
                    roles::set_valid_until(db, &role, until).await?;
                }
                // A reload moved `[proxy] max_sessions_per_grant`: the role follows.
                if *s != sessions {
                    roles::set_connection_limit(db, &role, sessions).await?;
                }
                password.clone()
            }
            GrantRole::Unknown => {
                let password = generate_password();
                roles::create_or_reset(db, &role, &password, &terms).await?;
                password
            }
        };
        *state = GrantRole::Live {
            password: password.clone(),
            until,
            sessions,
        };
        Ok(Login {
            credentials: Credentials {
                user: role.as_str().to_owned(),
                password: Some(password),
            },
            per_grant: true,
        })
    }

    /// Forgets the password of a grant's role that upstream refused (another proxy took the
    /// role over), so the next login takes it over again.
    pub async fn forget(&self, id: &RequestId) {
        let slot = self.slot(id);
        let mut state = slot.lock().await;
        if let GrantRole::Live { .. } = &*state {
            *state = GrantRole::Unknown;
        }
    }

    /// A service connection for a reaper that cannot log in as the grant's role: the
    /// slot the role's `CONNECTION LIMIT` keeps for it can be taken by a session on
    /// another proxy of a fleet (each admits the grant's limit, the role one more).
    /// Lifting the limit instead would hand the role's own sessions a way to keep it
    /// lifted (an attack review: a session holding the role's row locked, by an
    /// uncommitted change of its own password, held the lift and its undoing at will).
    /// Also the SQL literal of the role's name, for the reaper's filter.
    pub async fn reaper_connection(
        &self,
        db: &Database,
        id: &RequestId,
    ) -> Result<(tokio_postgres::Client, String), ProvisionError> {
        let role = role_name(id)?;
        let client = bounded(db, roles::reaper_connection(db, &role)).await?;
        Ok((client, sql::literal(role.as_str())))
    }

    /// An extension moved the end of the window: so does the role's validity.
    pub async fn extend(
        &self,
        db: &Database,
        id: &RequestId,
        until: DateTime<Utc>,
    ) -> Result<(), ProvisionError> {
        if db.provisioning.per_grant_roles == Some(false) || !self.mode(db).await?.per_grant {
            return Ok(());
        }
        let role = role_name(id)?;
        let slot = self.slot(id);
        let mut state = slot.lock().await;
        match &mut *state {
            // The role is gone; the next login makes it again, valid until then.
            GrantRole::Ended { window, .. } if extended_past(*window, until) => {
                *state = GrantRole::Unknown;
                Ok(())
            }
            GrantRole::Ended { .. } => Ok(()),
            GrantRole::Live { until: known, .. } => {
                roles::set_valid_until(db, &role, until).await?;
                *known = until;
                Ok(())
            }
            GrantRole::Unknown => roles::set_valid_until(db, &role, until).await,
        }
    }

    /// The database's code generation (see `generations`): a session reads it before the
    /// function list and counts up when it forwards DDL.
    pub fn code_generation(&self, database: &str) -> Arc<AtomicU64> {
        self.generations
            .entry(database.to_owned())
            .or_default()
            .clone()
    }

    /// What `db`'s own code and schema are, read at most once per `refresh` (`[timings]
    /// catalog_refresh`), and the reads that follow while the session lives (see `code`): its functions (not
    /// built in) and the links between its relations. A call the guard takes for a
    /// built-in or a column may be one of its functions (`t.f` calls `f(t)`; `lower(1)` may
    /// be a database's `lower(int)`): with guardrails in force such a call is as opaque as
    /// any other call of a database function. The links tell which relations reach an
    /// off-limits table's rows without naming it.
    pub async fn database_code(
        &self,
        db: &Database,
        refresh: Duration,
    ) -> Result<(Arc<CodeRead>, CodeUpdates), ProvisionError> {
        let server = (db.name.clone(), db.host.clone(), db.port, db.dbname.clone());
        let watch = self.code.entry(server).or_default().clone();
        watch
            .read(db, &self.code_generation(&db.name), refresh)
            .await
    }

    /// The grant ended: no session of it logs in again, its role's backends end, and the
    /// role is dropped. Returns whether a role was dropped.
    pub async fn end(&self, db: &Database, id: &RequestId) -> Result<bool, ProvisionError> {
        self.end_at(db, id, None).await
    }

    /// The grant's window, ending at `window`, is over: as [`Self::end`], except that an
    /// extension past `window` makes the role again for the grant's next login.
    pub async fn end_window(
        &self,
        db: &Database,
        id: &RequestId,
        window: DateTime<Utc>,
    ) -> Result<bool, ProvisionError> {
        self.end_at(db, id, Some(window)).await
    }

    async fn end_at(
        &self,
        db: &Database,
        id: &RequestId,
        window: Option<DateTime<Utc>>,
    ) -> Result<bool, ProvisionError> {
        let role = role_name(id)?;
        let slot = self.slot(id);
        let mut state = slot.lock().await;
        let Some(window) = ended_window(&state, window) else {
            return Ok(false);
        };
        *state = GrantRole::Ended {
            since: Instant::now(),
            window,
        };
        if db.provisioning.per_grant_roles == Some(false) {
            return Ok(false);
        }
        let mode = self.mode(db).await?;
        if !mode.per_grant {
            return Ok(false);
        }
        roles::drop_role(db, &role, mode.server_version).await
    }

    /// The requests whose roles exist on `db`'s server (empty without per-grant roles).
    pub async fn existing(&self, db: &Database) -> Result<Vec<RequestId>, ProvisionError> {
        if db.provisioning.per_grant_roles == Some(false) || !self.mode(db).await?.per_grant {
            return Ok(Vec::new());
        }
        Ok(roles::list(db)
            .await?
            .iter()
            .filter_map(|name| RoleName::request_id(name))
            .collect())
    }

    /// Whether `db`'s grants get roles of their own (deciding now if not yet decided).
    pub async fn per_grant(&self, db: &Database) -> Result<bool, ProvisionError> {
        Ok(self.mode(db).await?.per_grant)
    }

    /// At start and reload: every database that asks for per-grant roles explicitly must
    /// have a service role that may create them, or lockbox refuses the configuration. A
    /// database that cannot be reached now is decided at first use.
    pub async fn check_explicit(&self, config: &Config) -> Result<(), ConfigError> {
        for db in config.databases.values() {
            if db.provisioning.per_grant_roles != Some(true) {
                continue;
            }
            match self.mode(db).await {
                Ok(_) => {}
                Err(ProvisionError::Config(e)) => return Err(e),
                Err(e) => {
                    tracing::warn!(database = %db.name, error = %e, "cannot check per-grant roles now; deciding at first use")
                }
            }
        }
        Ok(())
    }

    /// Grants this process knows a role of (the census counts them).
    pub(crate) fn grants_held(&self) -> usize {
        self.grants.len()
    }

    /// Drops what this process remembers of grants that ended long ago.
    pub fn prune(&self) {
        self.grants.retain(|_, slot| match slot.try_lock() {
            Ok(state) => {
                !matches!(&*state, GrantRole::Ended { since, .. } if since.elapsed() > ENDED_MEMORY)
            }
            Err(_) => true,
        });
    }

    fn slot(&self, id: &RequestId) -> Arc<tokio::sync::Mutex<GrantRole>> {
        self.grants
            .entry(id.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(GrantRole::Unknown)))
            .clone()
    }

    /// `db`'s server version (`server_version_num`) as read when per-grant roles were
    /// decided for it, if they were.
    pub fn known_server_version(&self, db: &Database) -> Option<i32> {
        let target = Target::of(db);
        self.modes
            .get(&db.name)
            .filter(|d| d.target == target)
            .map(|d| d.server_version)
    }

    async fn mode(&self, db: &Database) -> Result<Decided, ProvisionError> {
        let target = Target::of(db);
        if let Some(decided) = self.modes.get(&db.name).filter(|d| d.target == target) {
            return Ok(decided.clone());
        }
        let decided = decide(db, target).await?;
        self.modes.insert(db.name.clone(), decided.clone());
        Ok(decided)
    }
}

/// Per-grant roles or not, for `db`: off when configured off; otherwise on exactly when the
/// service role may create roles, and a configuration that insists on them while it may
/// not is refused.
async fn decide(db: &Database, target: Target) -> Result<Decided, ProvisionError> {
    if db.provisioning.per_grant_roles == Some(false) {
        return Ok(Decided {
            target,
            per_grant: false,
            server_version: 0,
        });
    }
    let (may_create, server_version) = roles::service_role_state(db).await?;
    if !may_create && db.provisioning.per_grant_roles == Some(true) {
        return Err(ConfigError::Invalid {
            key: format!("databases.{}.provisioning.per_grant_roles", db.name),
            message: format!(
                "is true, but the service role `{}` may not create roles (it needs CREATEROLE)",
                db.user
            ),
        }
        .into());
    }
    tracing::info!(
        database = %db.name,
        per_grant_roles = may_create,
        "upstream logins decided: {}",
        if may_create {
            "one role per grant, member of the level's role"
        } else {
            "the level's configured role (the service role may not create roles)"
        }
    );
    if may_create {
        for level in [AccessLevel::Write, AccessLevel::Admin] {
            if !db.access.contains_key(&level) {
                tracing::info!(
                    database = %db.name,
                    "{} grants log in as the service role: no [databases.access.{}] role for them to join",
                    level.as_str(),
                    level.as_str()
                );
            }
        }
    }
    Ok(Decided {
        target,
        per_grant: may_create,
        server_version,
    })
}

/// The window a grant's role ends with now (see [`GrantRole::Ended`]), given its state,
/// or `None` when it does not end: this process already moved the role past that window
/// (an extension), so the grant goes on. An end for good (`Some(None)`) stays one, and of
/// two window ends the later counts, so a late end of an older window never weakens an
/// earlier end.
#[allow(clippy::option_option)]
fn ended_window(state: &GrantRole, window: Option<DateTime<Utc>>) -> Option<Option<DateTime<Utc>>> {
    Some(match state {
        GrantRole::Live { until, .. } if window.is_some_and(|w| *until > w) => return None,
        GrantRole::Ended { window: None, .. } => None,
        GrantRole::Ended {
            window: Some(before),
            ..
        } => window.map(|w| w.max(*before)),
        GrantRole::Unknown | GrantRole::Live { .. } => window,
    })
}

/// Whether a grant whose window ended at `ended` (none: ended otherwise, for good) now
/// runs until `until`, later.
fn extended_past(ended: Option<DateTime<Utc>>, until: DateTime<Utc>) -> bool {
    ended.is_some_and(|ended| until > ended)
}

fn role_name(id: &RequestId) -> Result<RoleName, ProvisionError> {
    RoleName::for_request(id).ok_or_else(|| ProvisionError::BadName(id.0.clone()))
}

/// 256 random bits, hex: it only ever travels from this process to the database.
fn generate_password() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_ended_with_its_window_comes_back_only_for_an_extension_past_it() {
        let end = Utc::now();
        assert!(extended_past(Some(end), end + chrono::TimeDelta::hours(1)));
        assert!(!extended_past(Some(end), end), "the same window");
        assert!(!extended_past(
            Some(end),
            end - chrono::TimeDelta::seconds(1)
        ));
        // Revoked, cancelled or completed: never again.
        assert!(!extended_past(None, end + chrono::TimeDelta::hours(1)));
    }

    #[test]
    fn an_end_for_good_stays_one_and_a_later_window_end_counts() {
        let end = Utc::now();
        let hour = chrono::TimeDelta::hours(1);
        let ended = |window| GrantRole::Ended {
            since: Instant::now(),
            window,
        };
        assert_eq!(
            ended_window(&ended(None), Some(end)),
            Some(None),
            "revoked first"
        );
        assert_eq!(
            ended_window(&ended(Some(end)), None),
            Some(None),
            "revoked after"
        );
        assert_eq!(
            ended_window(&ended(Some(end)), Some(end - hour)),
            Some(Some(end))
        );
        assert_eq!(
            ended_window(&ended(Some(end - hour)), Some(end)),
            Some(Some(end))
        );
        assert_eq!(
            ended_window(&GrantRole::Unknown, Some(end)),
            Some(Some(end))
        );
    }

    #[test]
    fn a_window_this_process_extended_the_role_past_does_not_end_it() {
        let end = Utc::now();
        let live = |until| GrantRole::Live {
            password: "p".into(),
            until,
            sessions: None,
        };
        let later = end + chrono::TimeDelta::hours(1);
        assert_eq!(ended_window(&live(later), Some(end)), None);
        assert_eq!(ended_window(&live(end), Some(end)), Some(Some(end)));
        assert_eq!(ended_window(&live(later), None), Some(None), "revoked");
    }
}
