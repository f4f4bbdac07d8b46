//! The upstream login of an admitted session: the grant's role prepared, then a login on
//! the connection dialed early (see `early_dial`) or on a fresh one.

use super::PROVISION_TIMEOUT;
use crate::proxy::early_dial::{EarlyDial, EarlyDialError};
use crate::proxy::upstream;
use crate::wire::sqlstate;

/// Logs in upstream as the grant's role. A per-grant role whose password another proxy
/// reset since (it took the role over) is taken over again, once.
pub(super) async fn connect_upstream(
    lockbox: &crate::service::Lockbox,
    db: &crate::config::Database,
    request: &crate::policy::Request,
    params: &[(String, String)],
    mut early: Option<EarlyDial>,
) -> Result<(upstream::Upstream, crate::provision::Login), (&'static str, &'static str)> {
    let unreachable = (
        sqlstate::CONNECTION_FAILURE,
        "lockbox could not connect to the upstream database",
    );
    for attempt in 0..2 {
        // Bounded as a whole: preparing the grant's role runs queries on a service
        // connection, and a database that stalls after it answered the login would hold
        // the admission (and its client) for as long as it stalls.
        let prepared =
            tokio::time::timeout(PROVISION_TIMEOUT, lockbox.provisioner.login(db, request))
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
                return Err((sqlstate::INVALID_PASSWORD, "this access grant has ended"))
            }
            Err(e @ crate::provision::ProvisionError::Timeout { .. }) => {
                tracing::error!(error = %e, "cannot prepare the grant's upstream role");
                return Err((
                    sqlstate::CONNECTION_FAILURE,
                    "lockbox could not prepare the upstream role of this grant: the database did not answer in time",
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot prepare the grant's upstream role");
                return Err((
                    sqlstate::CONNECTION_FAILURE,
                    "lockbox could not prepare the upstream role of this grant",
                ));
            }
        };
        let connected = match early.take() {
            Some(dial) => login_on_early_dial(dial, db, &login, request, params).await,
            None => upstream::connect(db, &login.credentials, request.access, params).await,
        };
        match connected {
            Ok(u) => return Ok((u, login)),
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
                return Err((sqlstate::CONNECTION_FAILURE, e.client_message()));
            }
        }
    }
    Err(unreachable)
}

/// Logs in on a connection dialed during the login. It is dialed again when it is no
/// longer the database's as configured, when dialing failed fast (refused, reset: the
/// server may have been restarting), when the server closed it before the login (its
/// own login timeout), or answered it was starting up: the early dial saves time, it never
/// costs a login. A timeout, a TLS failure or a refused login is the login's answer, as it
/// would be without the early dial.
async fn login_on_early_dial(
    dial: EarlyDial,
    db: &crate::config::Database,
    login: &crate::provision::Login,
    request: &crate::policy::Request,
    params: &[(String, String)],
) -> Result<upstream::Upstream, upstream::UpstreamError> {
    use upstream::UpstreamError;
    let again = || upstream::connect(db, &login.credentials, request.access, params);
    let stream = match dial.stream(&upstream::DialTarget::of(db)).await {
        Ok(stream) => stream,
        Err(EarlyDialError::Stale) => return again().await,
        Err(EarlyDialError::Dial(e @ (UpstreamError::Connect { .. } | UpstreamError::Io(_)))) => {
            tracing::debug!(error = %e, "early upstream dial failed; dialing again");
            return again().await;
        }
        Err(EarlyDialError::Dial(e)) => return Err(e),
    };
    match upstream::login_on(stream, db, &login.credentials, request.access, params).await {
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
