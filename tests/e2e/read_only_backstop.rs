//! The server reports a session's `default_transaction_read_only` (PostgreSQL 14 and
//! later): a read session whose default turns off, by any way the guard did not see (here
//! a function of the database, which a database without rules lets a read grant call),
//! is ended before anything more runs.

use lockbox::policy::AccessLevel;

use crate::harness::{errors_in, query, Env, Raw};

const LEAVE_READ_ONLY: &str = "CREATE FUNCTION public.leave_read_only() RETURNS text \
     LANGUAGE plpgsql AS $$ BEGIN \
     PERFORM pg_catalog.set_config('default_transaction_read_only', 'off', false); \
     RETURN 'left'; END $$";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_session_whose_default_turns_read_write_is_ended() {
    let env = Env::start("read_only_backstop").await;
    env.superuser_sql(LEAVE_READ_ONLY);
    let (_id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&query("SELECT public.leave_read_only()")).await;
    // The session ends: read to the close (a session left open would hang here).
    let heard = raw.read_to_close().await;
    let errors = errors_in(&heard);
    assert!(
        errors.iter().any(|(_, message)| message
            .contains("default_transaction_read_only changed to \"off\" under a read grant")),
        "{errors:?}"
    );

    // A write grant's default is its own to change.
    let (_id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&query("SELECT public.leave_read_only()")).await;
    let ran = raw.read_until_ready().await;
    assert!(errors_in(&ran).is_empty(), "{:?}", errors_in(&ran));
    raw.send(&query("SELECT 1")).await;
    let ran = raw.read_until_ready().await;
    assert_eq!(crate::harness::rows_in(&ran), 1);
}
