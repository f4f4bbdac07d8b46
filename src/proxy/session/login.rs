//! A connection's login, split where the client stops being anonymous: `read_token` (the
//! startup packet to the password message, bounded by `PREAUTH_TIMEOUT`) and `admit_token`
//! (verification, the failed-login limit, admission).

use std::net::SocketAddr;
use std::os::fd::RawFd;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::place_wait::{told_to_end, within_session_limit};
use super::{audit_auth_failure, login_error, Claimed, KillSwitch, LoginError};
use crate::audit::{AuditEvent, SessionEvent, SessionRecord};
use crate::ids::{RequestId, SessionId};
use crate::policy::Admission;
use crate::proxy::early_dial::{Claim, EarlyDial, EarlyDialPolicy};
use crate::proxy::preauth;
use crate::proxy::registry::Control;
use crate::proxy::stream::BoxStream;
use crate::proxy::upstream::DialTarget;
use crate::proxy::Proxy;
use crate::service::AdmitError;
use crate::wire::{self, sqlstate, Startup};

/// Startup parameters refused outright (the rest are passed upstream or dropped, see
/// `PASSED_PARAMETERS`).
const REFUSED_PARAMETERS: &[&str] = &[
    "options",
    "replication",
    // Settings that would change the session's identity, its read-only state, its limits,
    // or how the server reads query text.
    "role",
    "session_authorization",
    "default_transaction_read_only",
    "transaction_read_only",
    "statement_timeout",
    "standard_conforming_strings",
    "backslash_quote",
    "search_path",
];

/// A connection that sent no token within `PREAUTH_TIMEOUT` counts as a failed login of
/// its source (audited like one while the source is under its limit): holding a slot
/// without a credential is what a flood of silent sockets does.
pub(super) fn pre_auth_timed_out(
    proxy: &Proxy,
    id: &SessionId,
    peer: SocketAddr,
    startup: &Startup,
) {
    if proxy.failed_login(peer.ip()) {
        let reason = format!(
            "no token within {}",
            humantime::format_duration(preauth::PREAUTH_TIMEOUT)
        );
        audit_auth_failure(proxy, id, peer, startup, &reason);
    }
}

/// Whether a token may come over this connection: TLS, or plaintext from loopback where
/// `allow_plaintext_loopback` says so.
pub(super) fn takes_tokens_over(proxy: &Proxy, tls: bool, peer: SocketAddr) -> bool {
    tls || (proxy.lockbox.config().allow_plaintext_loopback && peer.ip().is_loopback())
}

/// StartupMessage to the password message: everything an unauthenticated client controls.
pub(super) async fn read_token(
    proxy: &Proxy,
    stream: &mut BoxStream,
    tls: bool,
    peer: SocketAddr,
    startup: &Startup,
    buf: &mut BytesMut,
    early: &mut Option<EarlyDial>,
) -> Result<(Claimed, String), LoginError> {
    let claimed = check_startup(startup)?;
    if !takes_tokens_over(proxy, tls, peer) {
        return Err(login_error(
            sqlstate::INVALID_AUTHORIZATION,
            "lockbox tokens are only accepted over TLS: connect with sslmode=verify-full sslrootcert=<the CA of the proxy's certificate>",
        ));
    }
    // A source admitted lately has its upstream dialed now, to overlap the database's
    // connection setup with the rest of the login (see `early_dial`).
    *early = dial_if_trusted(proxy, peer, &claimed);
    let mut out = BytesMut::new();
    if let Some(unrecognized) = startup.unrecognized_options() {
        wire::negotiate_protocol_version(&mut out, &unrecognized);
    }
    wire::authentication_cleartext(&mut out);
    write(stream, &out).await?;
    let token = read_password(stream, buf).await?;
    Ok((claimed, token))
}

/// The token to admission. A source past its failed-login limit is refused only when its
/// token does not even verify (a signature check, no I/O): garbage from an address never
/// locks out a valid token from the same NAT, VPN or bastion.
pub(super) async fn admit_token(
    proxy: &Proxy,
    (id, client_fd): (&SessionId, RawFd),
    peer: SocketAddr,
    claimed: Claimed,
    token: &str,
    early: &mut Option<EarlyDial>,
) -> Result<(Admission, Claimed, KillSwitch), LoginError> {
    let claims = match proxy.lockbox.tokens.verify(token) {
        Ok(claims) => claims,
        Err(e) => return Err(refused_token(proxy, peer, &e)),
    };
    // Only lockbox mints a token that verifies: its upstream is dialed while the store
    // says whether it is admitted. Not for a token presented for another user or database
    // (refused below), nor from a source past its failed-login limit.
    let limits = proxy.lockbox.config().connection_limits;
    if early.is_none()
        && proxy.lockbox.config().early_dial != EarlyDialPolicy::Off
        && claims.db == claimed.database
        && claims.sub == claimed.user
        && !proxy.registry.gate.is_blocked(peer.ip(), &limits)
    {
        *early = dial_for(proxy, peer, &claims.db);
    }
    // Registered before the store is read: a revocation from here on reaches this session
    // even while it is still logging in upstream.
    let kill = proxy.registry.register(id, &RequestId(claims.rid.clone()));
    let admission = proxy
        .lockbox
        .admit(&claims, &claimed.user, &claimed.database)
        .await
        .map_err(|e| match e {
            AdmitError::Refused(r) => {
                login_error(r.sqlstate(), format!("lockbox token refused: {r}"))
            }
            // Fail closed: without the state store there is no way to know the grant holds.
            AdmitError::Store(e) => {
                tracing::error!(error = %e, "state store unavailable during login");
                LoginError {
                    sqlstate: sqlstate::CONNECTION_FAILURE,
                    message: "lockbox cannot verify the access request right now: its state store is unavailable".into(),
                    audited: false,
                }
            }
        })?;
    within_session_limit(proxy, (id, client_fd), peer, &admission, &kill).await?;
    // Told to end during the admission (a revocation, a kill, a shutdown): no upstream login
    // for a session that would end at once.
    let told = match &*kill.borrow() {
        Control::Drop(reason) => Some(reason.clone()),
        _ => None,
    };
    if let Some(reason) = told {
        tracing::info!(?reason, "session told to end during its login");
        return Err(told_to_end(reason, &admission.request.id));
    }
    Ok((admission, claimed, kill))
}

/// Records a login of a valid grant refused for its session limit: by this proxy, or by
/// the database for the grant's role (another proxy's sessions, a backend still exiting).
pub(super) fn refused_session(
    proxy: &Proxy,
    id: &SessionId,
    peer: SocketAddr,
    request: &crate::policy::Request,
    reason: &str,
) {
    proxy
        .lockbox
        .audit
        .append(vec![AuditEvent::Session(SessionRecord {
            event: SessionEvent::SessionRefused,
            session_id: id.0.clone(),
            client_addr: peer.to_string(),
            engineer: Some(request.engineer.clone()),
            database: Some(request.database.clone()),
            request_id: Some(request.id.0.clone()),
            ticket: Some(request.ticket.clone()),
            reason: Some(reason.to_owned()),
            backend_pid: None,
            break_glass: request.break_glass,
        })]);
}

/// A connection from a source admitted lately (see `early_dial`) has its upstream dialed
/// once its startup passed the checks, if the source has a startup dial free.
fn dial_if_trusted(proxy: &Proxy, peer: SocketAddr, claimed: &Claimed) -> Option<EarlyDial> {
    let config = proxy.lockbox.config();
    if config.early_dial != EarlyDialPolicy::Trusted {
        return None;
    }
    let target = DialTarget::of(config.databases.get(&claimed.database)?);
    let claim = proxy.registry.trusted.claim(peer.ip())?;
    // Past the proxy's cap on early dials, the claim goes back (see `EarlyDial::start`).
    start_dial(proxy, peer, target, Some(claim))
}

/// Starts dialing the upstream of `database`, when the proxy serves it.
fn dial_for(proxy: &Proxy, peer: SocketAddr, database: &str) -> Option<EarlyDial> {
    let target = DialTarget::of(proxy.lockbox.config().databases.get(database)?);
    start_dial(proxy, peer, target, None)
}

fn start_dial(
    proxy: &Proxy,
    peer: SocketAddr,
    target: DialTarget,
    on_trust: Option<Claim>,
) -> Option<EarlyDial> {
    EarlyDial::start(
        target,
        peer.ip(),
        on_trust,
        proxy.registry.clone(),
        proxy.lockbox.audit.metrics().clone(),
    )
}

/// The error for a token that does not verify: 08004 (counted, not audited one by one)
/// when its source is past its failed-login limit, else an audited failure.
fn refused_token(proxy: &Proxy, peer: SocketAddr, e: &crate::token::TokenError) -> LoginError {
    let limits = proxy.lockbox.config().connection_limits;
    if proxy.registry.gate.blocked(peer.ip(), &limits) {
        let metrics = proxy.lockbox.audit.metrics();
        metrics.failed_login_unrecorded();
        metrics.refused(crate::metrics::Refused::FailedLoginLimit);
        return LoginError {
            sqlstate: crate::proxy::REJECTED_ESTABLISHMENT,
            message: "too many failed logins from this address: try again later".into(),
            audited: false,
        };
    }
    login_error(
        sqlstate::INVALID_PASSWORD,
        format!("lockbox token refused: {e}"),
    )
}

fn check_startup(startup: &Startup) -> Result<Claimed, LoginError> {
    // Setting names are case-insensitive to PostgreSQL (only `user`, `database`, `options`
    // and `replication` are not, and refusing those in any case costs nothing).
    for name in REFUSED_PARAMETERS {
        if startup
            .params
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            return Err(login_error(
                sqlstate::INVALID_AUTHORIZATION,
                format!("startup parameter \"{name}\" is not allowed through lockbox"),
            ));
        }
    }
    if let Some(encoding) = startup.get("client_encoding") {
        if !crate::guard::client_encoding_is_safe(encoding) {
            return Err(login_error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "client_encoding \"{encoding}\" is not supported through lockbox: use UTF8"
                ),
            ));
        }
    }
    let user = startup.get("user").filter(|u| !u.is_empty());
    let database = startup.get("database").filter(|d| !d.is_empty());
    match (user, database) {
        (Some(user), Some(database)) => Ok(Claimed {
            user: user.to_owned(),
            database: database.to_owned(),
        }),
        (None, _) => Err(login_error(
            sqlstate::INVALID_AUTHORIZATION,
            "no user name in the startup packet",
        )),
        (_, None) => Err(login_error(
            sqlstate::INVALID_AUTHORIZATION,
            "no database name in the startup packet: lockbox never picks one for you",
        )),
    }
}

async fn read_password(stream: &mut BoxStream, buf: &mut BytesMut) -> Result<String, LoginError> {
    loop {
        let frame = wire::split_frame(buf, wire::MAX_STARTUP_PACKET)
            .map_err(|e| login_error(sqlstate::PROTOCOL_VIOLATION, e.to_string()))?;
        if let Some(frame) = frame {
            if frame[0] != b'p' {
                return Err(login_error(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!(
                        "expected a password message, got message type '{}'",
                        char::from(frame[0])
                    ),
                ));
            }
            return wire::decode_password(&frame[5..])
                .map_err(|e| login_error(sqlstate::PROTOCOL_VIOLATION, e.to_string()));
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => {
                return Err(LoginError {
                    sqlstate: sqlstate::PROTOCOL_VIOLATION,
                    message: "client closed the connection before sending a token".into(),
                    audited: false,
                })
            }
            Ok(_) => {}
        }
    }
}

async fn write(stream: &mut BoxStream, bytes: &[u8]) -> Result<(), LoginError> {
    crate::proxy::relay::write_flushed(stream, bytes)
        .await
        .map_err(|e| LoginError {
            sqlstate: sqlstate::CONNECTION_FAILURE,
            message: e.to_string(),
            audited: false,
        })
}
