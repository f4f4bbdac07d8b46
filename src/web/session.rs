//! Sign-ins to the admin center: server-side sessions kept in memory, found by a random
//! 256-bit id in an HttpOnly cookie. The cookie carries nothing but the id, so signing out
//! (or a restart) ends a session for good, and nothing a browser stores can be replayed
//! against the API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::error::WebError;
use super::WebState;
use crate::config::User;

/// The cookie that names a sign-in.
pub(crate) const COOKIE: &str = "lockbox_session";

/// Most sign-ins held at once: past it the one closest to its end makes room, so no
/// number of logins can grow the process's memory.
const MAX_SESSIONS: usize = 10_000;

/// The longest a sign-in lasts, whatever `web_session_ttl` says (a year).
const LONGEST_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Most live streams one sign-in holds open at once: a page opens one, a few tabs a few.
pub(crate) const MAX_STREAMS: usize = 8;

/// Longest flash message kept, in bytes.
const MAX_FLASH: usize = 1024;

/// Most sign-ins one user holds at once (browsers, tabs signed in anew): past it their
/// own oldest makes room.
const MAX_PER_USER: usize = 32;

/// One signed-in browser.
#[derive(Clone)]
struct Entry {
    user: String,
    /// Whether the credential used at sign-in counted as MFA (an identity token's `amr`).
    mfa: bool,
    csrf: String,
    expires: Instant,
    /// A message for the next page shown (after a POST, redirect, GET).
    flash: Option<Flash>,
    /// The SHA-256 of the API key signed in with: a session lasts only while the user
    /// still has that key, so rotating or removing a key (and a reload) signs its browsers
    /// out too. `None` for an identity token.
    key: Option<[u8; 32]>,
    /// How many live streams this sign-in holds open now (see `open_stream`).
    streams: Arc<AtomicUsize>,
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
#[derive(Clone, Debug)]
pub(crate) struct Flash {
    pub(crate) error: bool,
    pub(crate) text: String,
}

#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    /// Signs `user` in for `ttl` (with the API key hashing to `key`, if one was used);
    /// returns the new session's id.
    pub(crate) fn create(&self, user: &User, ttl: Duration, key: Option<[u8; 32]>) -> String {
        let id = random_hex();
        let entry = Entry {
            user: user.name.clone(),
            mfa: user.mfa,
            csrf: random_hex(),
            // `Instant + Duration` panics past what the clock can hold: an absurd
            // `web_session_ttl` (say `100000000y`) would otherwise panic every sign-in.
            expires: Instant::now() + ttl.min(LONGEST_TTL),
            flash: None,
            key,
            streams: Arc::default(),
        };
        let mut map = self.lock();
        // One user's sign-ins make room among their own first: otherwise anyone holding a
        // key could sign in MAX_SESSIONS times and push every other user's browser out.
        let own: Vec<(&String, Instant)> = map
            .iter()
            .filter(|(_, e)| e.user == user.name)
            .map(|(k, e)| (k, e.expires))
            .collect();
        if own.len() >= MAX_PER_USER {
            let oldest = own
                .iter()
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| (*k).clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, e| e.expires > now);
        }
        if map.len() >= MAX_SESSIONS {
            let soonest = map
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone());
            if let Some(k) = soonest {
                map.remove(&k);
            }
        }
        map.insert(id.clone(), entry);
        id
    }

    /// A place for one more live stream of session `id`, held until the guard is dropped
    /// (with the stream); `None` when the sign-in already holds `MAX_STREAMS` (or is
    /// gone). Each stream keeps a task and an open trail file for as long as its client
    /// keeps the connection, and a client that never reads keeps it for ever: without a
    /// bound one sign-in could hold any number.
    pub(crate) fn open_stream(&self, id: &str) -> Option<StreamGuard> {
        let counter = self.lock().get(id)?.streams.clone();
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()?;
        Some(StreamGuard(counter))
    }

    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Leaves `flash` for the next page of session `id`.
    pub(crate) fn flash(&self, id: &str, error: bool, text: impl Into<String>) {
        // A flash often quotes what the user typed (a window like `soon`, a name): cut
        // short, so a 2 MB form field does not sit in memory until the next page, in each
        // of a user's sign-ins.
        let mut text = text.into();
        if text.len() > MAX_FLASH {
            let mut end = MAX_FLASH;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        if let Some(e) = self.lock().get_mut(id) {
            e.flash = Some(Flash { error, text });
        }
    }

    /// The live session `id` (its flash taken if `take_flash`). An expired one is removed
    /// and answers `None`.
    fn take(&self, id: &str, take_flash: bool) -> Option<Live> {
        let mut map = self.lock();
        let entry = map.get_mut(id)?;
        if entry.expires <= Instant::now() {
            map.remove(id);
            return None;
        }
        let flash = if take_flash { entry.flash.take() } else { None };
        Some(Live {
            user: entry.user.clone(),
            mfa: entry.mfa,
            csrf: entry.csrf.clone(),
            flash,
            key: entry.key,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// One live stream's place among its sign-in's `MAX_STREAMS`; freed when dropped.
pub(crate) struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            ttl.as_secs()
        ),
        None => format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"),
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
        let id = cookie(&parts.headers, COOKIE).ok_or(WebError::SignIn)?;
        // Only a page view shows (and so uses up) the flash; a POST, the live stream and a
        // download leave it for the page.
        let path = parts.uri.path();
        let take_flash = parts.method == axum::http::Method::GET
            && !path.ends_with("/stream")
            && !path.starts_with("/audit/download");
        let (user, live) = signed_in(state, id, take_flash).ok_or(WebError::SignIn)?;
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
fn signed_in(state: &WebState, id: &str, take_flash: bool) -> Option<(User, Live)> {
    let live = state.sessions.take(id, take_flash)?;
    // The user as the configuration says now: a reload that removed the user or
    // changed their roles applies to signed-in browsers at once, as to API keys.
    let config = state.api.lockbox.config();
    let mut user = config.users.iter().find(|u| u.name == live.user).cloned()?;
    // Bound to what signed it in: an API key's sign-in ends when the key is rotated or
    // removed; an identity token's (no key) when `[oidc]` is removed, since the API no
    // longer takes that provider's tokens.
    let credential_gone = match live.key {
        Some(_) => user.api_key_sha256 != live.key,
        None => config.oidc.is_none(),
    };
    if credential_gone {
        state.sessions.remove(id);
        return None;
    }
    // MFA as the API would judge the credential now: an API key's is the configuration's
    // (so a reload that takes it away applies at once, as to the key itself); an identity
    // token's is what its `amr` said at sign-in.
    if live.key.is_none() {
        user.mfa = live.mfa;
    }
    Some((user, live))
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
        if signed_in(&state, &id, false).is_none_or(|(user, _)| !allowed(&user)) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn user(name: &str) -> User {
        User {
            name: name.into(),
            roles: Vec::new(),
            api_key_sha256: None,
            mfa: false,
            groups: Vec::new(),
            email: None,
        }
    }

    #[test]
    fn an_expired_session_is_gone() {
        let sessions = Sessions::default();
        let id = sessions.create(&user("carol"), Duration::ZERO, None);
        assert!(sessions.take(&id, false).is_none());
        assert_eq!(sessions.len(), 0);
        let live = sessions.create(&user("carol"), Duration::from_secs(60), None);
        assert_eq!(
            sessions.take(&live, false).map(|s| s.user),
            Some("carol".into())
        );
    }

    #[test]
    fn ids_and_csrf_tokens_are_256_bits_and_distinct() {
        let sessions = Sessions::default();
        let a = sessions.create(&user("a"), Duration::from_secs(60), None);
        let b = sessions.create(&user("a"), Duration::from_secs(60), None);
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let csrf_a = sessions.take(&a, false).expect("a").csrf;
        let csrf_b = sessions.take(&b, false).expect("b").csrf;
        assert_ne!(csrf_a, csrf_b);
        assert_ne!(csrf_a, a);
    }

    #[test]
    fn the_store_is_bounded() {
        let sessions = Sessions::default();
        // Distinct users: one user's own sign-ins are capped lower (MAX_PER_USER).
        for i in 0..MAX_SESSIONS + 5 {
            sessions.create(&user(&format!("u{i}")), Duration::from_secs(60), None);
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn a_flash_is_shown_once() {
        let sessions = Sessions::default();
        let id = sessions.create(&user("a"), Duration::from_secs(60), None);
        sessions.flash(&id, false, "approved");
        assert_eq!(
            sessions
                .take(&id, true)
                .and_then(|s| s.flash)
                .map(|f| f.text),
            Some("approved".into())
        );
        assert!(sessions.take(&id, true).and_then(|s| s.flash).is_none());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; lockbox_session=abc; b=2".parse().expect("header"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_tls() {
        let c = set_cookie(Some("x"), true, Duration::from_secs(5));
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
            "Secure",
            "Max-Age=5",
        ] {
            assert!(c.contains(part), "{c}");
        }
        assert!(!set_cookie(Some("x"), false, Duration::from_secs(5)).contains("Secure"));
    }
}

#[cfg(test)]
mod attack_tests {
    use super::tests::user;
    use super::*;

    /// One user signing in over and over (a script with a valid key) must not sign
    /// everybody else out.
    #[test]
    fn one_users_sign_ins_do_not_push_others_out() {
        let sessions = Sessions::default();
        let victim = sessions.create(&user("carol"), Duration::from_secs(60), None);
        for _ in 0..MAX_SESSIONS + 5 {
            sessions.create(&user("mallory"), Duration::from_secs(3600), None);
        }
        assert!(sessions.take(&victim, false).is_some());
        let mallory = sessions
            .lock()
            .values()
            .filter(|e| e.user == "mallory")
            .count();
        assert_eq!(mallory, MAX_PER_USER);
    }

    /// A `web_session_ttl` beyond what the clock can add must not panic a sign-in.
    #[test]
    fn an_absurd_ttl_does_not_panic() {
        let sessions = Sessions::default();
        let id = sessions.create(&user("carol"), Duration::MAX, None);
        assert!(sessions.take(&id, false).is_some());
    }

    /// A flash quoting a huge form field is kept short.
    #[test]
    fn a_flash_is_bounded() {
        let sessions = Sessions::default();
        let id = sessions.create(&user("carol"), Duration::from_secs(60), None);
        sessions.flash(&id, true, format!("window `{}`", "é".repeat(1 << 20)));
        let text = sessions
            .take(&id, true)
            .and_then(|s| s.flash)
            .map(|f| f.text)
            .unwrap_or_default();
        assert!(text.starts_with("window `é"), "{}", &text[..20]);
        assert!(text.len() <= MAX_FLASH + '…'.len_utf8(), "{}", text.len());
    }
}
