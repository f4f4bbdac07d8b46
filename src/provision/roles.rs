//! The provisioning work itself, each step on a fresh service connection to the grant's
//! database (REASSIGN/DROP OWNED act on the database they run in).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::sql::{self, RoleName, RoleTerms};
use super::ProvisionError;
use crate::config::Database;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Logs in as the database's service role. On the main runtime: called from a session,
/// the login's password hashing and TLS handshake would otherwise hold up its session
/// thread, and the connection would stay there.
pub(super) async fn connect(db: &Database) -> Result<Client, ProvisionError> {
    let owned = db.clone();
    crate::runtime::spawn_control(async move { connect_here(&owned).await })
        .await
        .unwrap_or_else(|e| {
            Err(ProvisionError::Task {
                database: db.name.clone(),
                source: e,
            })
        })
}

async fn connect_here(db: &Database) -> Result<Client, ProvisionError> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&db.host)
        .port(db.port)
        .dbname(&db.dbname)
        .user(&db.user)
        .application_name(super::APPLICATION_NAME)
        // Whatever the database's or the role's defaults say (a database's owner may set
        // them): only the catalogs' names, since a grant that may create objects could
        // otherwise put a function or operator of its own (a closer match than the
        // built-in) in the way of this role's work; as the service role itself, writing;
        // with timeouts of lockbox's own, so a statement waiting on a lock a grant's session
        // holds (its role's row, by an uncommitted change of its own password) fails on the
        // server rather than holding the step, and the grant's lock, for as long.
        .options(
            "-c search_path=pg_catalog,pg_temp -c role=none -c default_transaction_read_only=off \
             -c statement_timeout=300s -c lock_timeout=30s -c idle_in_transaction_session_timeout=0",
        )
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(password) = &db.password {
        pg.password(password);
    }
    let failed = |source| ProvisionError::Connect {
        database: db.name.clone(),
        source,
    };
    // tokio-postgres's connect_timeout bounds the TCP connect only: a stalled server
    // (SIGSTOP, a hung host) completes that from the kernel's backlog and then never
    // answers the login, which would hold a session's admission for as long as it stalls.
    let timed_out = || ProvisionError::Timeout {
        database: db.name.clone(),
        secs: CONNECT_TIMEOUT.as_secs(),
    };
    let client = match &db.tls_client {
        None => {
            let (client, connection) =
                tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(tokio_postgres::NoTls))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(failed)?;
            crate::runtime::spawn_control(drive(connection));
            client
        }
        Some(tls) => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
            let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(tls))
                .await
                .map_err(|_| timed_out())?
                .map_err(failed)?;
            crate::runtime::spawn_control(drive(connection));
            client
        }
    };
    Ok(client)
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "provisioning connection ended");
    }
}

pub(super) fn failed(
    db: &Database,
    step: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> ProvisionError {
    let database = db.name.clone();
    move |source| ProvisionError::Sql {
        database,
        step,
        source,
    }
}

/// Whether the service role may create roles, and the server's version number.
pub(super) async fn service_role_state(db: &Database) -> Result<(bool, i32), ProvisionError> {
    let client = connect(db).await?;
    let step = "checking whether the service role may create roles";
    let row = client
        .query_one(sql::SERVICE_ROLE_STATE, &[])
        .await
        .map_err(failed(db, step))?;
    let may_create: bool = row.try_get(0).map_err(failed(db, step))?;
    let version: i32 = row.try_get(1).map_err(failed(db, step))?;
    Ok((may_create, version))
}

/// Creates the grant's role, or takes it over if it exists (a restart, another proxy, or
/// a concurrent creation that won).
pub(super) async fn create_or_reset(
    db: &Database,
    role: &RoleName,
    password: &str,
    terms: &RoleTerms<'_>,
) -> Result<(), ProvisionError> {
    let client = connect(db).await?;
    // Only the verifier reaches the server (and any statement log): never the password.
    let verifier = crate::runtime::blocking(|| {
        postgres_protocol::password::scram_sha_256(password.as_bytes())
    });
    match client
        .batch_execute(&sql::create_role(role, &verifier, terms))
        .await
    {
        Ok(()) => {
            tracing::info!(role = role.as_str(), member_of = terms.member_of, until = %terms.until, sessions = ?terms.sessions, "per-grant role created");
            Ok(())
        }
        Err(e) if exists_already(&e) => reset(db, &client, role, &verifier, terms).await,
        Err(e) => Err(failed(db, "creating the grant's role")(e)),
    }
}

/// Two creations racing: the loser sees either error, depending on timing.
fn exists_already(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::DUPLICATE_OBJECT || *c == SqlState::UNIQUE_VIOLATION
    )
}

async fn reset(
    db: &Database,
    client: &Client,
    role: &RoleName,
    verifier: &str,
    terms: &RoleTerms<'_>,
) -> Result<(), ProvisionError> {
    let step = "checking the grant's existing role";
    let row = client
        .query_opt(sql::ROLE_STATE, &[&role.as_str()])
        .await
        .map_err(failed(db, step))?
        .ok_or_else(|| ProvisionError::Vanished(role.as_str().to_owned()))?;
    let privileged: bool = row.try_get(0).map_err(failed(db, step))?;
    let member_of_now: Vec<String> = row.try_get(1).map_err(failed(db, step))?;
    // Someone else's role under our name, or one changed behind lockbox's back: do not
    // hand it to an engineer.
    if privileged || member_of_now.iter().any(|m| m != terms.member_of) {
        return Err(ProvisionError::Unexpected {
            role: role.as_str().to_owned(),
            member_of: member_of_now,
        });
    }
    client
        .batch_execute(&sql::reset_role(role, verifier, terms))
        .await
        .map_err(failed(db, "taking over the grant's existing role"))?;
    tracing::info!(role = role.as_str(), member_of = terms.member_of, until = %terms.until, sessions = ?terms.sessions, "per-grant role taken over");
    Ok(())
}

/// Moves the role's `VALID UNTIL`; a role that does not exist needs nothing.
pub(super) async fn set_valid_until(
    db: &Database,
    role: &RoleName,
    until: DateTime<Utc>,
) -> Result<(), ProvisionError> {
    alter_if_exists(
        db,
        &sql::set_valid_until(role, until),
        "moving the grant role's VALID UNTIL",
    )
    .await
}

/// Sets the role's `CONNECTION LIMIT` to the grant's session limit; a role that does not
/// exist needs nothing.
pub(super) async fn set_connection_limit(
    db: &Database,
    role: &RoleName,
    sessions: Option<u32>,
) -> Result<(), ProvisionError> {
    alter_if_exists(
        db,
        &sql::set_connection_limit(role, sessions),
        "setting the grant role's CONNECTION LIMIT",
    )
    .await
}

/// A service connection readied to reap a backend of `role` (see
/// `sql::ready_for_reaping`).
pub(super) async fn reaper_connection(
    db: &Database,
    role: &RoleName,
) -> Result<Client, ProvisionError> {
    let client = connect(db).await?;
    client
        .batch_execute(&sql::ready_for_reaping(role, &db.user))
        .await
        .map_err(failed(
            db,
            "readying a service connection to reap the grant role's backend",
        ))?;
    Ok(client)
}

/// Runs `alter` (an ALTER ROLE) over a service connection; a role already gone (the
/// grant ended meanwhile) is no error.
async fn alter_if_exists(
    db: &Database,
    alter: &str,
    step: &'static str,
) -> Result<(), ProvisionError> {
    let client = connect(db).await?;
    match client.batch_execute(alter).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(()),
        Err(e) => Err(failed(db, step)(e)),
    }
}

/// Ends the role's backends and drops it, or keeps it as the owner of what it created
/// (see `keep_role`). Returns whether there was a role to end.
pub(super) async fn drop_role(
    db: &Database,
    role: &RoleName,
    server_version: i32,
) -> Result<bool, ProvisionError> {
    let client = connect(db).await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_roles WHERE rolname = $1",
            &[&role.as_str()],
        )
        .await
        .map_err(failed(db, "looking up the grant's role"))?
        .is_some();
    if !exists {
        return Ok(false);
    }
    client
        .batch_execute(&sql::prepare_drop(role, &db.user))
        .await
        .map_err(failed(db, "locking the grant's role out"))?;
    let ended: i64 = client
        .query_one(sql::terminate_backends(server_version), &[&role.as_str()])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed(db, "ending the grant role's backends"))?;
    let owns: bool = client
        .query_one(sql::OWNS_OBJECTS, &[&role.as_str()])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed(db, "looking up what the grant's role owns"))?;
    if owns {
        return keep_role(db, &client, role, ended).await;
    }
    client
        .batch_execute(&sql::drop_role(role))
        .await
        .map_err(failed(db, "dropping the grant's role"))?;
    tracing::info!(
        role = role.as_str(),
        backends_ended = ended,
        "per-grant role dropped"
    );
    Ok(true)
}

/// A grant's role that owns what its grant created (a table a write grant made may be
/// customer work) is kept as its owner, locked out and a member of nothing, rather than
/// handed to the service role: there a `SECURITY DEFINER` function or a view the grant
/// made would run with the service role's privileges for whoever calls it later (an
/// attack review's made a login of the engineer's). Its own privileges, those of an owner
/// of what it made, stay with what it made.
async fn keep_role(
    db: &Database,
    client: &Client,
    role: &RoleName,
    ended: i64,
) -> Result<bool, ProvisionError> {
    client
        .batch_execute(&sql::lock_kept(role))
        .await
        .map_err(failed(db, "locking the kept grant role out"))?;
    for member_of in memberships(db, client, role).await? {
        client
            .batch_execute(&sql::revoke_membership(role, &member_of))
            .await
            .map_err(failed(
                db,
                "taking the kept grant role out of its level's role",
            ))?;
    }
    // A REVOKE the server does not carry out (PostgreSQL 16+: another grantor's) only warns.
    let left = memberships(db, client, role).await?;
    if !left.is_empty() {
        return Err(ProvisionError::StillMember {
            role: role.as_str().to_owned(),
            member_of: left,
        });
    }
    tracing::info!(
        role = role.as_str(),
        backends_ended = ended,
        "per-grant role kept, locked out and a member of nothing, as the owner of what its grant created"
    );
    Ok(true)
}

/// The roles `role` is a member of.
async fn memberships(
    db: &Database,
    client: &Client,
    role: &RoleName,
) -> Result<Vec<String>, ProvisionError> {
    names(
        db,
        client,
        sql::MEMBERSHIPS,
        role.as_str(),
        "listing the grant role's memberships",
    )
    .await
}

/// The first column of `query`'s rows, run with `param`: role names.
async fn names(
    db: &Database,
    client: &Client,
    query: &str,
    param: &str,
    step: &'static str,
) -> Result<Vec<String>, ProvisionError> {
    let rows = client
        .query(query, &[&param])
        .await
        .map_err(failed(db, step))?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(failed(db, step)))
        .collect()
}

/// The requests whose roles exist on the database's server (a role kept as the owner of
/// what its grant created, locked out and a member of nothing, is done with).
pub(super) async fn list(db: &Database) -> Result<Vec<String>, ProvisionError> {
    let client = connect(db).await?;
    names(
        db,
        &client,
        "SELECT rolname::text FROM pg_roles r WHERE rolname LIKE $1 \
         AND (rolcanlogin OR EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid))",
        sql::ROLE_PATTERN,
        "listing per-grant roles",
    )
    .await
}
