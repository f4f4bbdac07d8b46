//! The upstream login of an admitted session: the grant's role prepared, then the grant's
//! spare backend (see `spare`), or a login on the connection dialed early (see
//! `early_dial`) or on a fresh one; and, for a grant that reconnects, its next session's
//! spare opened.

use std::sync::Arc;

use tracing::Instrument;

use super::PROVISION_TIMEOUT;
use crate::config::{Credentials, Database};
use crate::policy::AccessLevel;
use crate::proxy::early_dial::{EarlyDial, EarlyDialError};
use crate::proxy::places::PLACE_WAIT;
use crate::proxy::spare::{Reservation, SpareKey, Spares, SPARE_LOGIN_TIMEOUT};
use crate::proxy::upstream;
use crate::wire::sqlstate;

/// Where the grant's spares are kept, and whether (and until when) one may be opened.
pub(super) struct SpareSlots<'a> {
    pub(super) spares: &'a Arc<Spares>,
    pub(super) enabled: bool,
    /// The grant's end: a spare is closed by then.
    pub(super) ends_at: tokio::time::Instant,
}

/// Logs in upstream as the grant's role, or takes the grant's spare backend logged in as
/// it for exactly this login. A per-grant role whose password another proxy reset since (it
/// took the role over) is taken over again, once.
pub(super) async fn connect_upstream(
    lockbox: &crate::service::Lockbox,
    slots: SpareSlots<'_>,
    db: &Database,
    request: &crate::policy::Request,
    params: &[(String, String)],
    mut early: Option<EarlyDial>,
) -> Result<(upstream::Upstream, crate::provision::Login), Refused> {
    let unreachable = Refused::new(
        sqlstate::CONNECTION_FAILURE,
        "lockbox could not connect to the upstream database",
    );
    for attempt in 0..2 {
        // Bounded as a whole: preparing the grant's role runs queries on a service
        // connection, and a database that stalls after it answered the login would hold
        // the admission (and its client) for as long as it stalls.
        let sessions = request.session_limit(lockbox.config().max_sessions_per_grant);
        let prepared = tokio::time::timeout(
            PROVISION_TIMEOUT,
            lockbox.provisioner.login(db, request, sessions),
        )
        .await
        .unwrap_or_else(|_| {
            Err(crate::provision::ProvisionError::Timeout {
                database: db.name.clone(),
                secs: PROVISION_TIMEOUT.as_secs(),
            })
        });
        let login = match prepared {
            Ok(login) => login,
            Err(crate::provision::ProvisionError::Ended(_)) => {
                return Err(Refused::new(
                    sqlstate::INVALID_PASSWORD,
                    "this access grant has ended",
                ))
            }
            Err(e @ crate::provision::ProvisionError::Timeout { .. }) => {
                tracing::error!(error = %e, "cannot prepare the grant's upstream role");
                return Err(Refused::new(
                    sqlstate::CONNECTION_FAILURE,
                    "lockbox could not prepare the upstream role of this grant: the database did not answer in time",
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot prepare the grant's upstream role");
                return Err(Refused::new(
                    sqlstate::CONNECTION_FAILURE,
                    "lockbox could not prepare the upstream role of this grant",
                ));
            }
        };
        // The grant's own role, limited: its `CONNECTION LIMIT` is the grant's.
        let limited_role = login.per_grant && sessions.is_some();
        let key = SpareKey::new(db, &login.credentials.user, request.access, params);
        // Opens the grant's next spare when it may have one (see `spare`).
        let open_next = |taken: bool, early: Option<EarlyDial>| {
            // A grant with a session limit gets none: a spare would hold the slot of its
            // role's `CONNECTION LIMIT` kept for the reaper, which could then not end a
            // backend that outlived its session (an attack review's finding).
            if !slots.enabled || sessions.is_some() {
                return;
            }
            let reserved = slots
                .spares
                .reserve(&request.id, &key, taken, slots.ends_at);
            if let Some(reservation) = reserved {
                open_spare(
                    reservation,
                    db,
                    &login.credentials,
                    request.access,
                    params,
                    early,
                );
            }
        };
        let spare = if slots.enabled {
            slots.spares.take(&request.id, &key).await
        } else {
            None
        };
        if let Some(spare) = spare {
            tracing::debug!(
                backend_pid = spare.backend_pid,
                "session takes its grant's spare backend"
            );
            // The dial this login did not need becomes the next spare's connection.
            open_next(true, early.take());
            return Ok((spare, login));
        }
        let connected = match early.take() {
            Some(dial) => {
                login_on_early_dial(dial, db, &login.credentials, request.access, params).await
            }
            None => upstream::connect(db, &login.credentials, request.access, params).await,
        };
        let connected = match connected {
            // Spares yield to logins: one may hold the slot the server (or the role's
            // CONNECTION LIMIT) refused this login for.
            Err(e)
                if e.sqlstate() == Some(sqlstate::TOO_MANY_CONNECTIONS)
                    && slots
                        .spares
                        .yield_slots(&upstream::DialTarget::of(db))
                        .await =>
            {
                tracing::info!(
                    "the database is at its connection limit: its spare backends gave their slots up; logging in again"
                );
                upstream::connect(db, &login.credentials, request.access, params).await
            }
            other => other,
        };
        // The database counts a backend that is exiting (one the reaper just ended, the
        // grant's last session closing) against the role's limit for a moment after this
        // proxy gave its place back: a limited grant's login waits that moment out.
        let connected = match connected {
            Err(e) if e.role_at_its_limit() && limited_role => {
                log_in_once_a_slot_frees(db, &login.credentials, request.access, params, e).await
            }
            other => other,
        };
        match connected {
            Ok(u) => {
                open_next(false, None);
                return Ok((u, login));
            }
            Err(upstream::UpstreamError::Rejected { sqlstate, .. })
                if login.per_grant && attempt == 0 && sqlstate == "28P01" =>
            {
                tracing::warn!(
                    "upstream refused the grant role's password; taking the role over again"
                );
                lockbox.provisioner.forget(&request.id).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "upstream login failed");
                // Out of slots is the server's own answer, which clients and poolers know
                // to retry.
                let code = match e.sqlstate() {
                    Some(sqlstate::TOO_MANY_CONNECTIONS) => sqlstate::TOO_MANY_CONNECTIONS,
                    _ => sqlstate::CONNECTION_FAILURE,
                };
                return Err(Refused {
                    code,
                    message: e.client_message(),
                    at_grant_limit: e.role_at_its_limit() && limited_role,
                });
            }
        }
    }
    Err(unreachable)
}

/// Why an admitted session got no upstream login, as its client is told.
pub(super) struct Refused {
    pub(super) code: &'static str,
    pub(super) message: &'static str,
    /// The database refused the grant's own role at its `CONNECTION LIMIT`: a refusal for
    /// the grant's session limit, audited as the proxy's own is.
    pub(super) at_grant_limit: bool,
}

impl Refused {
    fn new(code: &'static str, message: &'static str) -> Refused {
        Refused {
            code,
            message,
            at_grant_limit: false,
        }
    }
}

/// Logs in again, a little later each time, while the server refuses for want of a slot,
/// for up to `PLACE_WAIT`; the last answer is the login's.
async fn log_in_once_a_slot_frees(
    db: &Database,
    credentials: &Credentials,
    access: AccessLevel,
    params: &[(String, String)],
    refused: upstream::UpstreamError,
) -> Result<upstream::Upstream, upstream::UpstreamError> {
    let deadline = tokio::time::Instant::now() + PLACE_WAIT;
    let mut pause = std::time::Duration::from_millis(25);
    let mut last = Err(refused);
    while tokio::time::Instant::now() + pause < deadline {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(400));
        last = upstream::connect(db, credentials, access, params).await;
        match &last {
            Err(e) if e.role_at_its_limit() => {
                tracing::debug!("the database still counts the grant's role at its limit");
            }
            _ => break,
        }
    }
    last
}

/// Logs in on a connection dialed during the login. It is dialed again when it is no
/// longer the database's as configured, when dialing failed fast (refused, reset: the
/// server may have been restarting), when the server closed it before the login (its
/// own login timeout), or answered it was starting up: the early dial saves time, it never
/// costs a login. A timeout, a TLS failure or a refused login is the login's answer, as it
/// would be without the early dial.
async fn login_on_early_dial(
    dial: EarlyDial,
    db: &Database,
    credentials: &Credentials,
    access: AccessLevel,
    params: &[(String, String)],
) -> Result<upstream::Upstream, upstream::UpstreamError> {
    use upstream::UpstreamError;
    let again = || upstream::connect(db, credentials, access, params);
    let stream = match dial.stream(&upstream::DialTarget::of(db)).await {
        Ok(stream) => stream,
        Err(EarlyDialError::Stale) => return again().await,
        Err(EarlyDialError::Dial(e @ (UpstreamError::Connect { .. } | UpstreamError::Io(_)))) => {
            tracing::debug!(error = %e, "early upstream dial failed; dialing again");
            return again().await;
        }
        Err(EarlyDialError::Dial(e)) => return Err(e),
    };
    match upstream::login_on(stream, db, credentials, access, params).await {
        Err(e @ (UpstreamError::Closed | UpstreamError::Io(_))) => {
            tracing::debug!(error = %e, "early upstream connection closed; dialing again");
            again().await
        }
        // Dialed while the server was starting up, which it may be done with now.
        Err(e @ UpstreamError::Rejected { .. }) if e.sqlstate() == Some("57P03") => {
            tracing::debug!(error = %e, "early upstream connection refused at startup; dialing again");
            again().await
        }
        done => done,
    }
}

/// Logs the grant's next session's backend in, as its own task (the session does not wait
/// for it), on `early` when this session left it unused.
fn open_spare(
    reservation: Reservation,
    db: &Database,
    credentials: &Credentials,
    access: AccessLevel,
    params: &[(String, String)],
    early: Option<EarlyDial>,
) {
    let (db, credentials, params) = (db.clone(), credentials.clone(), params.to_vec());
    let login = async move {
        match early {
            Some(dial) => login_on_early_dial(dial, &db, &credentials, access, &params).await,
            None => upstream::connect(&db, &credentials, access, &params).await,
        }
    };
    tokio::spawn(
        async move {
            match tokio::time::timeout(SPARE_LOGIN_TIMEOUT, login).await {
                Ok(Ok(upstream)) => reservation.fill(upstream),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "spare backend's login failed");
                    reservation.failed();
                }
                Err(_) => {
                    tracing::debug!("spare backend's login timed out");
                    reservation.failed();
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
}
