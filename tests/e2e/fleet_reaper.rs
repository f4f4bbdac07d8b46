//! A reaper in a fleet: the grant's role is taken over (its password reset) by every node
//! that logs the grant in after another did, so a reaper holding the password its session
//! logged in with was refused 28P01 and a backend that outlived its session ran on (an
//! attack review). It takes the role over again, as a login does.

use lockbox::policy::{AccessLevel, NewRequest};
use lockbox::server::RunningServer;

use crate::fleet::{connect_via, start_node};
use crate::harness::{Env, Options, Raw, PROVISIONER_PASSWORD, PROVISIONER_ROLE};

/// Node 1 (`env`) with per-grant roles, and node 2.
pub(crate) async fn two_nodes(name: &str) -> (Env, RunningServer) {
    let env = Env::with(
        name,
        Options {
            state_postgres: true,
            upstream_user: PROVISIONER_ROLE,
            upstream_password: PROVISIONER_PASSWORD,
            ..Options::default()
        },
    )
    .await;
    let two = start_node(&env, 2).await;
    (env, two)
}

/// A write grant (of `max_sessions`) approved: its id and token.
pub(crate) async fn write_grant(
    env: &Env,
    ticket: &str,
    max_sessions: Option<u32>,
) -> (String, String) {
    let new = NewRequest {
        database: env.db.clone(),
        ticket: ticket.into(),
        reason: "a look".into(),
        access: AccessLevel::Write,
        duration: Some("1h".into()),
        max_sessions,
        ..NewRequest::default()
    };
    env.approved("eve", new).await
}

/// A session on node 1 running a procedure that swallows the cancel: its client and its
/// backend's pid.
pub(crate) async fn stubborn_on_node_one(env: &Env, token: &str) -> (Raw, i32) {
    env.superuser_sql(&crate::terminate::stubborn("lockbox_write"));
    let mut raw = Raw::login(env, "eve", token).await;
    raw.read_until_ready().await;
    raw.send(&crate::harness::query(crate::terminate::CALL))
        .await;
    let pid = crate::terminate::stubborn_backend(env).await;
    (raw, pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_outliving_its_session_is_terminated_after_another_node_took_the_role_over() {
    let (env, two) = two_nodes("fleet_reaper").await;
    let (id, token) = write_grant(&env, "T-28P01", None).await;
    let (raw, pid) = stubborn_on_node_one(&env, &token).await;
    // The grant logs in on node 2, which takes its role over: a password of its own.
    let (other, _conn) = connect_via(&env, two.proxy_addr.port(), &token)
        .await
        .expect("login on node 2");
    other.simple_query("SELECT 1").await.expect("served");
    drop(other);
    // The client on node 1 leaves mid-statement: its backend swallows the cancel.
    drop(raw);
    crate::terminate::wait_until_gone(&env, pid).await;
    crate::terminate::wait_for_terminated(&env, &id, pid).await;
}

/// Each node admits a limited grant's sessions up to its limit, and the role's
/// `CONNECTION LIMIT` keeps one slot more, for a reaper: a session of the grant on another
/// node can take that slot. The reaper, refused at the role's limit, lifts it for its own
/// login and sets it back (before, it was refused 53300 and the backend ran on).
#[tokio::test(flavor = "multi_thread")]
async fn a_reaper_whose_slot_a_session_on_another_node_took_still_terminates_the_backend() {
    let (env, two) = two_nodes("fleet_reaper_slot").await;
    let (id, token) = write_grant(&env, "T-53300", Some(1)).await;
    let (raw, pid) = stubborn_on_node_one(&env, &token).await;
    // Node 2 holds none of the grant's sessions, so it admits one: the role's second
    // connection, the last its limit (one session and the reaper's) allows.
    let (other, _conn) = connect_via(&env, two.proxy_addr.port(), &token)
        .await
        .expect("login on node 2");
    other.simple_query("SELECT 1").await.expect("served");
    let limit = format!("SELECT rolconnlimit FROM pg_roles WHERE rolname = 'lockbox_{id}'");
    assert_eq!(env.superuser_sql(&limit), "2");
    // The client on node 1 leaves mid-statement: its backend swallows the cancel.
    drop(raw);
    crate::terminate::wait_until_gone(&env, pid).await;
    crate::terminate::wait_for_terminated(&env, &id, pid).await;
    assert_eq!(env.superuser_sql(&limit), "2", "the limit is set back");
    other
        .simple_query("SELECT 1")
        .await
        .expect("node 2's session goes on");
}

/// A session of the grant holds its role's catalog row locked (an uncommitted change of
/// its own password, which any role may make, here through a function of the engineer's)
/// while the reaper, refused at the role's limit, must reap: it works over a service
/// connection, which changes nothing of the role. (An attack review: a reaper that lifted
/// the limit instead was held by the lock, and its lift landed after the engineer's
/// rollback, leaving the role without a limit.)
#[tokio::test(flavor = "multi_thread")]
async fn a_session_locking_its_roles_row_holds_off_neither_the_reaper_nor_the_limit() {
    let (env, two) = two_nodes("fleet_reaper_locked").await;
    env.superuser_sql("GRANT CREATE ON SCHEMA public TO lockbox_write");
    let (id, token) = write_grant(&env, "T-ROW", Some(1)).await;
    // Node 2 logs the grant in first, so node 1 takes the role over after it and its
    // reaper knows the password: it meets the role's limit.
    let (other, _conn) = connect_via(&env, two.proxy_addr.port(), &token)
        .await
        .expect("login on node 2");
    other
        .batch_execute(
            "CREATE FUNCTION hold_my_row() RETURNS void LANGUAGE plpgsql AS $$ \
             BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', current_user, 'x'); END $$",
        )
        .await
        .expect("the engineer creates a function");
    let (raw, pid) = stubborn_on_node_one(&env, &token).await;
    other
        .batch_execute("BEGIN; SELECT hold_my_row()")
        .await
        .expect("the role's row is locked");
    drop(raw);
    crate::terminate::wait_until_gone(&env, pid).await;
    crate::terminate::wait_for_terminated(&env, &id, pid).await;
    other.batch_execute("ROLLBACK").await.expect("rollback");
    let limit = format!("SELECT rolconnlimit FROM pg_roles WHERE rolname = 'lockbox_{id}'");
    assert_eq!(env.superuser_sql(&limit), "2", "the role keeps its limit");
}
