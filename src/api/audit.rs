//! `/v1/audit`: the trail for auditors and approvers, page by page, and live as a
//! server-sent-events stream (so an approver can watch an active session).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{SinkExt, Stream, StreamExt};

use super::{ApiError, ApiState, Caller};
use crate::audit::source::TrailSource;
use crate::audit::tail::Tail;
use crate::audit::AuditQuery;
use crate::policy;
use crate::service::ServiceError;

/// Records per page unless the caller asks for fewer.
pub const DEFAULT_PAGE: usize = 1000;
/// Most records one page may hold.
pub const MAX_PAGE: usize = 10_000;

/// How often a stream with nothing to send checks that its client is still there.
const IDLE_CHECK: Duration = Duration::from_secs(15);

/// One page of matching records, oldest first. When the page is full, a
/// `Link: <…after_seq=N…>; rel="next"` header points at the next one.
pub async fn list(
    State(state): State<ApiState>,
    Caller(user): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let within = policy::audit_scope(&state.lockbox.config(), &user).map_err(ServiceError::from)?;
    let mut query = audit_query(raw)?;
    query.within = within;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    query.limit = Some(limit);
    // The whole fleet's trail from the audit database when the sink is configured.
    let source = TrailSource::of(&state.lockbox.config(), state.lockbox.audit.path());
    let records = source
        .page(query.clone())
        .await
        .map_err(ServiceError::from)?;
    let last = records.last().filter(|_| records.len() == limit);
    let next = last.and_then(|r| r.get("seq")).and_then(|s| s.as_u64());
    let next_node = last
        .filter(|_| source.is_fleet())
        .and_then(|r| r.get("node"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let mut response = Json(&records).into_response();
    if let Some(after) = next {
        let mut next_query = query;
        next_query.after_seq = Some(after);
        next_query.after_node = next_node;
        let link = serde_urlencoded::to_string(&next_query)
            .ok()
            .and_then(|q| HeaderValue::from_str(&format!("</v1/audit?{q}>; rel=\"next\"")).ok());
        if let Some(link) = link {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

/// Live records matching the filters, from `after_seq` (or the `Last-Event-ID` a
/// reconnecting client sends) onwards; each event's id is the record's `seq`.
pub async fn stream(
    State(state): State<ApiState>,
    Caller(user): Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let within = policy::audit_scope(&state.lockbox.config(), &user).map_err(ServiceError::from)?;
    let query = AuditQuery {
        within,
        ..audit_query(raw)?
    };
    Ok(live(state, &user.name, resume_point(&headers, query)))
}

/// The live stream of one request's records.
pub async fn request_stream(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    request_live(state, &user, id, &headers, raw)
}

/// The live stream of request `id`'s records for `user`, who must be allowed to read the
/// trail: the API's route and the admin center's request page both serve it.
pub(crate) fn request_live(
    state: ApiState,
    user: &crate::config::User,
    id: String,
    headers: &HeaderMap,
    raw: Option<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let within = policy::audit_scope(&state.lockbox.config(), user).map_err(ServiceError::from)?;
    let query = AuditQuery {
        request: Some(id),
        within,
        ..audit_query(raw)?
    };
    Ok(live(state, &user.name, resume_point(headers, query)))
}

/// The filters of a query string; a time, kind or outcome no record can match is a 400
/// `invalid` naming the accepted values, never an empty answer.
fn audit_query(raw: Option<String>) -> Result<AuditQuery, ApiError> {
    let query: AuditQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| super::bad_request(e.to_string()))?;
    query
        .validate()
        .map_err(|e| super::bad_request(e.to_string()))?;
    Ok(query)
}

fn resume_point(headers: &HeaderMap, mut query: AuditQuery) -> AuditQuery {
    let last_event = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if last_event.is_some() {
        query.after_seq = last_event;
    }
    query.limit = None;
    query
}

fn live(
    state: ApiState,
    caller: &str,
    query: AuditQuery,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = futures::channel::mpsc::channel::<Event>(256);
    tokio::spawn(follow(state, caller.to_owned(), query, tx));
    Sse::new(rx.map(Ok)).keep_alive(KeepAlive::default())
}

/// Sends matching records as they are written, until the client goes away or the server
/// stops. Reading happens on the blocking pool; waiting costs nothing until the writer
/// announces new records.
async fn follow(
    state: ApiState,
    caller: String,
    mut query: AuditQuery,
    mut tx: futures::channel::mpsc::Sender<Event>,
) {
    let mut written = state.lockbox.audit.subscribe();
    let mut shutdown = state.shutdown.clone();
    let mut tail = Tail::new(state.lockbox.audit.path(), query.after_seq);
    loop {
        written.mark_unchanged();
        let read = tokio::task::spawn_blocking(move || {
            let records = tail.read_new();
            (tail, records)
        })
        .await;
        let Ok((returned, records)) = read else {
            return;
        };
        tail = returned;
        match records {
            Ok(records) => {
                // What the caller may read is taken again for every batch: a reload that
                // narrows it (an approver no longer of a database) or takes it away (the
                // role, the user) reaches a stream opened before.
                let config = state.lockbox.config();
                let scope = config
                    .users
                    .iter()
                    .find(|u| u.name == caller)
                    .map(|user| policy::audit_scope(&config, user));
                match scope {
                    Some(Ok(within)) => query.within = within,
                    _ => return,
                }
                for record in records.iter().filter(|r| query.matches(r)) {
                    let id = record.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
                    let event = Event::default().id(id.to_string()).data(record.to_string());
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit stream could not read the trail");
                let _ = tx
                    .send(
                        Event::default()
                            .event("error")
                            .data("the audit trail cannot be read"),
                    )
                    .await;
                return;
            }
        }
        tokio::select! {
            changed = written.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(IDLE_CHECK) => if tx.is_closed() { return },
        }
    }
}

impl ApiError {
    pub fn internal(message: String) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message,
        }
    }
}
