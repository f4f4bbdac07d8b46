//! Makes sure the upstream backend of a session the proxy ended is really gone.
//!
//! Cancelling the query and closing the socket stop a backend only once it lets the cancel
//! through or touches the socket. A procedure that catches `query_canceled` and keeps
//! writing and committing does neither, and would go on after the grant ended. So once the
//! relay has ended, a `Reaper` watches the backend from a connection of its own (logged in
//! like the session) and terminates it if it is still there after `timings.terminate_after`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::session::session_record;
use super::upstream::{self, UpstreamError};
use crate::audit::{AuditEvent, AuditLog, SessionEvent, SessionFields, SessionRecord};
use crate::config::{Credentials, Database};
use crate::policy::AccessLevel;

mod lookout;
use lookout::Lookout;

/// How often the reaper looks for the backend.
const POLL: Duration = Duration::from_millis(100);

/// How long the reaper waits between logins the server refused (it may be restarting).
const LOGIN_RETRY: Duration = Duration::from_millis(250);

/// How long a terminated backend may take to exit (it rolls back its transaction first).
const EXIT_BOUND: Duration = Duration::from_secs(3);

/// Shown in `pg_stat_activity.application_name` of the reaper's own connection.
const APPLICATION_NAME: &str = "lockbox terminator";

/// Why the reaper could not make sure the backend is gone.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReapError {
    #[error("cannot log in upstream to terminate the backend: {0}")]
    Connect(#[source] UpstreamError),
    #[error("the reaper could not log in as the grant's role, and the service connection to terminate the backend failed: {0}")]
    Service(#[source] crate::provision::ProvisionError),
    #[error("cannot query the backend's state: {0}")]
    Query(#[source] UpstreamError),
    #[error("cannot query the backend's state over the service connection: {0}")]
    ServiceQuery(#[source] tokio_postgres::Error),
    #[error("the backend is still running {0:?} after pg_terminate_backend")]
    StillRunning(Duration),
}

/// What became of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// It went away on its own within the window.
    Gone,
    /// It outlived the window and was terminated.
    Terminated,
}

/// The backend of one session the proxy ended.
pub(crate) struct Reaper {
    pub(crate) db: Database,
    /// The session's own login: the reaper logs in as the same role, which may always
    /// signal its own backends (no superuser or `pg_signal_backend` needed).
    pub(crate) credentials: Credentials,
    pub(crate) access: AccessLevel,
    pub(crate) backend_pid: i32,
    /// When the session's relay ended.
    pub(crate) relay_ended: Instant,
    /// Until when the backend may go away on its own.
    pub(crate) window_end: Instant,
    pub(crate) fields: Arc<SessionFields>,
    pub(crate) audit: AuditLog,
    /// The session's span, so the reaper's lines carry its session id.
    pub(crate) span: tracing::Span,
    /// For a grant with a session limit: its reapers' turn. Its role's `CONNECTION LIMIT`
    /// keeps one slot for a reaper, so they log in one at a time (an attack review's two
    /// sessions of a two-session grant, killed together: the second reaper was refused
    /// 53300 and its backend ran on).
    pub(crate) turn: Option<Arc<tokio::sync::Mutex<()>>>,
    /// For a grant with a role of its own: how to take the role over again when another
    /// proxy of the fleet reset its password since the session logged in (the reaper's
    /// login is then refused 28P01), as a login does.
    pub(crate) retake: Option<Retake>,
}

/// What taking a grant's role over again needs.
pub(crate) struct Retake {
    pub(crate) provisioner: Arc<crate::provision::Provisioner>,
    pub(crate) request: crate::policy::Request,
    pub(crate) sessions: Option<u32>,
}

impl Retake {
    /// The role taken over again: a password of this proxy's own.
    /// Bounded as a session's login is: a database that stalls must not hold the reaper
    /// (and the grant's place) for as long as it stalls.
    async fn credentials(&self, db: &Database) -> Result<Credentials, UpstreamError> {
        self.provisioner.forget(&self.request.id).await;
        let login = self.provisioner.login(db, &self.request, self.sessions);
        let taken = match tokio::time::timeout(super::session::PROVISION_TIMEOUT, login).await {
            Ok(Ok(login)) => return Ok(login.credentials),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the database did not answer in time".to_owned(),
        };
        Err(UpstreamError::Rejected {
            sqlstate: "28P01".into(),
            message: format!("the grant's role could not be taken over again: {taken}"),
            routine: String::new(),
        })
    }
}

impl Reaper {
    /// Waits out the window, terminates the backend if it is still there, and records what
    /// became of it.
    pub(crate) async fn run(self) {
        let span = tracing::info_span!(
            parent: &self.span,
            "reap_backend",
            backend_pid = self.backend_pid
        );
        async move {
            // Past its window once its turn comes, it looks once and terminates a backend
            // still there at once.
            let _turn = match &self.turn {
                Some(turn) => Some(turn.lock().await),
                None => None,
            };
            let fate = self.settle().await;
            log(&fate);
            self.record(&fate).await;
        }
        .instrument(span)
        .await
    }

    async fn settle(&self) -> Result<Fate, ReapError> {
        let mut lookout = self.log_in().await?;
        let fate = self.watch(&mut lookout).await;
        lookout.close().await;
        fate
    }

    /// Logs in as the session did, trying again until the window ends: a server that
    /// closed a connection without a word may be restarting (a backend killed, crash
    /// recovery), and refuses logins for a while; once it takes them, the backend it had
    /// is gone. A grant's own role at its connection limit (a session on another proxy of
    /// the fleet took the slot it keeps for the reaper), or one it could not take over
    /// again, is looked at over a service connection instead.
    async fn log_in(&self) -> Result<Lookout, ReapError> {
        let mut credentials = std::borrow::Cow::Borrowed(&self.credentials);
        let mut retake = self.retake.as_ref();
        let version = self
            .retake
            .as_ref()
            .and_then(|r| r.provisioner.known_server_version(&self.db));
        let params = reaper_parameters(version);
        loop {
            let login = upstream::connect(&self.db, &credentials, self.access, &params).await;
            match login {
                Ok(conn) => return Ok(Lookout::AsTheRole(conn)),
                Err(e) if e.role_at_its_limit() && self.retake.is_some() => {
                    tracing::warn!(
                        "the grant's role is at its connection limit; the reaper looks over a service connection"
                    );
                    return self.service_lookout().await;
                }
                Err(e) if e.sqlstate() == Some("28P01") => {
                    let Some(retake) = retake.take() else {
                        // Taken over again by another node since this one's takeover.
                        if self.retake.is_some() {
                            return self.service_lookout().await;
                        }
                        return Err(ReapError::Connect(e));
                    };
                    tracing::warn!(
                        "upstream refused the grant role's password to the reaper; taking the role over again"
                    );
                    match retake.credentials(&self.db).await {
                        Ok(again) => credentials = std::borrow::Cow::Owned(again),
                        // A session of the role may hold its row locked (an uncommitted
                        // change of its own password), which holds the takeover's ALTER.
                        Err(e) => {
                            tracing::warn!(error = %e, "the reaper could not take the grant's role over again; it looks over a service connection");
                            return self.service_lookout().await;
                        }
                    }
                }
                Err(e)
                    if e.server_unavailable() && Instant::now() + LOGIN_RETRY < self.window_end =>
                {
                    tracing::debug!(error = %e, "the reaper's login was refused; trying again");
                    tokio::time::sleep(LOGIN_RETRY).await;
                }
                Err(e) => return Err(ReapError::Connect(e)),
            }
        }
    }

    /// The service connection of the grant's database, readied to reap the role's backend.
    async fn service_lookout(&self) -> Result<Lookout, ReapError> {
        let Some(retake) = &self.retake else {
            return Err(ReapError::Connect(UpstreamError::Closed));
        };
        let (client, role) = retake
            .provisioner
            .reaper_connection(&self.db, &retake.request.id)
            .await
            .map_err(ReapError::Service)?;
        Ok(Lookout::Service { client, role })
    }

    /// Gives the backend its window, then terminates it and waits (bounded) for it to go.
    async fn watch(&self, conn: &mut Lookout) -> Result<Fate, ReapError> {
        let backend = Backend {
            pid: self.backend_pid,
            relay_ended: self.relay_ended,
        };
        if gone_by(conn, backend, self.window_end).await? {
            return Ok(Fate::Gone);
        }
        if !terminate(conn, backend).await? {
            // It exited between the last look and the signal.
            return Ok(Fate::Gone);
        }
        if gone_by(conn, backend, Instant::now() + EXIT_BOUND).await? {
            Ok(Fate::Terminated)
        } else {
            Err(ReapError::StillRunning(EXIT_BOUND))
        }
    }

    async fn record(&self, fate: &Result<Fate, ReapError>) {
        let (event, reason) = match fate {
            Ok(Fate::Gone) => (SessionEvent::BackendGone, None),
            Ok(Fate::Terminated) => (
                SessionEvent::BackendTerminated,
                Some("the backend ignored the cancel and the closed connection".to_owned()),
            ),
            Err(e) => (SessionEvent::BackendTerminationFailed, Some(e.to_string())),
        };
        let record = SessionRecord {
            backend_pid: Some(self.backend_pid),
            ..session_record(&self.fields, event, reason.as_deref())
        };
        if let Err(e) = self
            .audit
            .append_durable(vec![AuditEvent::Session(record)])
            .await
        {
            tracing::error!(error = %e, "could not record what became of the backend");
        }
    }
}

fn log(fate: &Result<Fate, ReapError>) {
    match fate {
        Ok(Fate::Gone) => tracing::debug!("backend ended with its session"),
        Ok(Fate::Terminated) => {
            tracing::warn!("backend outlived its session; terminated with pg_terminate_backend")
        }
        Err(e @ ReapError::Connect(_)) => tracing::error!(
            error = %e,
            "cannot reach upstream to end the backend of a dropped session; it may still be running"
        ),
        Err(e) => tracing::error!(
            error = %e,
            "could not make sure the backend of a dropped session is gone; it may still be running"
        ),
    }
}

/// The reaper's startup parameters: besides its name, settings that override what a grant
/// may have set as its role's or its database's defaults (`ALTER ROLE … SET`), which
/// would otherwise bind the reaper's login as the session's role: its path, its role, and
/// timeouts that would end its statements or, idle between looks, its connection. Those
/// PostgreSQL added later only where the server is known to have them (`server_version`,
/// as read by the provisioner): a startup parameter it does not know refuses the login.
fn reaper_parameters(server_version: Option<i32>) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = [
        ("application_name", APPLICATION_NAME),
        // A default `role` would make the reaper another role, one that may not signal
        // the session's backend.
        ("role", "none"),
        ("search_path", "pg_catalog, pg_temp"),
        ("statement_timeout", "10s"),
        ("lock_timeout", "5s"),
        ("idle_in_transaction_session_timeout", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let version = server_version.unwrap_or(0);
    if version >= 140_000 {
        params.push(("idle_session_timeout".into(), "0".into()));
    }
    if version >= 170_000 {
        params.push(("transaction_timeout".into(), "0".into()));
    }
    params
}

/// The session's backend, as the reaper finds it.
#[derive(Clone, Copy)]
struct Backend {
    pid: i32,
    /// When the session's relay ended: its backend had started by then.
    relay_ended: Instant,
}

/// Only the session's own backend: a pid the server has since given to another connection
/// of another role or database is left alone, and so is one that started after the
/// session's relay ended (a pid used again, after a restart that reached a pid namespace's
/// start or wrapped around: another session of the same role, the reaper's own). `role`
/// names the session's role in SQL (`session_user` where the reaper logged in as it: a
/// role default of `role` would move `current_user`); the reaper's connection is to the
/// session's database; the time is the server's own clock, less how long ago the relay
/// ended. Every name is schema-qualified, operators too: a grant that may create objects
/// could otherwise put a function of its own (`public.make_interval(numeric)`, a closer
/// match than the built-in) in the reaper's way, run as the reaper's role, the service
/// role's included (an attack review made a login of its own that way).
fn backend_filter(backend: Backend, role: &str) -> String {
    let since = backend.relay_ended.elapsed().as_secs_f64();
    format!(
        "pid OPERATOR(pg_catalog.=) {} \
         AND pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() \
         AND usename OPERATOR(pg_catalog.=) {role} \
         AND datname OPERATOR(pg_catalog.=) pg_catalog.current_database() \
         AND backend_start OPERATOR(pg_catalog.<=) (pg_catalog.now() \
         OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => {since:.6}::pg_catalog.float8))",
        backend.pid
    )
}

/// Whether the backend is still there.
async fn alive(conn: &mut Lookout, backend: Backend) -> Result<bool, ReapError> {
    let sql = format!(
        "SELECT 1 FROM pg_catalog.pg_stat_activity WHERE {}",
        backend_filter(backend, conn.role())
    );
    Ok(conn.rows(&sql).await? > 0)
}

/// Polls until the backend is gone (true) or `until` passes with it still there (false).
async fn gone_by(conn: &mut Lookout, backend: Backend, until: Instant) -> Result<bool, ReapError> {
    loop {
        if !alive(conn, backend).await? {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(POLL.min(until.saturating_duration_since(Instant::now()))).await;
    }
}

/// Signals the backend to terminate; false when it was no longer there to signal.
async fn terminate(conn: &mut Lookout, backend: Backend) -> Result<bool, ReapError> {
    // OFFSET 0 keeps the planner from moving the (volatile) signal below the role and
    // database checks: only a row that passed all of them is signalled.
    let sql = format!(
        "SELECT 1 FROM (SELECT pid FROM pg_catalog.pg_stat_activity WHERE {} OFFSET 0) \
         AS backend WHERE pg_catalog.pg_terminate_backend(backend.pid)",
        backend_filter(backend, conn.role())
    );
    Ok(conn.rows(&sql).await? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::cluster;

    /// How many backends the filter finds, asked as the test's backend's role and database
    /// on a connection already open, as the reaper asks: the filter measures back from the
    /// moment it is written, so a query that reached the server late (a psql process
    /// started for it on a busy machine) would look further back than it means to.
    async fn found(asker: &tokio_postgres::Client, backend: Backend) -> i64 {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE {}",
            backend_filter(backend, "session_user")
        );
        asker.query_one(&sql, &[]).await.expect("ask").get(0)
    }

    async fn connect(pg: &crate::sandbox::PgSandbox) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(connection);
        client
    }

    #[tokio::test]
    async fn a_backend_that_started_after_the_relay_ended_is_not_the_sessions() {
        let pg = cluster();
        let asker = connect(pg).await;
        let before = Instant::now();
        // Ordering, not timing: the backend starts strictly after `before`, by a margin
        // wider than the ask's own round trip.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let client = connect(pg).await;
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = Instant::now();
        assert_eq!(
            found(
                &asker,
                Backend {
                    pid,
                    relay_ended: after
                }
            )
            .await,
            1,
            "the session's own backend is found"
        );
        assert_eq!(
            found(
                &asker,
                Backend {
                    pid,
                    relay_ended: before
                }
            )
            .await,
            0,
            "a pid used again by a later backend is not the session's"
        );
    }
}
