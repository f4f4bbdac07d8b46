//! The end of an admitted session: why it ended, for the record (the `disconnected` or
//! `dropped_*` record rides the next write, since it gates nothing). The upstream query of
//! a session the proxy ended is cancelled by its `Aftermath`. Also the record of a failed
//! login.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::audit::{AuditEvent, SessionEvent, SessionFields, SessionRecord};
use crate::ids::{RequestId, SessionId};
use crate::proxy::registry::DropReason;
use crate::proxy::relay::End;
use crate::proxy::Proxy;
use crate::wire::Startup;

/// The proxy ended the session itself, so the backend may be mid-query: it is cancelled,
/// and reaped if it does not go. Every end but the client's own between statements and the
/// server's: a client that ends its session with a bad message mid-statement must not leave
/// a procedure running unwatched past its grant (the Terminate sent upstream is read only
/// once the statement is over).
pub(super) fn ended_by_proxy(end: &End) -> bool {
    match end {
        End::Dropped(_)
        | End::RowLimit(_)
        | End::ClientLeftMidStatement
        | End::ProtocolError(_)
        | End::MessageTooLarge(_)
        | End::UnsafeSetting(_)
        | End::LostTrack(_)
        | End::AuditFailed => true,
        End::ClientGone | End::UpstreamGone => false,
    }
}

pub(super) fn finish(
    audit: &crate::audit::AuditLog,
    fields: &Arc<SessionFields>,
    request_id: &RequestId,
    end: &End,
) {
    // Why a client message ended the session, for the record; "disconnected" alone hides it.
    let detail = match end {
        End::MessageTooLarge(o) => Some(o.describe()),
        End::ProtocolError(m) => Some(format!("client protocol violation: {m}")),
        End::LostTrack(m) => Some(format!("lockbox lost track of the server's replies: {m}")),
        _ => None,
    };
    let (event, reason) = match end {
        End::Dropped(DropReason::Expired) => {
            (SessionEvent::DroppedExpired, Some("access window ended"))
        }
        End::Dropped(DropReason::Revoked) => {
            (SessionEvent::DroppedRevoked, Some("request revoked"))
        }
        End::Dropped(DropReason::Shutdown) => {
            (SessionEvent::DroppedShutdown, Some("proxy shutting down"))
        }
        End::Dropped(DropReason::Killed(why)) => (SessionEvent::DroppedKilled, Some(&**why)),
        End::ClientGone => (SessionEvent::Disconnected, None),
        End::ClientLeftMidStatement => (
            SessionEvent::Disconnected,
            Some("client left while a statement ran; it was cancelled"),
        ),
        End::UpstreamGone => (
            SessionEvent::Disconnected,
            Some("upstream closed the connection"),
        ),
        End::ProtocolError(_) | End::MessageTooLarge(_) | End::LostTrack(_) => {
            (SessionEvent::Disconnected, detail.as_deref())
        }
        End::AuditFailed => (SessionEvent::Disconnected, Some("audit log unavailable")),
        End::UnsafeSetting(_) => (
            SessionEvent::Disconnected,
            Some("unsafe setting reported by the server"),
        ),
        End::RowLimit(_) => (SessionEvent::Disconnected, Some("row limit exceeded")),
    };
    tracing::info!(request_id = %request_id, ?event, "session ended");
    // The end follows what already happened and gates nothing, so, like an outcome, its
    // record rides the next write and fsync instead of costing one of its own (in `fsync`
    // mode an fsync per connection). A failure to record it is logged by `append`.
    audit.append(vec![session_event(fields, event, reason)]);
}

pub(super) fn session_event(
    fields: &SessionFields,
    event: SessionEvent,
    reason: Option<&str>,
) -> AuditEvent {
    AuditEvent::Session(session_record(fields, event, reason))
}

/// A session record of an admitted session.
pub(in crate::proxy) fn session_record(
    fields: &SessionFields,
    event: SessionEvent,
    reason: Option<&str>,
) -> SessionRecord {
    SessionRecord {
        event,
        session_id: fields.session_id.clone(),
        client_addr: fields.client_addr.clone(),
        engineer: Some(fields.engineer.clone()),
        database: Some(fields.database.clone()),
        request_id: Some(fields.request_id.clone()),
        ticket: Some(fields.ticket.clone()),
        reason: reason.map(str::to_owned),
        backend_pid: None,
        break_glass: fields.break_glass,
    }
}

pub(in crate::proxy) fn audit_auth_failure(
    proxy: &Proxy,
    id: &SessionId,
    peer: SocketAddr,
    startup: &Startup,
    reason: &str,
) {
    proxy
        .lockbox
        .audit
        .append(vec![AuditEvent::Session(SessionRecord {
            event: SessionEvent::AuthenticationFailed,
            session_id: id.0.clone(),
            client_addr: peer.to_string(),
            engineer: startup.get("user").map(str::to_owned),
            database: startup.get("database").map(str::to_owned),
            request_id: None,
            ticket: None,
            reason: Some(reason.to_owned()),
            backend_pid: None,
            break_glass: false,
        })]);
}
