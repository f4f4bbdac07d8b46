//! The grant's statement timeout times all the work a client can make the server do, not
//! only Executes and query strings: a Bind plans its statement (and planning computes
//! immutable functions of constants), and a Sync commits an implicit transaction (and
//! runs its deferred checks). An attack review kept a backend busy for 20 s in a Bind, and
//! 43 s in a Sync's commit, under a 3 s timeout.

use lockbox::policy::{AccessLevel, NewRequest};

use crate::frontend::{bind, execute, parse, sync};
use crate::harness::{errors_in, query, Env, Raw};

async fn timed_session(env: &Env, access: AccessLevel) -> Raw {
    let (_id, token) = env
        .approved(
            "eve",
            NewRequest {
                database: env.db.clone(),
                ticket: "T-3".into(),
                reason: "a bounded look".into(),
                access,
                duration: Some("1h".into()),
                statement_timeout: Some("500ms".into()),
                ..NewRequest::default()
            },
        )
        .await;
    let mut raw = Raw::login(env, "eve", &token).await;
    raw.read_until_ready().await;
    // The server's own timeout off, as a client may set it: the proxy's still holds.
    raw.send(&query("SET statement_timeout = 0")).await;
    raw.read_until_ready().await;
    raw
}

fn codes(bytes: &[u8]) -> Vec<String> {
    errors_in(bytes).into_iter().map(|(code, _)| code).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_that_plans_for_long_is_cancelled_at_the_grants_timeout() {
    let env = Env::start("timeout_bind").await;
    let mut raw = timed_session(&env, AccessLevel::Read).await;
    // Seconds of planning: to_tsvector of constants is folded when the Bind plans it.
    let slow = ["to_tsvector('english', repeat('lorem ipsum ', 2000000)) IS NULL"; 6];
    let sql = format!("SELECT {}", slow.join(" OR "));
    raw.send(&[parse("", &sql), bind("", ""), sync()].concat())
        .await;
    let answer = raw.read_until_ready_after_error().await;
    assert_eq!(codes(&answer), ["57014"], "cancelled while it plans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_whose_commit_runs_for_long_is_cancelled_at_the_grants_timeout() {
    let env = Env::start("timeout_commit").await;
    env.superuser_sql(
        "CREATE FUNCTION slow_check() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$; \
         CREATE TABLE slow_commit (x int); \
         CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON slow_commit \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_check(); \
         GRANT INSERT ON slow_commit TO PUBLIC",
    );
    let mut raw = timed_session(&env, AccessLevel::Write).await;
    // The INSERT itself is quick, and flushed: its answer is in before the Sync. Its
    // deferred check runs when the Sync commits, with no statement left running.
    raw.send(
        &[
            parse("", "INSERT INTO slow_commit VALUES (1)"),
            bind("", ""),
            execute(""),
            crate::harness::message(b'H', b""),
        ]
        .concat(),
    )
    .await;
    raw.read_until(|events| {
        events.contains(&lockbox::wire::BackendEvent::Complete("INSERT 0 1".into()))
    })
    .await;
    raw.send(&sync()).await;
    let answer = raw.read_until_ready_after_error().await;
    assert_eq!(codes(&answer), ["57014"], "the commit is cancelled");
    assert_eq!(env.superuser_sql("SELECT count(*) FROM slow_commit"), "0");
}
