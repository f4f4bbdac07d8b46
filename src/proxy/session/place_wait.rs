//! A grant's session limit at login: a login takes one of its grant's places (see
//! `places`), and one that finds every place taken waits a moment for one to be given back
//! before it is refused with 53300. Meanwhile it watches what would make the wait pointless:
//! its client leaving (a FIN or an RST: the relay, too, takes a FIN for the client's end),
//! and its session being told to end (a revocation, an operator's kill, a shutdown) — so it
//! neither counts among the grant's bounded waiting logins for nobody, nor takes the place
//! given back to log in upstream for a session that would end at once.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use tokio::sync::watch;

use super::login::refused_session;
use super::LoginError;
use crate::ids::{RequestId, SessionId};
use crate::policy::Admission;
use crate::proxy::hangup::{self, Hangup};
use crate::proxy::places::PLACE_WAIT;
use crate::proxy::registry::{Control, DropReason};
use crate::proxy::relay::{fatal_for, End};
use crate::proxy::Proxy;
use crate::wire::sqlstate;

/// How a wait for a place ended.
enum Waited {
    Took,
    /// The wait ran out: the places held then.
    Refused(u32),
    ClientLeft,
    Ended(DropReason),
}

/// A grant with a session limit has at most that many sessions here: a login takes one of
/// its places, waiting a moment for one to be given back. Across proxies the grant's role's
/// `CONNECTION LIMIT` holds the same number. A refusal is audited (`session_refused`), as
/// any refused use of a grant is, and is no failed login: the token held; so is a client
/// that left while its login waited (the grant was at its limit when it asked).
pub(super) async fn within_session_limit(
    proxy: &Proxy,
    (id, client_fd): (&SessionId, RawFd),
    peer: SocketAddr,
    admission: &Admission,
    control: &watch::Receiver<Control>,
) -> Result<(), LoginError> {
    let request = &admission.request;
    let Some(limit) = request.session_limit(proxy.lockbox.config().max_sessions_per_grant) else {
        return Ok(());
    };
    // A place free now costs no watch of the client (a `dup` and its registration).
    let Err(_) = proxy
        .registry
        .take_place(id, &request.id, limit, Duration::ZERO)
        .await
    else {
        return Ok(());
    };
    let (message, sqlstate) = match wait_for_place(proxy, id, &request.id, limit, client_fd, control).await {
        Waited::Took => return Ok(()),
        Waited::Ended(reason) => {
            tracing::info!(?reason, "session told to end while its login waited for a place");
            return Err(told_to_end(reason, &request.id));
        }
        Waited::ClientLeft => (
            format!("the client left while its login waited for a place: this access grant allows {limit} session(s) at once, all open"),
            sqlstate::CONNECTION_FAILURE,
        ),
        Waited::Refused(open) => (
            format!("too many sessions for this access grant: it allows {limit} at once ({open} open)"),
            sqlstate::TOO_MANY_CONNECTIONS,
        ),
    };
    tracing::info!(limit, reason = %message, "grant at its session limit");
    refused_session(proxy, id, peer, request, &message);
    Err(LoginError {
        sqlstate,
        message,
        audited: false,
    })
}

/// A login whose session was told to end before it logged in upstream (a revocation, an
/// operator's kill, a shutdown) is refused with the words its session would have ended
/// with, rather than log in upstream for a session that would end at once.
pub(super) fn told_to_end(reason: DropReason, request: &RequestId) -> LoginError {
    let (code, message) = fatal_for(&End::Dropped(reason), &request.0, false)
        .unwrap_or((sqlstate::ADMIN_SHUTDOWN, "lockbox ended the session".into()));
    LoginError {
        sqlstate: code,
        message,
        audited: false,
    }
}

/// Waits up to [`PLACE_WAIT`] for one of `request`'s `limit` places, unless the client
/// leaves or the session is told to end first. The place comes first when several happen
/// at once: a login that got its place goes on, and the relay sees the rest.
async fn wait_for_place(
    proxy: &Proxy,
    id: &SessionId,
    request: &RequestId,
    limit: u32,
    client_fd: RawFd,
    control: &watch::Receiver<Control>,
) -> Waited {
    let hangup = Hangup::watch(Some(client_fd));
    let mut control = control.clone();
    if let Control::Drop(reason) = &*control.borrow_and_update() {
        return Waited::Ended(reason.clone());
    }
    let wait = proxy.registry.take_place(id, request, limit, PLACE_WAIT);
    tokio::pin!(wait);
    // The registry holds the sender for as long as the session is registered, which
    // outlasts its login; should it not, nothing more can come through it.
    let mut told = true;
    loop {
        tokio::select! {
            biased;
            taken = &mut wait => {
                return match taken {
                    Ok(()) => Waited::Took,
                    Err(open) => Waited::Refused(open),
                };
            }
            () = hangup::hung_up(&hangup) => return Waited::ClientLeft,
            changed = control.changed(), if told => {
                if changed.is_err() {
                    told = false;
                    continue;
                }
                if let Control::Drop(reason) = &*control.borrow_and_update() {
                    return Waited::Ended(reason.clone());
                }
            }
        }
    }
}
