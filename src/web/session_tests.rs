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

/// Sign-ins on a SQLite store in a temporary folder (the store tests run the rows on
/// PostgreSQL too), with `limits`.
pub(super) fn sessions(limits: WebSessionLimits) -> (tempfile::TempDir, Sessions) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.db")).expect("store");
    (dir, Sessions::with_limits(store, limits))
}

pub(super) fn default_sessions() -> (tempfile::TempDir, Sessions) {
    sessions(WebSessionLimits {
        per_user: MAX_PER_USER,
        total: MAX_SESSIONS,
    })
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_expired_session_is_gone() {
    let (_dir, sessions) = default_sessions();
    let id = sessions
        .create(&user("carol"), Duration::ZERO, None)
        .await
        .expect("create");
    assert!(sessions.take(&id, false).await.expect("take").is_none());
    assert_eq!(sessions.store.web_session_count().await.expect("count"), 0);
    let live = sessions
        .create(&user("carol"), MINUTE, None)
        .await
        .expect("create");
    let taken = sessions.take(&live, false).await.expect("take");
    assert_eq!(taken.map(|s| s.user), Some("carol".into()));
}

#[tokio::test]
async fn ids_and_csrf_tokens_are_256_bits_and_distinct_and_the_store_keeps_a_hash() {
    let (_dir, sessions) = default_sessions();
    let a = sessions.create(&user("a"), MINUTE, None).await.expect("a");
    let b = sessions.create(&user("a"), MINUTE, None).await.expect("b");
    assert_eq!(a.len(), 64);
    assert_ne!(a, b);
    let csrf_a = sessions.take(&a, false).await.expect("a").expect("a").csrf;
    let csrf_b = sessions.take(&b, false).await.expect("b").expect("b").csrf;
    assert_ne!(csrf_a, csrf_b);
    assert_ne!(csrf_a, a);
    // The table holds the id's hash: the cookie's value is no key in it.
    assert!(sessions
        .store
        .web_session(&a, false)
        .await
        .expect("row")
        .is_none());
    assert!(sessions
        .store
        .web_session(&key_of(&a), false)
        .await
        .expect("row")
        .is_some());
}

#[tokio::test]
async fn the_store_is_bounded() {
    let (_dir, sessions) = sessions(WebSessionLimits {
        per_user: 4,
        total: 20,
    });
    // Distinct users: one user's own sign-ins are capped lower (per_user).
    for i in 0..25 {
        sessions
            .create(&user(&format!("u{i}")), MINUTE, None)
            .await
            .expect("create");
    }
    assert_eq!(sessions.store.web_session_count().await.expect("count"), 20);
}

#[tokio::test]
async fn a_flash_is_shown_once() {
    let (_dir, sessions) = default_sessions();
    let id = sessions.create(&user("a"), MINUTE, None).await.expect("id");
    sessions.flash(&id, false, "approved").await;
    let peeked = sessions
        .take(&id, false)
        .await
        .expect("take")
        .expect("live");
    assert!(peeked.flash.is_none(), "only a page that takes it sees it");
    let shown = sessions.take(&id, true).await.expect("take").expect("live");
    assert_eq!(shown.flash.map(|f| f.text), Some("approved".into()));
    let again = sessions.take(&id, true).await.expect("take").expect("live");
    assert!(again.flash.is_none());
}

#[tokio::test]
async fn a_sign_in_holds_a_bounded_number_of_streams() {
    let (_dir, sessions) = default_sessions();
    let id = sessions.create(&user("a"), MINUTE, None).await.expect("id");
    let held: Vec<StreamGuard> = (0..MAX_STREAMS)
        .map(|_| sessions.open_stream(&id).expect("a place"))
        .collect();
    assert!(sessions.open_stream(&id).is_none());
    drop(held);
    assert!(sessions.open_stream(&id).is_some());
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
