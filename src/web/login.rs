//! `/login` and `/logout`. A browser signs in with an API key, or with an identity token
//! when `[oidc]` is configured: both go through `Lockbox::authenticate`, the very check
//! the API's `Caller` makes of a bearer credential.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, DOCTYPE};
use serde::Deserialize;

use super::error::WebError;
use super::layout::{head, html_response};
use super::session::{cookie, set_cookie, Signed};
use super::{secure, WebState};

/// The cookie that pairs the login form with its POST (double submit): a login form
/// posted from another site carries no such cookie (SameSite=Strict), so nobody can sign
/// a victim's browser in under the attacker's key.
const LOGIN_COOKIE: &str = "lockbox_login";

/// How long a login form stays good.
const LOGIN_FORM_SECS: u64 = 3600;

pub(crate) async fn form(State(state): State<WebState>) -> Response {
    login_page(&state, StatusCode::OK, None)
}

fn login_page(state: &WebState, status: StatusCode, error: Option<&str>) -> Response {
    let oidc = state.api.lockbox.config().oidc.is_some();
    let mut nonce = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
    let nonce = hex::encode(nonce);
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body {
                main id="main" class="narrow" {
                    h1 { "Sign in to lockbox" }
                    @if let Some(error) = error {
                        p class="flash error" role="alert" { (error) }
                    }
                    form method="post" action="/login" {
                        input type="hidden" name="nonce" value=(nonce);
                        p {
                            label for="api_key" { "API key" }
                            input id="api_key" name="api_key" type="password" autocomplete="off";
                        }
                        @if oidc {
                            p {
                                label for="id_token" { "Or an identity token from your identity provider" }
                                textarea id="id_token" name="id_token" rows="3" {}
                            }
                        }
                        p { button type="submit" { "Sign in" } }
                    }
                }
            }
        }
    };
    let mut response = (status, html_response(body)).into_response();
    let secure = if secure(state) { "; Secure" } else { "" };
    let cookie = format!(
        "{LOGIN_COOKIE}={nonce}; HttpOnly; SameSite=Strict; Path=/login; Max-Age={LOGIN_FORM_SECS}{secure}"
    );
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub(crate) struct Login {
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    api_key: String,
    #[serde(default)]
    id_token: String,
}

pub(crate) async fn submit(
    State(state): State<WebState>,
    headers: HeaderMap,
    Form(login): Form<Login>,
) -> Response {
    let paired = cookie(&headers, LOGIN_COOKIE).is_some_and(|c| {
        !login.nonce.is_empty()
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                c.as_bytes(),
                login.nonce.as_bytes(),
            ))
    });
    if !paired {
        return WebError::Forbidden(
            "the sign-in form's security token is missing or stale: reload the page".into(),
        )
        .into_response();
    }
    let credential = [login.id_token.trim(), login.api_key.trim()]
        .into_iter()
        .find(|c| !c.is_empty());
    let Some(user) = credential.and_then(|c| state.api.lockbox.authenticate(c)) else {
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("That API key or identity token was not accepted."),
        );
    };
    let ttl = state.api.lockbox.config().web_session_ttl;
    // Bound to the key it signed in with (not to an identity token, which has none).
    let key = credential
        .map(crate::keys::api_key_sha256)
        .filter(|hash| user.api_key_sha256 == Some(*hash));
    let id = match state.sessions.create(&user, ttl, key).await {
        Ok(id) => id,
        // No sign-in without the state store to keep it (fail closed, 503).
        Err(e) => return WebError::Service(e.into()).into_response(),
    };
    tracing::info!(user = %user.name, "signed in to the admin center");
    let mut response = Redirect::to("/requests").into_response();
    if let Ok(value) = set_cookie(Some(&id), secure(&state), ttl).parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    // The form's nonce did its work: it is not left for the next sign-in.
    let secure = if secure(&state) { "; Secure" } else { "" };
    let spent =
        format!("{LOGIN_COOKIE}=; HttpOnly; SameSite=Strict; Path=/login; Max-Age=0{secure}");
    if let Ok(value) = spent.parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub(crate) struct Csrf {
    pub(crate) csrf: Option<String>,
}

pub(crate) async fn logout(
    State(state): State<WebState>,
    signed: Signed,
    Form(form): Form<Csrf>,
) -> Result<Response, WebError> {
    signed.check_csrf(form.csrf.as_deref())?;
    // A sign-out the store did not take is a 503, the cookie left as it is: the browser
    // must not look signed out while the sign-in still works.
    state
        .sessions
        .remove(&signed.id)
        .await
        .map_err(|e| WebError::Service(e.into()))?;
    let mut response = Redirect::to("/login").into_response();
    let ttl = std::time::Duration::ZERO;
    if let Ok(value) = set_cookie(None, secure(&state), ttl).parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}
