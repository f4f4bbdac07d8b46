//! Sign-ins to the admin center: server-side sessions kept in the state store (so every
//! node of a fleet knows them, whichever node the balancer picks), found by a random
//! 256-bit id in an HttpOnly cookie; the store holds only the id's SHA-256. The cookie
//! carries nothing but the id, so signing out ends a session for good, and nothing a
//! browser stores can be replayed against the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::WebError;
use super::WebState;
use crate::config::User;
use crate::store::{Store, StoreError, WebSessionLimits, WebSessionRow};

/// The cookie that names a sign-in.
pub(crate) const COOKIE: &str = "lockbox_session";
/// The session cookie's name under TLS. A browser accepts a `__Host-` cookie only from this
/// very host, over HTTPS, for the whole site (`Secure`, `Path=/`, no `Domain`): a sibling
/// subdomain cannot plant one to sign a victim's browser in as the attacker (session
/// fixation), and a cookie of the plain name, which a sibling can set, is never read.
pub(crate) const SECURE_COOKIE: &str = "__Host-lockbox_session";

/// The session cookie's name: the `__Host-` one under TLS (browsers refuse it without).
pub(crate) fn cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

/// Most sign-ins held at once: past it the one closest to its end makes room, so no
/// number of logins can grow the store without bound.
const MAX_SESSIONS: usize = 10_000;

/// The longest a sign-in lasts, whatever `web_session_ttl` says (a year).
const LONGEST_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Most live streams one sign-in holds open at once on one node: a page opens one, a
/// few tabs a few.
pub(crate) const MAX_STREAMS: usize = 8;

/// Longest flash message kept, in bytes.
const MAX_FLASH: usize = 1024;

/// Most sign-ins one user holds at once (browsers, tabs signed in anew): past it their
/// own soonest-ending makes room.
const MAX_PER_USER: usize = 32;

/// What a stored sign-in carries beside its user and end.
#[derive(Serialize, Deserialize)]
struct Body {
    /// Whether the credential used at sign-in counted as MFA (an identity token's `amr`).
    mfa: bool,
    csrf: String,
    /// The SHA-256 (hex) of the API key signed in with: a session lasts only while the
    /// user still has that key, so rotating or removing a key (and a reload) signs its
    /// browsers out too. `None` for an identity token.
    key: Option<String>,
}

/// A live session as a request finds it.
struct Live {
    user: String,
    mfa: bool,
    csrf: String,
    flash: Option<Flash>,
    key: Option<[u8; 32]>,
}

/// A one-time message on the next page.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Flash {
    pub(crate) error: bool,
    pub(crate) text: String,
}

pub(crate) struct Sessions {
    store: Store,
    limits: WebSessionLimits,
    /// Live streams each sign-in holds open on this node (see `open_stream`).
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

/// The store's key of session `id`: its SHA-256, so the table holds no usable cookie.
fn key_of(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

impl Sessions {
    pub(crate) fn new(store: Store) -> Sessions {
        Sessions::with_limits(
            store,
            WebSessionLimits {
                per_user: MAX_PER_USER,
                total: MAX_SESSIONS,
            },
        )
    }

    fn with_limits(store: Store, limits: WebSessionLimits) -> Sessions {
        Sessions {
            store,
            limits,
            streams: Arc::default(),
        }
    }

    /// Signs `user` in for `ttl` (with the API key hashing to `key`, if one was used);
    /// returns the new session's id.
    pub(crate) async fn create(
        &self,
        user: &User,
        ttl: Duration,
        key: Option<[u8; 32]>,
    ) -> Result<String, StoreError> {
        let id = random_hex();
        let now = Utc::now();
        // An absurd `web_session_ttl` (say `100000000y`) is held to LONGEST_TTL, which the
        // calendar can always add.
        let ttl = chrono::Duration::from_std(ttl.min(LONGEST_TTL)).unwrap_or_default();
        let body = Body {
            mfa: user.mfa,
            csrf: random_hex(),
            key: key.map(hex::encode),
        };
        let row = WebSessionRow {
            user: user.name.clone(),
            expires_at: now
                .checked_add_signed(ttl)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            body: serde_json::to_string(&body).map_err(StoreError::from)?,
            flash: None,
        };
        // One user's sign-ins make room among their own first (the store does it): otherwise
        // anyone holding a key could sign in MAX_SESSIONS times and push every other user's
        // browser out.
        self.store
            .insert_web_session(&key_of(&id), &row, self.limits, now)
            .await?;
        Ok(id)
    }

    /// A place for one more live stream of session `id` on this node, held until the
    /// guard is dropped (with the stream); `None` when the sign-in already holds
    /// `MAX_STREAMS`. Each stream keeps a task and an open trail file for as long as its
    /// client keeps the connection, and a client that never reads keeps it for ever:
    /// without a bound one sign-in could hold any number.
    pub(crate) fn open_stream(&self, id: &str) -> Option<StreamGuard> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let open = streams.entry(id.to_owned()).or_default();
        if *open >= MAX_STREAMS {
            return None;
        }
        *open += 1;
        Some(StreamGuard {
            streams: self.streams.clone(),
            id: id.to_owned(),
        })
    }

    /// Ends sign-in `id`. An error means it may still be valid: a sign-out must say so
    /// rather than clear the browser's cookie as if done, since a copy of the cookie
    /// (another tab's, a stolen one) would go on signing in.
    pub(crate) async fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete_web_session(&key_of(id)).await
    }

    /// Leaves `flash` for the next page of session `id`.
    pub(crate) async fn flash(&self, id: &str, error: bool, text: impl Into<String>) {
        // A flash often quotes what the user typed (a window like `soon`, a name): cut
        // short, so a 2 MB form field does not sit in the store until the next page, in
        // each of a user's sign-ins.
        let mut text = text.into();
        if text.len() > MAX_FLASH {
            let mut end = MAX_FLASH;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        let stored = serde_json::to_string(&Flash { error, text }).map_err(StoreError::from);
        let result = match stored {
            Ok(flash) => self.store.set_web_flash(&key_of(id), &flash).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // The action itself is done; only its message is lost.
            tracing::warn!(error = %e, "could not keep an admin center message");
        }
    }

    /// The live session `id` (its flash taken if `take_flash`). An expired one is removed
    /// and answers `None`.
    async fn take(&self, id: &str, take_flash: bool) -> Result<Option<Live>, StoreError> {
        let key = key_of(id);
        let Some(row) = self.store.web_session(&key, take_flash).await? else {
            return Ok(None);
        };
        if row.expires_at <= Utc::now() {
            self.store.delete_web_session(&key).await?;
            return Ok(None);
        }
        let body: Body = serde_json::from_str(&row.body).map_err(StoreError::from)?;
        let flash = row
            .flash
            .filter(|_| take_flash)
            .and_then(|f| serde_json::from_str(&f).ok());
        let key = match body.key {
            None => None,
            // A stored key hash that does not decode matches no key: signed out.
            Some(hex_key) => match hex::decode(hex_key).ok().and_then(|b| b.try_into().ok()) {
                Some(bytes) => Some(bytes),
                None => return Ok(None),
            },
        };
        Ok(Some(Live {
            user: row.user,
            mfa: body.mfa,
            csrf: body.csrf,
            flash,
            key,
        }))
    }
}

/// One live stream's place among its sign-in's `MAX_STREAMS`; freed when dropped.
pub(crate) struct StreamGuard {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    id: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = streams.get_mut(&self.id) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.id);
            }
        }
    }
}

/// 256 random bits, hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for session `id` (`None`: delete the cookie).
pub(crate) fn set_cookie(id: Option<&str>, secure: bool, ttl: Duration) -> String {
    let name = cookie_name(secure);
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{name}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            ttl.as_secs()
        ),
        None => format!("{name}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"),
    }
}

/// The signed-in user of a page. Extracting it from a request without a live session
/// answers with a redirect to `/login` (303).
pub(crate) struct Signed {
    pub(crate) user: User,
    pub(crate) id: String,
    pub(crate) csrf: String,
    pub(crate) flash: Option<Flash>,
}

impl Signed {
    /// Every POST carries the session's CSRF token; a missing or wrong one is a 403.
    pub(crate) fn check_csrf(&self, sent: Option<&str>) -> Result<(), WebError> {
        let sent = sent.unwrap_or("");
        if bool::from(sent.as_bytes().ct_eq(self.csrf.as_bytes())) && !sent.is_empty() {
            Ok(())
        } else {
            Err(WebError::Forbidden(
                "the form's security token is missing or stale: reload the page and try again"
                    .into(),
            ))
        }
    }
}

impl FromRequestParts<WebState> for Signed {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, WebError> {
        let name = cookie_name(super::secure(state));
        let id = cookie(&parts.headers, name).ok_or(WebError::SignIn)?;
        // Only a page view shows (and so uses up) the flash; a POST, the live stream and a
        // download leave it for the page.
        let path = parts.uri.path();
        let take_flash = parts.method == axum::http::Method::GET
            && !path.ends_with("/stream")
            && !path.starts_with("/audit/download");
        let (user, live) = signed_in(state, id, take_flash)
            .await?
            .ok_or(WebError::SignIn)?;
        // The access log names the signed-in user, as it names an API key's.
        if let Some(slot) = parts.extensions.get::<crate::api::CallerSlot>() {
            slot.set(&user.name);
        }
        Ok(Signed {
            user,
            id: id.to_owned(),
            csrf: live.csrf,
            flash: live.flash,
        })
    }
}

/// The user session `id` stands for now, if it is still a sign-in: not expired, not
/// signed out, the user still configured and still holding the key it signed in with.
/// Every page asks this, and so does a live stream while it runs (see `ended`).
/// A state store that cannot answer is an error (503), never a sign-in.
async fn signed_in(
    state: &WebState,
    id: &str,
    take_flash: bool,
) -> Result<Option<(User, Live)>, WebError> {
    let Some(live) = state
        .sessions
        .take(id, take_flash)
        .await
        .map_err(|e| WebError::Service(e.into()))?
    else {
        return Ok(None);
    };
    // The user as the configuration says now: a reload that removed the user or
    // changed their roles applies to signed-in browsers at once, as to API keys.
    let config = state.api.lockbox.config();
    let Some(mut user) = config.users.iter().find(|u| u.name == live.user).cloned() else {
        return Ok(None);
    };
    // Bound to what signed it in: an API key's sign-in ends when the key is rotated or
    // removed; an identity token's (no key) when `[oidc]` is removed, since the API no
    // longer takes that provider's tokens.
    let credential_gone = match live.key {
        Some(_) => user.api_key_sha256 != live.key,
        None => config.oidc.is_none(),
    };
    if credential_gone {
        // Not a sign-in either way; a row left behind fails the same check next time.
        if let Err(e) = state.sessions.remove(id).await {
            tracing::error!(error = %e, "could not end an admin center sign-in");
        }
        return Ok(None);
    }
    // MFA as the API would judge the credential now: an API key's is the configuration's
    // (so a reload that takes it away applies at once, as to the key itself); an identity
    // token's is what its `amr` said at sign-in.
    if live.key.is_none() {
        user.mfa = live.mfa;
    }
    Ok(Some((user, live)))
}

/// How often a live stream checks that its sign-in still holds.
const STREAM_CHECK: Duration = Duration::from_secs(2);

/// Resolves once session `id` no longer signs anyone in (signed out, expired, key rotated
/// or removed, user removed) or its user no longer passes `allowed` (a reload took the
/// role away). A live stream ends with it: the stream was authorised once, when it
/// opened, and would otherwise keep showing statements to a browser whose sign-in or
/// right is gone, for as long as the connection lasts.
pub(crate) async fn ended(state: WebState, id: String, allowed: fn(&User) -> bool) {
    loop {
        tokio::time::sleep(STREAM_CHECK).await;
        // A store that cannot confirm the sign-in ends the stream too (fail closed).
        let still = signed_in(&state, &id, false).await.ok().flatten();
        if still.is_none_or(|(user, _)| !allowed(&user)) {
            return;
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "session_attack_tests.rs"]
mod attack_tests;
