//! A backend that outlives its session: a procedure that catches the cancel and keeps
//! running does not stop when the proxy cancels it and closes the socket.
//! Once the grant ends, lockbox must terminate it.

use std::time::Duration;

use lockbox::policy::AccessLevel;

use crate::harness::{cluster, Env, Options};

/// A procedure that swallows `query_canceled` and draws from a sequence every 50 ms,
/// forever, and what `role` needs to run it. It never commits: a sequence moves for every
/// session at once, outside any transaction, so the ticks show whether it still runs, and
/// nothing of the loop lies outside its exception block but the step from the handler
/// back into the block (a COMMIT there was a window wide enough for a cancel to land in,
/// end the procedure, and leave the reaper nothing to terminate: a 1-in-many flake).
pub(crate) fn stubborn(role: &str) -> String {
    format!(
        "SET ROLE lockbox_svc;
     CREATE SEQUENCE ticks;
     GRANT USAGE ON SEQUENCE ticks TO {role};
     {STUBBORN}"
    )
}

const STUBBORN: &str = "CREATE PROCEDURE stubborn() LANGUAGE plpgsql AS $$
     BEGIN
       LOOP
         BEGIN
           LOOP
             PERFORM nextval('ticks');
             PERFORM pg_sleep(0.05);
           END LOOP;
         EXCEPTION WHEN query_canceled THEN
           NULL;
         END;
       END LOOP;
     END $$;";

pub(crate) const CALL: &str = "CALL stubborn()";

fn count(env: &Env, sql: &str) -> i64 {
    env.superuser_sql(sql).parse().expect("a count")
}

/// How often the procedure has drawn from its sequence (visible without a commit).
fn ticks(env: &Env) -> i64 {
    count(
        env,
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM ticks",
    )
}

/// Waits (bounded) for the procedure to run and tick; returns its backend's pid.
pub(crate) async fn stubborn_backend(env: &Env) -> i32 {
    let find = format!(
        "SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE datname = '{}' AND query = '{CALL}'",
        env.db
    );
    for _ in 0..100 {
        let pid = count(env, &find);
        if pid != 0 && ticks(env) > 0 {
            return i32::try_from(pid).expect("a pid");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the procedure never started ticking");
}

/// Waits (bounded, to catch "never") until `pid` is no longer a backend.
pub(crate) async fn wait_until_gone(env: &Env, pid: i32) {
    let alive = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    for _ in 0..200 {
        if count(env, &alive) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "backend {pid} still runs after its grant ended ({} ticks so far)",
        ticks(env)
    );
}

/// Waits (bounded) for the audit's `backend_terminated` record of `pid`, of request `id`.
pub(crate) async fn wait_for_terminated(env: &Env, id: &str, pid: i32) {
    env.wait_for_audit("backend_terminated", |records| {
        records.iter().any(|r| {
            r["request_id"] == id && r["event"] == "backend_terminated" && r["backend_pid"] == pid
        })
    })
    .await;
}

/// The backend is gone for good: the ticks no longer move.
async fn assert_ticks_stopped(env: &Env) {
    let before = ticks(env);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ticks(env), before, "the procedure still ticks");
}

/// Starts the procedure through the proxy, as `role` upstream; the handles yield its error
/// and the connection's.
async fn start_stubborn(
    env: &Env,
    token: &str,
    role: &str,
) -> (
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    tokio::task::JoinHandle<Option<tokio_postgres::Error>>,
) {
    env.superuser_sql(&stubborn(role));
    let (client, conn) = env.connect("eve", token).await.expect("login");
    let call = tokio::spawn(async move { client.batch_execute(CALL).await });
    (call, conn)
}

/// The proxy ended the statement with FATAL 57P01 naming `why`.
async fn assert_dropped(
    call: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    conn: tokio::task::JoinHandle<Option<tokio_postgres::Error>>,
    why: &str,
) {
    let result = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the session was never ended")
        .expect("join");
    let statement = result.expect_err("the procedure never returns");
    let connection = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("connection closed")
        .expect("join");
    let (code, message) = crate::harness::fatal_error(Some(statement), connection);
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains(why), "{message}");
}

/// The audit says lockbox terminated the session's backend.
async fn assert_termination_audited(env: &Env, id: &str, pid: i32) {
    env.wait_for_audit("backend_terminated", |records| {
        records.iter().any(|r| {
            r["request_id"] == id && r["event"] == "backend_terminated" && r["backend_pid"] == pid
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_ignoring_the_cancel_is_terminated_at_expiry() {
    let env = Env::start("term_expiry").await;
    let (id, token) = env
        .approved_token_for("eve", "6s", AccessLevel::Write)
        .await;
    let (call, conn) = start_stubborn(&env, &token, "lockbox_write").await;
    let pid = stubborn_backend(&env).await;
    assert_dropped(call, conn, "expired").await;
    wait_until_gone(&env, pid).await;
    assert_ticks_stopped(&env).await;
    assert_termination_audited(&env, &id, pid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_ignoring_the_cancel_is_terminated_on_revoke() {
    // With a per-grant role, revoking also ends the role and its backends, racing the
    // reaper; on the level's role the reaper alone must end it.
    let env = Env::with(
        "term_revoke",
        Options {
            provisioning: "per_grant_roles = false",
            ..Default::default()
        },
    )
    .await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (call, conn) = start_stubborn(&env, &token, "lockbox_write").await;
    let pid = stubborn_backend(&env).await;
    env.client("carol")
        .revoke(&id, "customer withdrew consent")
        .await
        .expect("revoke");
    assert_dropped(call, conn, "revoked").await;
    wait_until_gone(&env, pid).await;
    assert_ticks_stopped(&env).await;
    assert_termination_audited(&env, &id, pid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_until_a_lingering_backend_is_terminated() {
    let mut env = Env::start("term_shutdown").await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (call, conn) = start_stubborn(&env, &token, "lockbox_write").await;
    let pid = stubborn_backend(&env).await;
    env.stop().await;
    assert_dropped(call, conn, "shutting down").await;
    // Once shutdown has returned, nothing of lockbox runs any more: the backend must
    // already be going, and the audit must already say so.
    wait_until_gone(&env, pid).await;
    assert_ticks_stopped(&env).await;
    assert!(
        env.audit().iter().any(|r| r["request_id"] == id.as_str()
            && r["event"] == "backend_terminated"
            && r["backend_pid"] == pid),
        "{:#?}",
        env.audit()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_lockbox_cannot_reach_is_reported_as_such() {
    // A role of this test's own, which loses LOGIN while its session runs: the proxy cannot
    // log in to terminate the backend.
    let (role, password) = ("term_locked_out", "locked-out-password");
    cluster()
        .psql(
            "postgres",
            &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
        )
        .expect("create role");
    let env = Env::with(
        "term_failed",
        Options {
            upstream_user: role,
            upstream_password: password,
            ..Default::default()
        },
    )
    .await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Admin)
        .await;
    let (call, conn) = start_stubborn(&env, &token, role).await;
    let pid = stubborn_backend(&env).await;
    env.superuser_sql(&format!("ALTER ROLE {role} NOLOGIN"));
    env.client("carol")
        .revoke(&id, "customer withdrew consent")
        .await
        .expect("revoke");
    assert_dropped(call, conn, "revoked").await;
    let records = env
        .wait_for_audit("backend_termination_failed", |records| {
            records.iter().any(|r| {
                r["request_id"] == id.as_str() && r["event"] == "backend_termination_failed"
            })
        })
        .await;
    let failed = records
        .iter()
        .find(|r| r["event"] == "backend_termination_failed")
        .expect("the failure record");
    assert_eq!(failed["backend_pid"], pid, "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cannot log in") && reason.contains("not permitted to log in"),
        "{reason}"
    );
    // Not left running for the rest of the suite.
    env.superuser_sql(&format!("SELECT pg_terminate_backend({pid})"));
    wait_until_gone(&env, pid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_the_client_left_mid_statement_does_not_run_on() {
    let env = Env::start("term_client_left").await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    env.superuser_sql(&stubborn("lockbox_write"));
    let mut raw = crate::harness::Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&crate::harness::query(CALL)).await;
    let pid = stubborn_backend(&env).await;
    // The client goes away without a word; the grant still runs for an hour.
    drop(raw);
    wait_until_gone(&env, pid).await;
    assert_ticks_stopped(&env).await;
    env.wait_for_audit("the session's end", |records| {
        records.iter().any(|r| {
            r["request_id"] == id
                && r["event"] == "disconnected"
                && r["reason"]
                    .as_str()
                    .is_some_and(|why| why.contains("client left"))
        })
    })
    .await;
}
