//! A grant that reconnects has its next session's backend logged in ahead
//! (`src/proxy/spare.rs`): the next login that matches it exactly runs on it; any other
//! logs in afresh; a spare the server ended is never handed over; revocation closes it.
//! Checked against the server's own view (`pg_stat_activity`, `pg_backend_pid()`).

use std::time::Duration;

use crate::harness::{metric, Env, Options};

async fn spares(env: &Env, outcome: &str) -> f64 {
    metric(
        env,
        &format!("lockbox_spare_backends_total{{outcome=\"{outcome}\"}}"),
    )
    .await
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// The backends of `role` in the test's database other than `except`: sessions' and spares'.
fn other_backends(env: &Env, role: &str, except: i32) -> Vec<i32> {
    let pids = env.superuser_sql(&format!(
        "SELECT string_agg(pid::text, ',') FROM pg_stat_activity \
         WHERE datname = '{}' AND usename = '{role}' AND pid <> {except}",
        env.db
    ));
    pids.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Waits (bounded) for a backend of `role` other than `except` to appear: the spare.
async fn spare_beside(env: &Env, role: &str, except: i32) -> i32 {
    for _ in 0..100 {
        if let [spare] = other_backends(env, role, except)[..] {
            return spare;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no spare backend appeared beside session {except}: {:?}",
        other_backends(env, role, except)
    );
}

/// Waits (bounded) until `pid` has left the server.
async fn gone(env: &Env, pid: i32) {
    for _ in 0..100 {
        let left = env.superuser_sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        ));
        if left == "0" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("backend {pid} is still there");
}

/// A session, ended, then a second one of the same grant (it reconnects): returns the
/// second session, its backend, its role and the spare logged in beside it.
async fn reconnected(env: &Env, token: &str) -> (tokio_postgres::Client, i32, String, i32) {
    let (first, _conn) = env.connect("eve", token).await.expect("first login");
    let first_pid = backend_pid(&first).await;
    drop(first);
    gone(env, first_pid).await;
    let (second, _conn) = env.connect("eve", token).await.expect("second login");
    let pid = backend_pid(&second).await;
    let role: String = second
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("whoami")
        .get(0);
    let spare = spare_beside(env, &role, pid).await;
    (second, pid, role, spare)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_that_reconnects_runs_its_next_session_on_the_backend_logged_in_ahead() {
    let env = Env::provisioned("spare_used").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (second, second_pid, role, spare) = reconnected(&env, &token).await;
    assert_eq!(role, format!("lockbox_{id}"), "the grant's own role");
    drop(second);
    gone(&env, second_pid).await;

    let (third, _conn) = env.connect("eve", &token).await.expect("third login");
    assert_eq!(
        backend_pid(&third).await,
        spare,
        "the session runs on the spare"
    );
    let row = third
        .query_one("SELECT name FROM items WHERE id = 3", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "item 3");
    assert_eq!(spares(&env, "used").await, 1.0);
    // Its statement is recorded as any other.
    env.wait_for_audit("the statement on the spare", |r| {
        r.iter().any(|r| {
            r["type"] == "statement"
                && r["request_id"] == id.as_str()
                && r["statement"] == "SELECT name FROM items WHERE id = 3"
        })
    })
    .await;
    // Taking the spare opened the next one.
    let next = spare_beside(&env, &role, spare).await;
    assert_ne!(next, spare);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_with_other_startup_parameters_logs_in_afresh() {
    let env = Env::start("spare_params").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (second, second_pid, _, spare) = reconnected(&env, &token).await;
    drop(second);
    gone(&env, second_pid).await;

    let (third, connection) = env
        .pg_config("eve", &token)
        .application_name("another tool")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("login");
    tokio::spawn(connection);
    let third_pid = backend_pid(&third).await;
    assert_ne!(
        third_pid, spare,
        "a spare serves only the login it was made for"
    );
    let name: String = third
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(name, "another tool");
    assert_eq!(spares(&env, "used").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spare_the_server_ended_is_not_handed_over() {
    let env = Env::start("spare_ended").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (second, second_pid, _, spare) = reconnected(&env, &token).await;
    env.superuser_sql(&format!("SELECT pg_terminate_backend({spare})"));
    gone(&env, spare).await;
    drop(second);
    gone(&env, second_pid).await;

    let (third, _conn) = env.connect("eve", &token).await.expect("login");
    assert_ne!(backend_pid(&third).await, spare);
    third.simple_query("SELECT 1").await.expect("query");
    assert_eq!(spares(&env, "closed").await, 1.0);
    assert_eq!(spares(&env, "used").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_the_grant_closes_its_spare() {
    let env = Env::start("spare_revoked").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (second, _, _, spare) = reconnected(&env, &token).await;
    env.client("carol")
        .revoke(&id, "customer withdrew consent")
        .await
        .expect("revoke");
    gone(&env, spare).await;
    // Closed by the revocation, not by its idle time running out.
    assert_eq!(spares(&env, "closed").await, 1.0);
    assert_eq!(spares(&env, "expired").await, 0.0);
    assert!(second.simple_query("SELECT 1").await.is_err());
}

/// An idle spare holds a connection slot: a login the server refuses for want of one
/// (53300, here the role's CONNECTION LIMIT) closes it and logs in.
#[tokio::test(flavor = "multi_thread")]
async fn a_spare_yields_its_slot_to_a_login_the_server_would_refuse() {
    let env = Env::provisioned("spare_yields").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (second, second_pid, role, spare) = reconnected(&env, &token).await;
    drop(second);
    gone(&env, second_pid).await;
    env.superuser_sql(&format!("ALTER ROLE \"{role}\" CONNECTION LIMIT 1"));

    // Another client of the grant, which the spare was not logged in for.
    let (third, connection) = env
        .pg_config("eve", &token)
        .application_name("another tool")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("login despite the spare holding the role's one slot");
    tokio::spawn(connection);
    assert_ne!(backend_pid(&third).await, spare);
    gone(&env, spare).await;
    assert_eq!(spares(&env, "closed").await, 1.0);
}

/// With no spare to give a slot up, a login the server refuses for want of one gets the
/// server's own SQLSTATE, which clients and poolers know to retry, and says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_the_server_has_no_slot_for_is_told_so() {
    let env = Env::provisioned("spare_no_slot").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (first, _conn) = env.connect("eve", &token).await.expect("first login");
    let pid = backend_pid(&first).await;
    drop(first);
    gone(&env, pid).await;
    env.superuser_sql(&format!("ALTER ROLE \"lockbox_{id}\" CONNECTION LIMIT 0"));
    let refused = env.connect("eve", &token).await.err().and_then(|e| {
        e.as_db_error()
            .map(|e| (e.code().code().to_owned(), e.message().to_owned()))
    });
    let (code, message) = refused.expect("refused by the server");
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("is at its connection limit"), "{message}");
}

/// `spare_backends = "off"`: a grant that reconnects logs in afresh every time (on, its
/// third session would wait for and take the spare opened beside its second).
#[tokio::test(flavor = "multi_thread")]
async fn with_spares_off_no_backend_is_logged_in_ahead() {
    let env = Env::with(
        "spare_off",
        Options {
            proxy_extra: "spare_backends = \"off\"",
            ..Default::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    for _ in 0..3 {
        let (client, _conn) = env.connect("eve", &token).await.expect("login");
        let pid = backend_pid(&client).await;
        drop(client);
        gone(&env, pid).await;
    }
    for outcome in ["used", "expired", "closed", "failed"] {
        assert_eq!(spares(&env, outcome).await, 0.0, "{outcome}");
    }
}
