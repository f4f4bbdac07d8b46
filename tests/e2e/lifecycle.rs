//! The life of a grant: sessions dropped at expiry and on revoke (idle or mid-query),
//! pending requests expiring, who may do what, state across restarts, shutdown.

use std::time::Duration;

use crate::harness::{db_error, Env, Options};

/// Waits (bounded, to catch "never") for an idle connection to end; returns the error the
/// proxy sent it.
async fn ended(conn: tokio::task::JoinHandle<Option<tokio_postgres::Error>>) -> (String, String) {
    let err = tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("the session was never dropped")
        .expect("join");
    db_error(&err.expect("the session ended with an error from the proxy"))
}

/// Waits (bounded) for a running statement to fail; returns the error it got.
async fn failed(
    query: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> (String, String) {
    let result = tokio::time::timeout(Duration::from_secs(20), query)
        .await
        .expect("the statement was never interrupted")
        .expect("join");
    db_error(&result.expect_err("the statement must not complete"))
}

fn backends_running(env: &Env, query: &str) -> i64 {
    env.superuser_sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query = '{query}'",
        env.db
    ))
    .parse()
    .expect("count")
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_session_is_dropped_when_the_window_ends() {
    let env = Env::start("life_expiry_idle").await;
    let (id, token) = env.approved_token("eve", "5s").await;
    let (client, conn) = env.connect("eve", &token).await.expect("login");
    client
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("open a transaction");
    let (code, message) = ended(conn).await;
    assert_eq!(code, "57P01");
    assert!(message.contains("expired"), "{message}");
    env.wait_for_audit("dropped_expired", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["event"] == "dropped_expired")
    })
    .await;
    let err = env
        .connect("eve", &token)
        .await
        .expect_err("expired token refused");
    assert_eq!(db_error(&err).0, "28P01");
}

#[tokio::test(flavor = "multi_thread")]
async fn long_query_is_cancelled_and_its_backend_goes_away_at_expiry() {
    let env = Env::start("life_expiry_sleep").await;
    let (id, token) = env.approved_token("eve", "5s").await;
    let (client, conn) = env.connect("eve", &token).await.expect("login");
    let sleeper = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(120)").await });
    let (code, message) = failed(sleeper).await;
    assert_eq!(code, "57P01");
    assert!(message.contains("expired"), "{message}");
    let _ = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("connection closed");
    for _ in 0..50 {
        if backends_running(&env, "SELECT pg_sleep(120)") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        backends_running(&env, "SELECT pg_sleep(120)"),
        0,
        "the upstream query must not keep running"
    );
    let outcomes = env.audit_of("outcome", &id);
    assert!(
        outcomes.iter().any(|o| o["status"] == "interrupted"),
        "the interrupted statement has an outcome: {outcomes:#?}"
    );
    // The cancelled backend went by itself; the proxy (logged in as the read role) saw it go.
    env.wait_for_audit("backend_gone", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["event"] == "backend_gone")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_drops_live_sessions() {
    let env = Env::start("life_revoke").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (_idle, idle_conn) = env.connect("eve", &token).await.expect("login");
    let (busy, busy_conn) = env.connect("eve", &token).await.expect("login");
    let sleeper = tokio::spawn(async move { busy.batch_execute("SELECT pg_sleep(120)").await });
    env.wait_for_audit("the sleep to start", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["statement"] == "SELECT pg_sleep(120)")
    })
    .await;
    let revoked = env
        .client("carol")
        .revoke(&id, "customer withdrew consent")
        .await
        .expect("revoke");
    assert_eq!(revoked.status.as_str(), "revoked");
    for (code, message) in [ended(idle_conn).await, failed(sleeper).await] {
        assert_eq!(code, "57P01");
        assert!(message.contains("revoked"), "{message}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), busy_conn)
        .await
        .expect("connection closed");
    let drops = env
        .wait_for_audit("two dropped_revoked", |records| {
            records
                .iter()
                .filter(|r| r["request_id"] == id.as_str() && r["event"] == "dropped_revoked")
                .count()
                == 2
        })
        .await;
    assert!(drops
        .iter()
        .any(|r| r["event"] == "revoked" && r["actor"] == "carol"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unanswered_requests_expire() {
    let env = Env::with(
        "life_ttl",
        Options {
            timings: "request_ttl = \"1s\"",
            ..Default::default()
        },
    )
    .await;
    let id = env.pending_request("eve", "1h").await;
    env.wait_for_audit("the request to expire", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["event"] == "expired")
    })
    .await;
    let shown = env.client("eve").show_request(&id).await.expect("show");
    assert_eq!(shown.status.as_str(), "expired");
    let err = env
        .client("carol")
        .approve(&id, "too late")
        .await
        .expect_err("cannot approve");
    assert_eq!(err.code(), Some("conflict"));
    let expired = env
        .client("carol")
        .list_requests(Some("expired".parse().expect("status")))
        .await
        .expect("list");
    assert_eq!(expired.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_and_ownership_are_enforced() {
    let env = Env::start("life_roles").await;
    let id = env.pending_request("selma", "1h").await;
    let err = env
        .client("selma")
        .approve(&id, "self")
        .await
        .expect_err("self approval");
    assert_eq!(err.code(), Some("forbidden"));
    let err = env
        .client("bob")
        .approve(&id, "peer")
        .await
        .expect_err("engineers do not approve");
    // Another engineer's request is not theirs to see: as if it did not exist.
    assert_eq!(err.code(), Some("not_found"));
    let err = env
        .client("selma")
        .token(&id)
        .await
        .expect_err("no token while pending");
    assert_eq!(err.code(), Some("conflict"));
    env.client("carol")
        .approve(&id, "fine")
        .await
        .expect("approve");
    let err = env
        .client("bob")
        .token(&id)
        .await
        .expect_err("only the requester");
    assert_eq!(err.code(), Some("not_found"));
    let err = env
        .client("bob")
        .show_request(&id)
        .await
        .expect_err("engineers see their own");
    assert_eq!(err.code(), Some("not_found"));
    let err = env
        .client("eve")
        .audit(&Default::default())
        .await
        .expect_err("engineers do not read audit");
    assert_eq!(err.code(), Some("forbidden"));
    let long = lockbox::policy::NewRequest {
        database: env.db.clone(),
        ticket: "T".into(),
        reason: "r".into(),
        access: lockbox::policy::AccessLevel::Read,
        duration: Some("48h".into()),
        ..Default::default()
    };
    let err = env
        .client("dave")
        .create_request(&long)
        .await
        .expect_err("auditors do not file");
    assert_eq!(err.code(), Some("forbidden"));
    let err = env
        .client("eve")
        .create_request(&long)
        .await
        .expect_err("longer than max_access");
    assert_eq!(err.code(), Some("invalid"));
    let wrong_key = lockbox::client::ApiClient::new(&env.deployment.server_url(), "lbk_wrong");
    assert_eq!(
        wrong_key.whoami().await.expect_err("unknown key").code(),
        Some("unauthorized")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_survive_a_restart_and_shutdown_tells_sessions_why() {
    let mut env = Env::start("life_restart").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (_client, conn) = env.connect("eve", &token).await.expect("login");
    env.stop().await;
    let (code, message) = ended(conn).await;
    assert_eq!(code, "57P01");
    assert!(message.contains("shutting down"), "{message}");
    let text = std::fs::read_to_string(&env.audit_path).expect("audit");
    assert!(
        text.ends_with('\n'),
        "no half-written record after shutdown"
    );
    assert!(env
        .audit()
        .iter()
        .any(|r| r["request_id"] == id.as_str() && r["event"] == "dropped_shutdown"));

    env.restart().await;
    let (client, _conn) = env
        .connect("eve", &token)
        .await
        .expect("the grant still holds");
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(n, 10);
    let seqs: Vec<u64> = env
        .audit()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "sequence continues across restarts: {seqs:?}"
    );
}

/// Outcomes are recorded once their answer has been written to the client. A session
/// dropped while that write is stuck (its client stopped reading) still records every one:
/// each statement ends with exactly one outcome.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_dropped_while_its_answers_wait_for_the_client_records_every_outcome() {
    const STATEMENTS: usize = 5_000;
    let env = Env::start("life_stuck_answers").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = crate::harness::Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    // 5,000 results of 8 kB, far more than the socket buffers between the proxy and a client
    // that reads none of it; several fit in one read from the server.
    let sql = "SELECT repeat('x', 8000);".repeat(STATEMENTS);
    raw.send(&crate::harness::query(&sql)).await;
    // The server blocks writing to the proxy once the proxy blocks writing to the client.
    let mut stuck = false;
    for _ in 0..200 {
        let waiting = env.superuser_sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event = 'ClientWrite'",
            env.db
        ));
        if waiting.trim() == "1" {
            stuck = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stuck, "the server never waited for the proxy to read");
    env.client("carol")
        .revoke(&id, "customer withdrew consent")
        .await
        .expect("revoke");
    let records = env
        .wait_for_audit("the session's end", |records| {
            records
                .iter()
                .any(|r| r["request_id"] == id.as_str() && r["event"] == "dropped_revoked")
        })
        .await;
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        records
            .iter()
            .filter(|r| r["type"] == kind && r["request_id"] == id.as_str())
            .collect()
    };
    let (statements, outcomes) = (of("statement"), of("outcome"));
    assert_eq!(statements.len(), STATEMENTS);
    for statement in &statements {
        let settled = outcomes
            .iter()
            .filter(|o| o["statement_seq"] == statement["seq"])
            .count();
        assert_eq!(settled, 1, "outcomes of {statement}");
    }
    let answered = outcomes.iter().filter(|o| o["status"] == "ok").count();
    assert!(
        answered > 0 && answered < STATEMENTS,
        "{answered} statements answered before the drop"
    );
}
