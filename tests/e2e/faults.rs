//! Client and control-plane faults: a client that stops reading a large result, and a
//! notification receiver that accepts connections and never answers.

use std::time::Duration;

use lockbox::policy::{AccessLevel, NewRequest};

use crate::harness::{query, Env, Options, Raw};

/// The wait event of the backend running `sql` (`ClientWrite` when its output is full).
fn wait_event_of(env: &Env, sql: &str) -> String {
    env.pg
        .psql(
            &env.db,
            &format!(
                "SELECT coalesce(wait_event, '') FROM pg_stat_activity WHERE query = '{}'",
                sql.replace('\'', "''")
            ),
        )
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A client that asks for a gigabyte and reads nothing: the proxy stops reading upstream
/// once its buffers are full, so the server waits on the client (ClientWrite) instead of
/// the proxy holding the result; other sessions go on; the stuck session still ends at its
/// deadline and its backend with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_holds_the_server_back_not_the_proxys_memory() {
    let env = Env::start("fault_stuck_reader").await;
    let (id, token) = env.approved_token("eve", "10s").await;
    let sql = "SELECT repeat('x', 1000) FROM generate_series(1, 1000000)";
    let mut stuck = Raw::login(&env, "eve", &token).await;
    stuck.read_until_ready().await;
    stuck.send(&query(sql)).await;

    // Backpressure reaches the server: it waits to write to its client (the proxy).
    let mut waits = Vec::new();
    for _ in 0..100 {
        let event = wait_event_of(&env, sql);
        if event == "ClientWrite" {
            break;
        }
        waits.push(event);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        wait_event_of(&env, sql),
        "ClientWrite",
        "the server never waited on the proxy (seen: {waits:?})"
    );

    // Another session is served meanwhile.
    let (_, other_token) = env.approved_token("bob", "1h").await;
    let (client, conn) = env.connect("bob", &other_token).await.expect("login");
    tokio::spawn(conn);
    let rows = client
        .simple_query("SELECT count(*) FROM items")
        .await
        .expect("another session's query");
    assert!(!rows.is_empty());

    // The stuck session ends at its deadline, and its backend goes with it.
    env.wait_for_audit("the stuck session's end", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["event"] == "dropped_expired")
    })
    .await;
    let mut left = String::new();
    for _ in 0..100 {
        left = wait_event_of(&env, sql);
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left.is_empty(), "the backend outlived its session ({left})");
}

/// A webhook receiver that accepts and never answers: filing and deciding requests does
/// not wait on it, and its delivery times out and is retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_notification_receiver_that_hangs_delays_nothing_and_is_retried() {
    let silent = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    // Accepts every connection and keeps it open, reading nothing and answering nothing.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let settings = format!(
        "\n[notifications]\nretry_base = \"100ms\"\nmax_attempts = 5\n\
         [[notifications.webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\n"
    );
    let env = Env::with(
        "fault_hanging_hook",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    // The whole flow, each step bounded well below the delivery timeout (10 s): none of
    // them waits for the receiver.
    let flow = async {
        let new = NewRequest {
            database: env.db.clone(),
            ticket: "T-9".into(),
            reason: "receiver hangs".into(),
            access: AccessLevel::Read,
            duration: Some("1h".into()),
            ..NewRequest::default()
        };
        let id = env.file("eve", &new).await;
        env.approve_all(&id).await;
        env.client("eve").token(&id).await.expect("token");
        id
    };
    let id = tokio::time::timeout(Duration::from_secs(8), flow)
        .await
        .expect("the request flow waited on a receiver that never answers");

    // The delivery times out, is recorded as such, and is tried again.
    let mut seen = Vec::new();
    for _ in 0..60 {
        seen = env
            .client("alice")
            .notifications(Some(&id), None)
            .await
            .expect("notifications");
        if seen
            .iter()
            .any(|d| d.attempts >= 2 && d.last_error.is_some())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let retried = seen
        .iter()
        .find(|d| d.attempts >= 2)
        .unwrap_or_else(|| panic!("no delivery was tried twice: {seen:#?}"));
    let error = retried.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("no answer in time"),
        "the failure says it timed out: {error}"
    );
    assert_eq!(retried.status, "pending", "{retried:#?}");
}
