//! A grant revoked on another node sharing the state store: that node drops the grant's
//! role, which ends the role's backends, and the news may reach this node's sessions only
//! after their server closed. The session's end is still the revocation's, as the store
//! says, not the server's: for an idle session, and for one whose client left while a
//! statement ran (its answers awaited when the server closed).

use std::time::Duration;

use lockbox::policy::AccessLevel;

use crate::harness::{query, Env, Raw};

fn role_of(id: &str) -> String {
    format!("lockbox_{id}")
}

/// What the other node's role drop does to this node's backends of the grant.
fn end_the_grants_backends(env: &Env, id: &str) {
    let ended = env.superuser_sql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{}'",
        role_of(id)
    ));
    assert_ne!(ended, "0", "no backend of the grant to end");
}

/// The records of `id`'s session ends, once there is one.
async fn session_ends(env: &Env, id: &str) -> Vec<serde_json::Value> {
    let records = env
        .wait_for_audit("the session's end", |records| {
            records.iter().any(|r| {
                r["request_id"] == id && r["type"] == "session" && r["event"] != "connected"
            })
        })
        .await;
    records
        .into_iter()
        .filter(|r| r["request_id"] == id && r["type"] == "session" && r["event"] != "connected")
        .collect()
}

/// An idle session; the other node's clock is `ahead` of this one's.
async fn idle_session_revoked_elsewhere(name: &str, ahead: chrono::TimeDelta) {
    let env = Env::provisioned(name).await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _connection) = env.connect("eve", &token).await.expect("login");
    client.simple_query("SELECT 1").await.expect("a statement");
    env.store_revoked_elsewhere(&id, ahead);
    end_the_grants_backends(&env, &id);
    let ends = session_ends(&env, &id).await;
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["event"], "dropped_revoked", "{ends:?}");
    assert_eq!(ends[0]["reason"], "request revoked", "{ends:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_whose_backend_a_revocation_elsewhere_ended_ends_as_revoked() {
    idle_session_revoked_elsewhere("revoked_elsewhere_idle", chrono::TimeDelta::zero()).await;
}

/// The revocation's time, stamped by a clock a second ahead, is after the close here.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_by_a_node_whose_clock_is_ahead_still_ends_the_session_as_revoked() {
    idle_session_revoked_elsewhere("revoked_elsewhere_ahead", chrono::TimeDelta::seconds(1)).await;
}

/// The control: a server that ends a session of a grant that still stands is the end.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_whose_server_closed_on_its_own_ends_as_disconnected() {
    let env = Env::provisioned("revoked_elsewhere_control").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _connection) = env.connect("eve", &token).await.expect("login");
    client.simple_query("SELECT 1").await.expect("a statement");
    end_the_grants_backends(&env, &id);
    let ends = session_ends(&env, &id).await;
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["event"], "disconnected", "{ends:?}");
    assert_eq!(
        ends[0]["reason"], "upstream closed the connection",
        "{ends:?}"
    );
}

/// A procedure that counts the cancels it catches, so a test can see the proxy's cancel
/// land (the wait for the answers of a client that left is under way), and its entries
/// into the block that catches them, so a test leaves only once a cancel would be caught.
const CATCHER: &str = "SET ROLE lockbox_svc;
     CREATE SEQUENCE catches;
     CREATE SEQUENCE entries;
     GRANT USAGE ON SEQUENCE catches, entries TO lockbox_write;
     CREATE PROCEDURE catcher() LANGUAGE plpgsql AS $$
     BEGIN
       LOOP
         BEGIN
           PERFORM nextval('entries');
           PERFORM pg_sleep(600);
         EXCEPTION WHEN query_canceled THEN
           PERFORM nextval('catches');
         END;
       END LOOP;
     END $$;";

pub(crate) const CALL: &str = "CALL catcher()";

/// How often the procedure drew from `sequence` (visible without a commit).
fn drawn(env: &Env, sequence: &str) -> i64 {
    env.superuser_sql(&format!(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}"
    ))
    .parse()
    .expect("a count")
}

/// Waits (bounded, to catch "never") until the procedure drew from `sequence`.
async fn until_drawn(env: &Env, sequence: &str, what: &str) {
    for _ in 0..200 {
        if drawn(env, sequence) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}");
}

/// Logs in with a write grant, runs [`CALL`], leaves, and waits (bounded) until the
/// proxy's cancel was caught: the proxy now awaits the answers. Returns the grant's id.
pub(crate) async fn leave_while_the_proxy_awaits_the_answers(env: &Env) -> String {
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    env.superuser_sql(CATCHER);
    let mut raw = Raw::login(env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&query(CALL)).await;
    until_drawn(env, "entries", "the procedure never started").await;
    drop(raw);
    until_drawn(
        env,
        "catches",
        "the proxy never cancelled the statement of the client that left",
    )
    .await;
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_awaiting_the_answers_of_a_client_that_left_ends_as_revoked_too() {
    let env = Env::provisioned("revoked_elsewhere_left").await;
    let id = leave_while_the_proxy_awaits_the_answers(&env).await;
    env.store_revoked_elsewhere(&id, chrono::TimeDelta::zero());
    end_the_grants_backends(&env, &id);
    let ends = session_ends(&env, &id).await;
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["event"], "dropped_revoked", "{ends:?}");
}

/// The control: the server closes under a grant that stands. The record says both what
/// ended the session (the client's leaving) and how the wait for the answers ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_closing_while_the_answers_are_awaited_is_recorded_after_the_leaving() {
    let env = Env::provisioned("revoked_elsewhere_left_control").await;
    let id = leave_while_the_proxy_awaits_the_answers(&env).await;
    end_the_grants_backends(&env, &id);
    let ends = session_ends(&env, &id).await;
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["event"], "disconnected", "{ends:?}");
    assert_eq!(
        ends[0]["reason"],
        "client left while a statement ran; the server then closed the connection",
        "{ends:?}"
    );
}
