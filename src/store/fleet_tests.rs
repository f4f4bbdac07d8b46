//! The store operations several nodes share, on both backends: export run claims,
//! per-node export watermarks and admin center sign-ins.

use chrono::Utc;

use super::tests::{backends, fresh_database, run, schedule};
use super::*;

#[tokio::test]
async fn an_export_run_is_claimed_by_one_node_until_its_lease_lapses_on_both_backends() {
    let (_dir, stores) = backends("export_claims").await;
    let lease = chrono::Duration::seconds(60);
    let at = |secs: i64| Utc::now() + chrono::Duration::seconds(secs);
    let now = at(0);
    let later = |secs: i64| now + chrono::Duration::seconds(secs);
    for (backend, store) in stores {
        let claim = |schedule: &'static str, node: &'static str, when| {
            let store = store.clone();
            async move {
                store
                    .claim_export_run(schedule, node, when, lease)
                    .await
                    .expect("claim")
            }
        };
        assert!(claim("daily", "node-1", now).await, "{backend}");
        assert!(
            !claim("daily", "node-2", now).await,
            "{backend}: node 1 holds it"
        );
        assert!(
            claim("hourly", "node-2", now).await,
            "{backend}: one claim per schedule"
        );
        assert!(
            claim("daily", "node-1", later(30)).await,
            "{backend}: renewed"
        );
        assert!(
            !claim("daily", "node-2", later(60)).await,
            "{backend}: the renewal holds"
        );
        // Node 1 stops renewing (it died): its claim lapses and node 2 takes the run over.
        assert!(
            claim("daily", "node-2", later(90)).await,
            "{backend}: taken over"
        );
        assert!(!claim("daily", "node-1", later(90)).await, "{backend}");
        store
            .release_export_run("daily", "node-1")
            .await
            .expect("release");
        assert!(
            !claim("daily", "node-3", later(90)).await,
            "{backend}: node 1 cannot let go of node 2's claim"
        );
        store
            .release_export_run("daily", "node-2")
            .await
            .expect("release");
        assert!(
            claim("daily", "node-3", later(90)).await,
            "{backend}: released"
        );
    }
}

#[tokio::test]
async fn on_postgres_each_node_keeps_its_own_export_watermark() {
    let config = fresh_database("store_export_nodes");
    let one = Store::postgres(config.clone(), "node-1")
        .await
        .expect("node 1");
    let two = Store::postgres(config, "node-2").await.expect("node 2");
    assert!(one
        .insert_export_schedule(&schedule("daily"))
        .await
        .expect("insert"));
    let watermark = |store: Store| async move {
        store
            .export_schedule("daily")
            .await
            .expect("get")
            .expect("found")
            .watermark
    };
    assert!(one
        .record_export_run(&run("daily", RunStatus::Ok, 0, 10))
        .await
        .expect("run"));
    assert_eq!(
        watermark(two.clone()).await,
        0,
        "node 2's trail is not exported yet"
    );
    assert!(two
        .record_export_run(&run("daily", RunStatus::Ok, 0, 4))
        .await
        .expect("run"));
    assert!(
        !two.record_export_run(&run("daily", RunStatus::Ok, 10, 12))
            .await
            .expect("run"),
        "node 2 is at 4, not at node 1's 10"
    );
    assert!(two
        .record_export_run(&run("daily", RunStatus::Ok, 4, 7))
        .await
        .expect("run"));
    assert_eq!(watermark(one.clone()).await, 10);
    assert_eq!(watermark(two.clone()).await, 7);
    assert_eq!(one.export_schedules().await.expect("list")[0].watermark, 10);
    assert_eq!(one.export_runs("daily", 10).await.expect("runs").len(), 3);
}

#[tokio::test]
async fn web_sign_ins_on_both_backends() {
    let (_dir, stores) = backends("web_sessions").await;
    // Whole milliseconds, as the store keeps times.
    let now = pg::millis(Utc::now().timestamp_millis());
    let row = |user: &str, minutes: i64| WebSessionRow {
        user: user.into(),
        expires_at: now + chrono::Duration::minutes(minutes),
        body: format!("{{\"of\":\"{user}\"}}"),
        flash: None,
    };
    let limits = WebSessionLimits {
        per_user: 2,
        total: 3,
    };
    for (backend, store) in stores {
        store
            .insert_web_session("a1", &row("alice", 10), limits, now)
            .await
            .expect("insert");
        let found = store.web_session("a1", false).await.expect("get");
        assert_eq!(found, Some(row("alice", 10)), "{backend}");
        assert_eq!(store.web_session("nope", true).await.expect("get"), None);

        store.set_web_flash("a1", "saved").await.expect("flash");
        let peek = store.web_session("a1", false).await.expect("get");
        assert_eq!(peek.and_then(|r| r.flash).as_deref(), Some("saved"));
        let taken = store.web_session("a1", true).await.expect("get");
        assert_eq!(
            taken.and_then(|r| r.flash).as_deref(),
            Some("saved"),
            "{backend}"
        );
        let after = store.web_session("a1", true).await.expect("get");
        assert_eq!(after.map(|r| r.flash), Some(None), "{backend}: shown once");

        // Per user: alice's soonest-ending sign-in makes room for her third.
        for (id, minutes) in [("a2", 20), ("a3", 30)] {
            store
                .insert_web_session(id, &row("alice", minutes), limits, now)
                .await
                .expect("insert");
        }
        assert_eq!(
            store.web_session("a1", false).await.expect("get"),
            None,
            "{backend}"
        );
        // In all: past three, the soonest-ending of anyone's goes; expired ones first.
        store
            .insert_web_session("b1", &row("bob", 5), limits, now)
            .await
            .expect("insert");
        store
            .insert_web_session("c1", &row("carol", 40), limits, now)
            .await
            .expect("insert");
        assert_eq!(
            store.web_session("b1", false).await.expect("get"),
            None,
            "{backend}"
        );
        assert_eq!(
            store.web_session_count().await.expect("count"),
            3,
            "{backend}"
        );
        store
            .insert_web_session(
                "d1",
                &row("dave", 50),
                limits,
                now + chrono::Duration::minutes(25),
            )
            .await
            .expect("insert");
        assert_eq!(
            store.web_session("a2", false).await.expect("get"),
            None,
            "{backend}: expired"
        );

        store.delete_web_session("c1").await.expect("delete");
        assert_eq!(
            store.web_session("c1", false).await.expect("get"),
            None,
            "{backend}"
        );
    }
}
