//! The POSTs of the request page: approve, deny, revoke, cancel, acknowledge, extend and
//! ending a live session. Each checks the CSRF token, then calls the service function the
//! API calls (which authorises it), and answers with a redirect back and a flash message
//! (post/redirect/get). A refusal the user could not have been offered (forbidden, not
//! found) is an error page with the API's status; a request that moved on meanwhile or a
//! bad duration comes back as a flash.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::error::WebError;
use super::session::Signed;
use super::WebState;
use crate::ids::{RequestId, SessionId};
use crate::policy::PolicyError;
use crate::service::{KillError, ServiceError};

#[derive(Deserialize)]
pub(crate) struct ActionForm {
    csrf: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    duration: String,
}

pub(crate) async fn act(
    State(state): State<WebState>,
    signed: Signed,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, WebError> {
    signed.check_csrf(form.csrf.as_deref())?;
    // The id goes back into the answer's `Location`: one no request can have (a control
    // character would make that header invalid, and the answer a 500) is not found, as
    // the API says of any unknown id.
    if !plausible_id(&id) {
        return Err(WebError::NotFound(format!("request {id} not found")));
    }
    let lockbox = &state.api.lockbox;
    let user = &signed.user;
    let rid = RequestId(id.clone());
    let reason = form.reason.as_str();
    let back = format!("/requests/{id}");
    let outcome = match action.as_str() {
        "approve" => match shorten_to(&form.duration) {
            Ok(shorten) => lockbox.approve(user, &rid, reason, shorten).await.map(|r| {
                (
                    back.clone(),
                    format!(
                        "Approved; the request is now {}.",
                        r.status.as_str().replace('_', " ")
                    ),
                )
            }),
            Err(message) => Err(PolicyError::Invalid(message).into()),
        },
        "deny" => lockbox
            .deny(user, &rid, reason)
            .await
            .map(|_| (back.clone(), "Denied.".to_owned())),
        "revoke" => lockbox.revoke(user, &rid, reason).await.map(|_| {
            (
                back.clone(),
                "Revoked: its sessions are being dropped.".to_owned(),
            )
        }),
        "cancel" => lockbox
            .cancel(user, &rid, reason)
            .await
            .map(|_| (back.clone(), "Cancelled.".to_owned())),
        "acknowledge" => lockbox
            .acknowledge(user, &rid, reason)
            .await
            .map(|_| (back.clone(), "Break-glass access acknowledged.".to_owned())),
        "extend" => lockbox
            .extend(user, &rid, form.duration.trim(), reason)
            .await
            .map(|e| {
                (
                    format!("/requests/{}", e.id),
                    "Extension requested: it waits for approval like any request.".to_owned(),
                )
            }),
        _ => return Err(WebError::NotFound(format!("no action `{action}`"))),
    };
    finish(&state, &signed, outcome, &back).await
}

/// A successful action flashes its message on the page it leads to; a refusal the page
/// did not offer is an error page; anything else is flashed on the page it came from.
async fn finish(
    state: &WebState,
    signed: &Signed,
    outcome: Result<(String, String), ServiceError>,
    back: &str,
) -> Result<Response, WebError> {
    match outcome {
        Ok((to, message)) => {
            state.sessions.flash(&signed.id, false, message).await;
            Ok(Redirect::to(&to).into_response())
        }
        Err(ServiceError::Policy(e @ (PolicyError::Invalid(_) | PolicyError::Conflict(_)))) => {
            state.sessions.flash(&signed.id, true, e.to_string()).await;
            Ok(Redirect::to(back).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `id` could name a request (ids are `req-` and hex digits): only such an id is
/// put into a URL the answer sends the browser to.
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The approver's shorter window, if one was typed.
fn shorten_to(text: &str) -> Result<Option<std::time::Duration>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    humantime::parse_duration(text)
        .map(Some)
        .map_err(|e| format!("window `{text}`: {e} (try 30m or 2h)"))
}

#[derive(Deserialize)]
pub(crate) struct EndForm {
    csrf: Option<String>,
    #[serde(default)]
    reason: String,
    /// The request page to go back to.
    #[serde(default)]
    request: String,
    /// `sessions`: back to the sessions page instead.
    #[serde(default)]
    back: String,
}

/// Ends one live session, as `POST /v1/sessions/{id}/kill` does.
pub(crate) async fn end_session(
    State(state): State<WebState>,
    signed: Signed,
    Path(id): Path<String>,
    Form(form): Form<EndForm>,
) -> Result<Response, WebError> {
    signed.check_csrf(form.csrf.as_deref())?;
    // Only back to a request page: the field is the user's, and never sends them elsewhere.
    let back = if form.back == "sessions" {
        "/sessions".to_owned()
    } else if plausible_id(&form.request) {
        format!("/requests/{}", form.request)
    } else {
        "/requests".to_owned()
    };
    let result = state
        .api
        .lockbox
        .kill_session(
            &signed.user,
            &state.api.registry,
            &SessionId(id.clone()),
            &form.reason,
        )
        .await;
    let outcome = match result {
        Ok(_) => Ok((back.clone(), format!("Session {id} ended."))),
        Err(KillError::Service(e)) => Err(e),
        Err(e @ KillError::NotLive(_)) => Err(PolicyError::Conflict(e.to_string()).into()),
    };
    finish(&state, &signed, outcome, &back).await
}

#[cfg(test)]
mod tests {
    use super::shorten_to;

    #[test]
    fn a_window_is_optional_and_checked() {
        assert_eq!(shorten_to(" "), Ok(None));
        assert_eq!(
            shorten_to("30m"),
            Ok(Some(std::time::Duration::from_secs(1800)))
        );
        assert!(shorten_to("soon").is_err());
    }
}
