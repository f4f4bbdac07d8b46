//! The API's errors are JSON with a stable `code` (see [`super::ApiError`]), also where
//! axum answers before a handler runs: a body that is not JSON, a missing field, an
//! unknown enum value, a wrong content type, a path or query that does not parse, an
//! unknown route. Its own rejections are plain text; this turns them into the API's shape.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ErrorBody, ErrorDetail};

/// The most of a plain-text rejection's message kept (axum's are a line or two).
const MAX_MESSAGE: usize = 4 * 1024;

/// Rewrites an error response of a `/v1/` route that is not JSON (nor a stream) as the
/// API's error JSON; a 422 (the body parsed but did not fit) becomes the 400 `invalid` the
/// API answers for every other bad input.
pub(super) async fn json_errors(request: Request, next: Next) -> Response {
    let is_api = request.uri().path().starts_with("/v1/");
    let response = next.run(request).await;
    let status = response.status();
    if !is_api || !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_MESSAGE)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let (status, code) = match status {
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => {
            (StatusCode::BAD_REQUEST, "invalid")
        }
        StatusCode::NOT_FOUND => (status, "not_found"),
        StatusCode::METHOD_NOT_ALLOWED => (status, "method_not_allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => (status, "too_large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (status, "unsupported_media_type"),
        s if s.is_server_error() => (s, "internal"),
        s => (s, "invalid"),
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut rewritten = (
        status,
        axum::Json(ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        }),
    )
        .into_response();
    // What the original said beside its body (`Allow` on a 405) stays.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

fn is_json(response: &Response<Body>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"))
}
