//! What a page answers when it cannot show what was asked: a small HTML page with the
//! status the API would give (403, 404, …), or the way back to `/login`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::policy::PolicyError;
use crate::service::ServiceError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WebError {
    /// No live sign-in: back to the login page.
    #[error("not signed in")]
    SignIn,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// Too much held at once (live streams of one sign-in): 429.
    #[error("{0}")]
    TooMany(String),
    #[error(transparent)]
    Service(ServiceError),
}

impl From<ServiceError> for WebError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Policy(PolicyError::Forbidden(m)) => WebError::Forbidden(m),
            ServiceError::Policy(PolicyError::NotFound(id)) => {
                WebError::NotFound(format!("request {id} not found"))
            }
            other => WebError::Service(other),
        }
    }
}

impl From<PolicyError> for WebError {
    fn from(e: PolicyError) -> Self {
        ServiceError::from(e).into()
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            WebError::SignIn => return Redirect::to("/login").into_response(),
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            WebError::Invalid(m) => (StatusCode::BAD_REQUEST, m.clone()),
            WebError::TooMany(m) => (StatusCode::TOO_MANY_REQUESTS, m.clone()),
            WebError::Service(e) => {
                // The details of an internal failure stay in the log, as in the API.
                let status = status_of(e);
                if status.is_server_error() {
                    tracing::error!(error = %e, "admin center action failed");
                    let unconfirmed = matches!(
                        e,
                        ServiceError::Store(crate::store::StoreError::Unconfirmed(_))
                    );
                    let message = if unconfirmed {
                        "lockbox's state store did not confirm the change in time: it may still take effect; look again before you retry"
                    } else {
                        "lockbox cannot complete this action right now; nothing was changed"
                    };
                    (status, message.to_owned())
                } else {
                    (status, e.to_string())
                }
            }
        };
        let body = html! {
            (maud::DOCTYPE)
            html lang="en" {
                (super::layout::head(&status.as_u16().to_string()))
                body {
                    main {
                        h1 { (status.canonical_reason().unwrap_or("Error")) }
                        p role="alert" { (message) }
                        p { a href="/requests" { "Back to the requests" } }
                    }
                }
            }
        };
        (status, super::layout::html_response(body)).into_response()
    }
}

/// The status the API answers `e` with.
fn status_of(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::Policy(PolicyError::Forbidden(_)) => StatusCode::FORBIDDEN,
        ServiceError::Policy(PolicyError::NotFound(_)) => StatusCode::NOT_FOUND,
        ServiceError::Policy(PolicyError::Invalid(_)) | ServiceError::Config(_) => {
            StatusCode::BAD_REQUEST
        }
        ServiceError::Policy(PolicyError::Conflict(_)) => StatusCode::CONFLICT,
        ServiceError::Audit(_)
        | ServiceError::RecordLagging(_)
        | ServiceError::Store(_)
        | ServiceError::Token(_)
        | ServiceError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: WebError) -> StatusCode {
        e.into_response().status()
    }

    #[test]
    fn each_error_answers_with_the_apis_status() {
        let policy = |e: PolicyError| status(ServiceError::from(e).into());
        assert_eq!(policy(PolicyError::Forbidden("no".into())), 403);
        assert_eq!(policy(PolicyError::NotFound("r".into())), 404);
        assert_eq!(policy(PolicyError::Invalid("bad".into())), 400);
        assert_eq!(policy(PolicyError::Conflict("moved".into())), 409);
        let sign_in = WebError::SignIn.into_response();
        assert_eq!(sign_in.status(), StatusCode::SEE_OTHER);
        assert_eq!(sign_in.headers()["location"], "/login");
    }

    #[tokio::test]
    async fn internal_details_stay_in_the_log() {
        // (The audit database's errors were the one `Internal` kind; they are a 503 now.)
        let failed = crate::audit::AuditError::Database {
            message: "secret path /x".into(),
        };
        let response = WebError::Service(failed.into()).into_response();
        assert_eq!(response.status(), 503);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        assert!(!String::from_utf8_lossy(&body).contains("secret path"));
    }
}
