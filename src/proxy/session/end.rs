//! The end of an admitted session: why it ended, for the record (the `disconnected` or
//! `dropped_*` record rides the next write, since it gates nothing). The upstream query of
//! a session the proxy ended is cancelled by its `Aftermath`. Also the record of a failed
//! login.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::audit::{AuditError, AuditEvent, AuditLog, SessionEvent, SessionFields, SessionRecord};
use crate::ids::{RequestId, SessionId};
use crate::policy::{Request, RequestStatus};
use crate::proxy::registry::DropReason;
use crate::proxy::relay::End;
use crate::proxy::Proxy;
use crate::store::Store;
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
        | End::NoRoomForMessage(_)
        | End::UnsafeSetting(_)
        | End::LostTrack(_)
        | End::CodeUnreadable(_)
        | End::AuditFailed => true,
        End::ClientGone | End::ClientLeftThenServerClosed | End::UpstreamGone => false,
    }
}

/// How long a session's end waits to learn from the state store whether its grant ended
/// under it; the end is recorded either way.
const GRANT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whose end a closed upstream connection was. A grant revoked or cancelled, on this node
/// or another, has its role dropped, which ends the role's backends, and that may reach a
/// session before the news itself does: the session would then record the server's end,
/// not the grant's. The state store says which it was; one that cannot answer leaves the
/// server's.
pub(super) async fn whose_end(store: &Store, id: &RequestId, end: End) -> End {
    if !the_server_ended(&end) {
        return end;
    }
    let closed_at = Utc::now();
    match read_grant(store, id).await {
        Some(request) => grant_ended_by(&request, closed_at).map_or(end, End::Dropped),
        None => end,
    }
}

/// The grant `id` as the store holds it now, if the store answers within
/// [`GRANT_CHECK_TIMEOUT`].
async fn read_grant(store: &Store, id: &RequestId) -> Option<Request> {
    match tokio::time::timeout(GRANT_CHECK_TIMEOUT, store.get(id)).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot read the grant of an ended session");
            None
        }
        Err(_) => None,
    }
}

/// Whether the server closed the connection, so its backend is gone, whoever ended it.
pub(super) fn the_server_ended(end: &End) -> bool {
    matches!(end, End::UpstreamGone | End::ClientLeftThenServerClosed)
}

/// How an expired session's grant ends its role, if it does: `Some(Some(end))` when the
/// window ending at `end` is over, `Some(None)` when the grant was withdrawn meanwhile
/// (for good), `None` when it goes on. A session that expired may have reached only the
/// end of its token, which is where the window ended when the token was issued, while the
/// grant was extended since; or an extension approved as the window ended may not have
/// reached it in time. The grant is read again from the store (bounded) for that; the
/// window the session was admitted in stands in when the store cannot answer.
pub(super) async fn role_end_of_expired(
    store: &Store,
    admitted: &Request,
) -> Option<Option<DateTime<Utc>>> {
    let fresh = read_grant(store, &admitted.id).await;
    let request = fresh.as_ref().unwrap_or(admitted);
    if withdrawn(request) {
        return Some(None);
    }
    window_over(request, Utc::now()).map(Some)
}

/// Whether `request` was revoked or cancelled: its sessions end as revoked (as the
/// cluster's recheck drops them) and its role for good.
fn withdrawn(request: &Request) -> bool {
    matches!(
        request.status,
        RequestStatus::Revoked | RequestStatus::Cancelled
    )
}

/// `request`'s window end, if it is over at `now`.
fn window_over(request: &Request, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // The session's timer runs on the monotonic clock, which may drift a little from the
    // wall clock the window's end is counted on.
    const DRIFT: chrono::TimeDelta = chrono::TimeDelta::seconds(1);
    request.access_expires_at.filter(|end| *end <= now + DRIFT)
}

/// Why `request`'s grant was over when its server closed at `at` (read just after), if it
/// was: withdrawn (revoked or cancelled) by the time it is read, or its window over. The
/// time a node stamped on a withdrawal is not compared with `at`: another node's clock may
/// be ahead by more than the few milliseconds between the withdrawal and the close it
/// brings, and a withdrawal found in the read that follows the close came with it. The
/// window's end is compared exactly: a close just before it (an administrator's
/// `pg_terminate_backend`) is not the window's end, and the session's own timer ends it
/// at the end itself.
fn grant_ended_by(request: &Request, at: DateTime<Utc>) -> Option<DropReason> {
    if withdrawn(request) {
        return Some(DropReason::Revoked);
    }
    request
        .access_expires_at
        .filter(|end| *end <= at)
        .map(|_| DropReason::Expired)
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
        End::NoRoomForMessage(n) => Some(n.describe()),
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
        End::Dropped(DropReason::Killed { why, .. }) => (SessionEvent::DroppedKilled, Some(&**why)),
        End::ClientGone => (SessionEvent::Disconnected, None),
        End::ClientLeftMidStatement => (
            SessionEvent::Disconnected,
            Some("client left while a statement ran; it was cancelled"),
        ),
        End::ClientLeftThenServerClosed => (
            SessionEvent::Disconnected,
            Some("client left while a statement ran; the server then closed the connection"),
        ),
        End::UpstreamGone => (
            SessionEvent::Disconnected,
            Some("upstream closed the connection"),
        ),
        End::ProtocolError(_)
        | End::MessageTooLarge(_)
        | End::NoRoomForMessage(_)
        | End::LostTrack(_) => (SessionEvent::Disconnected, detail.as_deref()),
        End::AuditFailed => (SessionEvent::Disconnected, Some("audit log unavailable")),
        End::UnsafeSetting(_) => (
            SessionEvent::Disconnected,
            Some("unsafe setting reported by the server"),
        ),
        End::RowLimit(_) => (SessionEvent::Disconnected, Some("row limit exceeded")),
        End::CodeUnreadable(_) => (SessionEvent::Disconnected, detail.as_deref()),
    };
    tracing::info!(request_id = %request_id, ?event, "session ended");
    // The end follows what already happened and gates nothing, so, like an outcome, its
    // record rides the next write and fsync instead of costing one of its own (in `fsync`
    // mode an fsync per connection). A failure to record it is logged by `append`.
    audit.append(vec![session_event(fields, event, reason)]);
}

/// Records that a session was admitted, before the client hears so. The `connected`
/// record is written to the file at once (a session whose start cannot be written is
/// refused) but not fsynced on its own: nothing runs upstream for the client before a record
/// of it is durable — its first statement's, or its Bind's — and that fsync covers this
/// earlier record too, so a connection costs no fsync of its own (`pgbench -C`: one per
/// connection, not two). A session that sends nothing has it on disk within
/// `sync_interval`. While the audit is failing the record is also waited for: that write
/// and sync is how the audit finds that it can write again.
pub(super) async fn record_connected(
    audit: &AuditLog,
    fields: &SessionFields,
) -> Result<(), AuditError> {
    let record = [session_event(fields, SessionEvent::Connected, None)];
    if audit.healthy() {
        return audit.append_written(&record).map(drop);
    }
    audit.append_durable_all(record.iter()).await.map(drop)
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration as Span;

    /// An approved grant of an hour that began ten minutes before `now`.
    fn grant(now: DateTime<Utc>) -> Request {
        let began = now - Span::minutes(10);
        serde_json::from_value(serde_json::json!({
            "id": "req-1", "engineer": "eve", "database": "sales", "ticket": "T-1",
            "reason": "debug", "access": "read", "duration_secs": 3600,
            "status": "active", "customer_required": 1,
            "created_at": began, "request_expires_at": began + Span::hours(12),
            "access_starts_at": began, "access_expires_at": began + Span::hours(1),
        }))
        .expect("a request")
    }

    #[test]
    fn a_grant_withdrawn_by_the_read_after_the_close_ended_the_session() {
        let now = Utc::now();
        // Stamped before the close, or after it by a node whose clock is ahead.
        for stamped in [now - Span::milliseconds(3), now + Span::seconds(30)] {
            for to in [RequestStatus::Revoked, RequestStatus::Cancelled] {
                let mut request = grant(now);
                request.transition(to, "carol", stamped, Some("done"));
                request.status = to;
                assert_eq!(
                    grant_ended_by(&request, now),
                    Some(DropReason::Revoked),
                    "{to:?} at {stamped}"
                );
            }
        }
    }

    #[test]
    fn a_window_is_over_at_its_end_not_at_an_earlier_tokens() {
        let now = Utc::now();
        let mut request = grant(now);
        assert_eq!(window_over(&request, now), None, "an hour to go");
        let end = now - Span::milliseconds(1);
        request.access_expires_at = Some(end);
        assert_eq!(window_over(&request, now), Some(end));
    }

    #[test]
    fn a_grant_that_stands_did_not_end_the_session() {
        let now = Utc::now();
        assert_eq!(grant_ended_by(&grant(now), now), None);
        let mut completed = grant(now);
        completed.status = RequestStatus::Completed;
        assert_eq!(grant_ended_by(&completed, now), None);
    }

    #[test]
    fn a_window_over_by_then_ended_the_session_and_one_about_to_end_did_not() {
        let now = Utc::now();
        let mut request = grant(now);
        request.access_expires_at = Some(now - Span::milliseconds(1));
        assert_eq!(grant_ended_by(&request, now), Some(DropReason::Expired));
        request.access_expires_at = Some(now + Span::seconds(3));
        assert_eq!(grant_ended_by(&request, now), None);
    }
}
