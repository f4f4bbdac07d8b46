//! The operations surface of the API: `GET /metrics` (Prometheus text), live sessions
//! (`/v1/sessions`, `/v1/sessions/{id}/kill`) and the access log, one line per API call.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, Caller};
use crate::config::Role;
use crate::ids::SessionId;
use crate::metrics::Scrape;
use crate::proxy::SessionInfo;
use crate::service::KillError;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{id}/kill", post(kill_session))
}

/// Body of `POST /v1/sessions/{id}/kill`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Kill {
    pub reason: String,
}

/// The Prometheus content type of the text exposition format.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Metrics name databases, users' activity and rates: readable with the API key of an
/// admin or an auditor (Prometheus sends it with `authorization: {credentials: …}`).
async fn metrics(State(state): State<ApiState>, Caller(user): Caller) -> Response {
    if !(user.has(Role::Admin) || user.has(Role::Auditor)) {
        return ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: format!(
                "{} may not read metrics: it needs the admin or auditor role",
                user.name
            ),
        }
        .into_response();
    }
    let lockbox = &state.lockbox;
    let config = lockbox.config();
    let databases = state.probes.check(&config).await;
    let scrape = Scrape {
        connections: state.registry.gate.open(),
        farewells: state.registry.gate.farewells(),
        logins_waiting_for_place: state.registry.logins_waiting_for_place(),
        message_memory: state.registry.message_memory.held(),
        thread_sessions: state
            .registry
            .thread_sessions
            .get()
            .map(|live| {
                live.iter()
                    .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
                    .collect()
            })
            .unwrap_or_default(),
        audit_healthy: lockbox.audit.healthy(),
        sink: state.audit_sink.as_ref().map(|s| {
            let h = s.health();
            (h.written_seq, h.shipped_seq)
        }),
        pending_notifications: pending_notifications(&lockbox.store).await,
        databases: databases
            .iter()
            .map(|d| (d.name.clone(), d.reachable()))
            .collect(),
    };
    let text = lockbox.audit.metrics().render(&scrape);
    ([(header::CONTENT_TYPE, EXPOSITION)], text).into_response()
}

/// Deliveries still to be made (none counted if the state store cannot say).
pub(crate) async fn pending_notifications(store: &crate::store::Store) -> Option<u64> {
    let count = crate::notify::outbox::pending_count(store).await;
    count.ok().and_then(|n| u64::try_from(n).ok())
}

/// Every node's live sessions the caller may see (`Lockbox::list_fleet_sessions`). Where
/// only this node's could be listed, [`super::INCOMPLETE_HEADER`] says why.
async fn list_sessions(State(state): State<ApiState>, Caller(user): Caller) -> Response {
    let (list, partial) = state
        .lockbox
        .list_fleet_sessions(&user, &state.registry)
        .await;
    let mut response = Json(list).into_response();
    if let Some(why) = partial {
        // A header holds visible ASCII only; the error's text may hold more.
        let why: String = why
            .chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(value) = header::HeaderValue::from_str(&why) {
            response
                .headers_mut()
                .insert(super::INCOMPLETE_HEADER, value);
        }
    }
    response
}

async fn kill_session(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    Json(kill): Json<Kill>,
) -> Result<Json<SessionInfo>, ApiError> {
    state
        .lockbox
        .kill_session(&user, &state.registry, &SessionId(id), &kill.reason)
        .await
        .map(Json)
        .map_err(|e| match e {
            KillError::Service(e) => ApiError::from(e),
            KillError::NotLive(_) => ApiError {
                status: StatusCode::NOT_FOUND,
                code: "not_found",
                message: e.to_string(),
            },
        })
}

/// Where the `Caller` extractor leaves the caller's name for the access log line.
#[derive(Clone, Default)]
pub(crate) struct CallerSlot(Arc<Mutex<Option<String>>>);

impl CallerSlot {
    pub(crate) fn set(&self, name: &str) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(name.to_owned());
    }

    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// One line per API call: method, matched route (the template, so ids and query strings,
/// which may carry values, stay out), status, caller and duration. Headers are never
/// logged: `Authorization` carries the API key, and a token response its token.
pub(super) async fn access_log(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let slot = CallerSlot::default();
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.lockbox.audit.metrics().api_call(status);
    let caller = slot.take();
    tracing::info!(
        target: "lockbox::api::access",
        method = %method,
        route = %route,
        status,
        caller = caller.as_deref().unwrap_or("-"),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "api call"
    );
    response
}
