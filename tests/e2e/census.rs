//! The long-lived maps of the process go back to where they were once sessions and
//! requests have come and gone: the soak's leak check (`benches/soak.sh`), in seconds.

use std::time::Duration;

use lockbox::census::Census;

use crate::harness::Env;

fn census(env: &Env) -> Census {
    let server = env.server.as_ref().expect("lockbox runs");
    lockbox::census::take(&server.lockbox, &server.registry)
}

/// Sessions that end by themselves and sessions dropped by a revocation, over several
/// grants: afterwards no map keyed by session, cancel key, source or request holds one.
#[tokio::test(flavor = "multi_thread")]
async fn maps_keyed_by_session_or_request_empty_again_after_they_come_and_go() {
    let env = Env::start("census_come_and_go").await;
    let carol = env.client("carol");
    for _ in 0..4 {
        let (id, token) = env.approved_token("eve", "1h").await;
        let (leaves, leaves_conn) = env.connect("eve", &token).await.expect("login");
        let (dropped, dropped_conn) = env.connect("eve", &token).await.expect("login");
        for client in [&leaves, &dropped] {
            client.simple_query("SELECT 1").await.expect("query");
        }
        let during = census(&env);
        assert!(
            during.sessions >= 2 && during.cancel_keys >= 2,
            "{during:?}"
        );
        drop(leaves);
        leaves_conn.await.expect("connection task");
        carol.revoke(&id, "census").await.expect("revoke");
        let end = tokio::time::timeout(Duration::from_secs(10), dropped_conn)
            .await
            .expect("the revoked session ends")
            .expect("connection task");
        assert!(end.is_some(), "the revoked session ended with its FATAL");
    }
    // A session unregisters once its task is done (after the FATAL and the close).
    let mut now = census(&env);
    for _ in 0..100 {
        if (
            now.sessions,
            now.cancel_keys,
            now.preauth_sources,
            now.request_locks,
        ) == (0, 0, 0, 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = census(&env);
    }
    assert_eq!(
        (
            now.sessions,
            now.cancel_keys,
            now.preauth_sources,
            now.request_locks
        ),
        (0, 0, 0, 0),
        "{now:?}"
    );
}
