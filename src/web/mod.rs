//! The admin center: the pages approvers, auditors and admins use in a browser, served on
//! the API's listener (same origin as `/v1`). Pages are rendered on the server with maud;
//! every action is a plain form POST (works with JavaScript off) carrying the session's
//! CSRF token, and is authorised by the same service and policy functions the API calls.
//! Like the API, this module calls the service, never the data plane.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::api::ApiState;

mod actions;
mod admin;
mod audit;
mod error;
mod layout;
mod live_sessions;
mod login;
mod request_page;
mod requests;
mod session;

pub(crate) use session::Sessions;

/// What the pages share: the API's state (service, registry, exports) and the sign-ins.
#[derive(Clone)]
pub(crate) struct WebState {
    pub(crate) api: ApiState,
    pub(crate) sessions: Arc<Sessions>,
}

/// The admin center's routes, ready to merge into the API's router.
pub fn routes<S>(api: &ApiState) -> Router<S> {
    let state = WebState {
        api: api.clone(),
        sessions: Arc::new(Sessions::new(api.lockbox.store.clone())),
    };
    Router::new()
        .route("/", get(|| async { Redirect::to("/requests") }))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/requests", get(requests::list))
        .route("/requests/{id}", get(request_page::show))
        .route("/requests/{id}/stream", get(request_page::stream))
        .route("/requests/{id}/{action}", post(actions::act))
        .route("/sessions", get(live_sessions::list))
        .route("/sessions/{id}/end", post(actions::end_session))
        .route("/policy", get(admin::policy).post(admin::set_policy))
        .route("/audit", get(audit::show))
        .route("/audit/download", get(audit::download))
        .route("/exports", get(admin::exports).post(admin::create_export))
        .route("/exports/{name}/run", post(admin::run_export))
        .route("/health", get(admin::health))
        .route("/assets/app.css", get(css))
        .route("/assets/live.js", get(live_js))
        .layer(axum::middleware::from_fn(same_origin_posts))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
        .with_state(state)
}

const CSS: &str = include_str!("assets/app.css");
const LIVE_JS: &str = include_str!("assets/live.js");

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}

async fn live_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        LIVE_JS,
    )
}

/// Every answer of the admin center: scripts and styles only from this origin (so no
/// inline script runs, whatever a page shows), no framing, no type sniffing, no referrer
/// to elsewhere; pages (they show requests and the trail) are never cached.
async fn security_headers(
    axum::extract::State(state): axum::extract::State<WebState>,
    request: Request,
    next: Next,
) -> Response {
    let is_asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // Under TLS the browser is told to come back over HTTPS only: a user typing the
    // address without `https://` would otherwise ask in the clear first, where someone on
    // the path answers in lockbox's place (and reads the login form's key). A year, as
    // browsers' preload rules ask; not `includeSubDomains`, other hosts are not ours.
    if secure(&state) {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        // `default-src` does not cover where forms post nor what `<base>` may say:
        // pinned too, so no markup a page shows could send a form (and its token) away.
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Refuses (403) a form POST a browser says came from another origin. The CSRF token
/// protects the signed-in forms, but the login form's double-submit nonce is only
/// compared with a cookie, and a sibling host of the same site (`evil.example.com` next
/// to `lockbox.example.com`, where SameSite=Strict does not apply) can set that cookie
/// itself and sign a victim's browser in under the attacker's key.
///
/// `Sec-Fetch-Site` decides where the browser sends it (all current ones do): it is the
/// browser's own judgement, so a reverse proxy that rewrites `Host` does not make every
/// form fail. An older browser's `Origin` is compared with `Host`. A client that sends
/// neither (curl, the tests) is left to the tokens.
async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let headers = request.headers();
        let same_origin = match headers.get("sec-fetch-site") {
            Some(site) => site
                .to_str()
                .is_ok_and(|v| v == "same-origin" || v == "none"),
            None => match headers.get(header::ORIGIN) {
                None => true,
                Some(origin) => {
                    let host = headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .or_else(|| request.uri().authority().map(|a| a.as_str()));
                    origin
                        .to_str()
                        .ok()
                        .and_then(|o| o.split_once("://"))
                        .zip(host)
                        .is_some_and(|((_, authority), host)| authority.eq_ignore_ascii_case(host))
                }
            },
        };
        if !same_origin {
            return error::WebError::Forbidden(
                "this form was sent from another site: open lockbox's own page and try again"
                    .into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Whether the API (and so the admin center) is served over HTTPS: the cookie is `Secure`.
fn secure(state: &WebState) -> bool {
    state.api.lockbox.config().api_tls.is_some()
}
