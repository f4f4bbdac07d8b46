//! The control-plane HTTP API. Callers authenticate with their API key
//! (`Authorization: Bearer …`); errors are JSON with a stable `code` and a `message`.
//! This module knows HTTP and the service, never sockets of the data plane.

use std::sync::Arc;

mod admin;
pub use admin::PolicyChange;
mod audit;
pub(crate) use audit::request_live;
pub use audit::{DEFAULT_PAGE, MAX_PAGE};

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::config::User;
use crate::ids::RequestId;
use crate::policy::{NewRequest, PolicyError, Request, RequestStatus};
use crate::proxy::Registry;
use crate::service::{Lockbox, ServiceError};

mod cluster;
mod exports;
mod ops;
mod rejections;
pub(crate) use ops::pending_notifications;
pub(crate) use ops::CallerSlot;
pub use ops::Kill;

#[derive(Clone)]
pub struct ApiState {
    pub lockbox: Arc<Lockbox>,
    pub registry: Arc<Registry>,
    /// Turns true when the server stops (ends live streams so shutdown can finish).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub exports: Arc<crate::exports::Exports>,
    /// The PostgreSQL audit sink's status, when one runs.
    pub audit_sink: Option<Arc<crate::audit::pg_sink::SinkStatus>>,
    /// Databases' reachability, probed at most every few seconds.
    pub probes: Arc<crate::health::Probes>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/health", get(health))
        .route("/v1/whoami", get(whoami))
        .route("/v1/requests", post(create_request).get(list_requests))
        .route("/v1/requests/{id}", get(show_request))
        .route("/v1/requests/{id}/approve", post(approve))
        .route("/v1/requests/{id}/deny", post(deny))
        .route("/v1/requests/{id}/revoke", post(revoke))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/requests/{id}/extend", post(extend))
        .route("/v1/requests/{id}/acknowledge", post(acknowledge))
        .route("/v1/policy", get(admin::show_policy).put(admin::set_policy))
        .route("/v1/admin/reload", post(admin::reload))
        .route("/v1/notifications", get(admin::notifications))
        .route("/v1/requests/{id}/token", post(token))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/stream", get(audit::stream))
        .route("/v1/requests/{id}/audit/stream", get(audit::request_stream))
        .merge(exports::routes())
        .merge(ops::routes())
        .merge(crate::web::routes(&state))
        .merge(cluster::routes())
        .layer(axum::middleware::from_fn(rejections::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::access_log,
        ))
        .with_state(state)
}

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let (status, code) = match &e {
            ServiceError::Policy(PolicyError::Forbidden(_)) => (StatusCode::FORBIDDEN, "forbidden"),
            ServiceError::Policy(PolicyError::Invalid(_)) => (StatusCode::BAD_REQUEST, "invalid"),
            ServiceError::Policy(PolicyError::Conflict(_)) => (StatusCode::CONFLICT, "conflict"),
            ServiceError::Policy(PolicyError::NotFound(_)) => (StatusCode::NOT_FOUND, "not_found"),
            ServiceError::Audit(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
            ServiceError::Config(_) => (StatusCode::BAD_REQUEST, "invalid_config"),
            ServiceError::RecordLagging(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit_lagging"),
            // Named, so a client (and the load balancer's operator) knows which part is down.
            ServiceError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "state_store_unavailable"),
            ServiceError::Token(_) | ServiceError::Busy(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        };
        let message = match (&e, status) {
            (ServiceError::RecordLagging(_), _) => {
                tracing::error!(error = %e, "action taken without its audit record");
                "the action took effect, but its audit record could not be written yet".to_owned()
            }
            (ServiceError::Store(crate::store::StoreError::Unconfirmed(_)), _) => {
                tracing::error!(error = %e, "state store did not confirm a change");
                "lockbox's state store did not confirm the change in time: it may still take \
                 effect (it is recorded; a revocation also ended this node's sessions and is \
                 stored once the store answers); look again before you retry"
                    .to_owned()
            }
            // Internal details go to the log, not to the caller.
            (ServiceError::Store(_), _) => {
                tracing::error!(error = %e, "state store unavailable");
                "lockbox cannot reach its state store right now; nothing was changed".to_owned()
            }
            // A read of the fleet's trail: name the part that is down (the audit
            // database), as for the state store; its details go to the log.
            (ServiceError::Audit(crate::audit::AuditError::Database { .. }), _) => {
                tracing::error!(error = %e, "audit database unavailable");
                "lockbox cannot read the fleet's trail from its audit database right now".to_owned()
            }
            (ServiceError::Busy(_), _) => e.to_string(),
            (_, StatusCode::SERVICE_UNAVAILABLE) => {
                tracing::error!(error = %e, "request failed");
                "lockbox cannot complete this action right now; nothing was changed".to_owned()
            }
            _ => e.to_string(),
        };
        ApiError {
            status,
            code,
            message,
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid",
        message: message.into(),
    }
}

/// The authenticated caller.
pub struct Caller(pub User);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = |message: &str| ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.to_owned(),
        };
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <api key>"))?;
        // The scheme's name is case-insensitive (RFC 9110, 11.1).
        let key = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key)
            .ok_or_else(|| unauthorized("Authorization must be `Bearer <api key>`"))?;
        let user = state
            .lockbox
            .authenticate(key.trim())
            .ok_or_else(|| unauthorized("unknown API key"))?;
        if let Some(slot) = parts.extensions.get::<ops::CallerSlot>() {
            slot.set(&user.name);
        }
        Ok(Caller(user))
    }
}

/// The API's OpenAPI document, checked in beside this file (a test keeps it in step with
/// the routes and the client).
/// Header of a `GET /v1/sessions` answer that lists this node's sessions only, saying why
/// (the other nodes' could not be read from the state store).
pub const INCOMPLETE_HEADER: &str = "lockbox-incomplete";

pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `degraded` while the audit log cannot be written.
    pub status: String,
    /// `ok` or `failing`: while failing, statements and new sessions are refused.
    pub audit: String,
    /// Shown to an authenticated caller who may read the audit trail only: anonymous
    /// callers get up/down (`crate::health::visible_to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_sessions: Option<usize>,
    /// The PostgreSQL audit sink, when configured. Its lag or errors never make health
    /// fail: the file is the durable record, and the sink catches up from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_sink: Option<crate::health::SinkView>,
    /// Each database's reachability; one unreachable makes `status` `degraded`. Shown to
    /// the same callers as `live_sessions`: the names are the customer's databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub databases: Option<Vec<crate::health::DatabaseHealth>>,
}

async fn health(
    State(state): State<ApiState>,
    caller: Result<Caller, ApiError>,
) -> (StatusCode, Json<Health>) {
    let (status, health) =
        health_report(&state, caller.ok().as_ref().map(|Caller(user)| user)).await;
    (status, Json(health))
}

/// What `/v1/health` (and the admin center's health page) shows `caller`.
pub(crate) async fn health_report(state: &ApiState, caller: Option<&User>) -> (StatusCode, Health) {
    let details = crate::health::visible_to(caller);
    let audit_ok = state.lockbox.audit.healthy();
    let status = if audit_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let databases = state.probes.check(&state.lockbox.config()).await;
    let databases_ok = databases.iter().all(|d| d.reachable());
    let health = Health {
        // An unreachable database is degraded, not down: the API and the other databases
        // still work, so the HTTP status stays 200 (503 is for a failing audit log).
        status: if audit_ok && databases_ok {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        audit: if audit_ok { "ok" } else { "failing" }.into(),
        live_sessions: details.then(|| state.registry.live_sessions()),
        audit_sink: state
            .audit_sink
            .as_ref()
            .map(|s| crate::health::SinkView::new(s.health(), details)),
        databases: details.then_some(databases),
    };
    (status, health)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WhoAmI {
    pub name: String,
    pub roles: Vec<crate::config::Role>,
    /// Whether the caller's credential counts as signed in with MFA.
    #[serde(default)]
    pub mfa: bool,
}

async fn whoami(Caller(user): Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: user.name,
        roles: user.roles,
        mfa: user.mfa,
    })
}

async fn create_request(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Json(new): Json<NewRequest>,
) -> Result<(StatusCode, Json<Request>), ApiError> {
    let request = state.lockbox.create(&user, new).await?;
    Ok((StatusCode::CREATED, Json(request)))
}

#[derive(Deserialize)]
struct ListParams {
    status: Option<String>,
    /// Only break-glass grants (`true`), for after-the-fact review.
    break_glass: Option<bool>,
    /// Only grants nobody has acknowledged yet (`true`).
    unacknowledged: Option<bool>,
}

async fn list_requests(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<Vec<Request>>, ApiError> {
    let status = params
        .status
        .map(|s| s.parse::<RequestStatus>())
        .transpose()
        .map_err(bad_request)?;
    let mut list = state.lockbox.list(&user, status).await?;
    if params.break_glass == Some(true) {
        list.retain(|r| r.break_glass);
    }
    if params.unacknowledged == Some(true) {
        list.retain(|r| r.break_glass && r.acknowledged_by.is_none());
    }
    Ok(Json(list))
}

async fn show_request(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Json<Request>, ApiError> {
    Ok(Json(state.lockbox.get(&user, &RequestId(id)).await?))
}

/// Body of approve, deny and revoke.
#[derive(Debug, Serialize, Deserialize)]
pub struct Decision {
    pub reason: String,
    /// Approvals only: grant at most this long (`2h`), shortening the window asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

/// Body of an extension request.
#[derive(Debug, Serialize, Deserialize)]
pub struct Extension {
    pub duration: String,
    pub reason: String,
}

async fn approve(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    Json(d): Json<Decision>,
) -> Result<Json<Request>, ApiError> {
    let shorten_to = d
        .duration
        .as_deref()
        .map(|t| humantime::parse_duration(t.trim()))
        .transpose()
        .map_err(|e| bad_request(format!("duration: {e}")))?;
    Ok(Json(
        state
            .lockbox
            .approve(&user, &RequestId(id), &d.reason, shorten_to)
            .await?,
    ))
}

async fn cancel(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    Json(d): Json<Decision>,
) -> Result<Json<Request>, ApiError> {
    Ok(Json(
        state
            .lockbox
            .cancel(&user, &RequestId(id), &d.reason)
            .await?,
    ))
}

async fn extend(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    Json(e): Json<Extension>,
) -> Result<(StatusCode, Json<Request>), ApiError> {
    let extension = state
        .lockbox
        .extend(&user, &RequestId(id), &e.duration, &e.reason)
        .await?;
    Ok((StatusCode::CREATED, Json(extension)))
}

async fn acknowledge(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    Json(d): Json<Decision>,
) -> Result<Json<Request>, ApiError> {
    Ok(Json(
        state
            .lockbox
            .acknowledge(&user, &RequestId(id), &d.reason)
            .await?,
    ))
}

async fn deny(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    Json(d): Json<Decision>,
) -> Result<Json<Request>, ApiError> {
    Ok(Json(
        state.lockbox.deny(&user, &RequestId(id), &d.reason).await?,
    ))
}

async fn revoke(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<String>,
    Json(d): Json<Decision>,
) -> Result<Json<Request>, ApiError> {
    Ok(Json(
        state
            .lockbox
            .revoke(&user, &RequestId(id), &d.reason)
            .await?,
    ))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub request_id: String,
    pub database: String,
    pub user: String,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Where and how to connect: the proxy's public host and port, `sslmode`, and the CA
    /// certificate's path on engineers' machines (`[proxy] public_host`, …).
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub sslmode: String,
    #[serde(default)]
    pub ca_cert: Option<String>,
}

async fn token(
    State(state): State<ApiState>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (token, request) = state.lockbox.issue_token(&user, &RequestId(id)).await?;
    let connect = state.lockbox.config().connect.clone();
    // A credential: no cache (a proxy's, the browser's) keeps a copy.
    let no_store = [(axum::http::header::CACHE_CONTROL, "no-store")];
    Ok((
        no_store,
        Json(TokenResponse {
            token,
            request_id: request.id.0,
            database: request.database,
            user: request.engineer,
            expires_at: request.access_expires_at,
            host: connect.host,
            port: connect.port,
            sslmode: connect.sslmode,
            ca_cert: connect.ca_cert,
        }),
    ))
}
