use super::tests::{default_sessions, sessions, user};
use super::*;

/// One user signing in over and over (a script with a valid key) must not sign
/// everybody else out.
#[tokio::test]
async fn one_users_sign_ins_do_not_push_others_out() {
    let (_dir, sessions) = sessions(WebSessionLimits {
        per_user: 4,
        total: 20,
    });
    let victim = sessions
        .create(&user("carol"), Duration::from_secs(60), None)
        .await
        .expect("victim");
    for _ in 0..25 {
        sessions
            .create(&user("mallory"), Duration::from_secs(3600), None)
            .await
            .expect("mallory");
    }
    assert!(sessions.take(&victim, false).await.expect("take").is_some());
    assert_eq!(sessions.store.web_session_count().await.expect("count"), 5);
}

/// A `web_session_ttl` beyond what the clock can add must not panic a sign-in.
#[tokio::test]
async fn an_absurd_ttl_does_not_panic() {
    let (_dir, sessions) = default_sessions();
    let id = sessions
        .create(&user("carol"), Duration::MAX, None)
        .await
        .expect("create");
    assert!(sessions.take(&id, false).await.expect("take").is_some());
}

/// A flash quoting a huge form field is kept short.
#[tokio::test]
async fn a_flash_is_bounded() {
    let (_dir, sessions) = default_sessions();
    let id = sessions
        .create(&user("carol"), Duration::from_secs(60), None)
        .await
        .expect("create");
    sessions
        .flash(&id, true, format!("window `{}`", "é".repeat(1 << 20)))
        .await;
    let text = sessions
        .take(&id, true)
        .await
        .expect("take")
        .and_then(|s| s.flash)
        .map(|f| f.text)
        .unwrap_or_default();
    assert!(text.starts_with("window `é"), "{}", &text[..20]);
    assert!(text.len() <= MAX_FLASH + '…'.len_utf8(), "{}", text.len());
}
