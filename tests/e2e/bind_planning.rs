//! A Bind plans its statement, and planning runs functions: PostgreSQL folds an immutable
//! call with constant arguments while it builds the portal's plan, at Bind, before any
//! Execute. A database function marked IMMUTABLE that calls a volatile one therefore writes
//! at Bind. A Bind whose portal's Execute does not follow has a record of its own
//! (`protocol: "bind"`), durable before the Bind goes upstream; a Bind whose Execute
//! follows, however the client's writes split them, is covered by that Execute's record.

use std::time::Duration;

use lockbox::policy::AccessLevel;
use serde_json::Value;

use crate::frontend::{bind, execute, parse, sync};
use crate::harness::{errors_in, rows_in, Env, Raw};

/// `planning_fold(n)` is IMMUTABLE, so the planner runs it; it calls `planning_write(n)`,
/// which writes `n` into `planning_hits` (as its owner, whatever the caller may do).
fn create_functions(env: &Env) {
    env.superuser_sql(
        "CREATE TABLE planning_hits (n int);
         CREATE FUNCTION planning_write(n int) RETURNS int LANGUAGE plpgsql
           SECURITY DEFINER AS $$ BEGIN INSERT INTO planning_hits VALUES (n); RETURN n; END $$;
         CREATE FUNCTION planning_fold(n int) RETURNS int LANGUAGE plpgsql IMMUTABLE
           AS $$ BEGIN PERFORM planning_write(n); RETURN n; END $$;
         CREATE DOMAIN planning_checked AS text CHECK (planning_write(length(VALUE)) > 0);
         CREATE FUNCTION prepare_hidden() RETURNS int LANGUAGE plpgsql
           AS $$ BEGIN EXECUTE 'PREPARE hidden AS SELECT planning_fold(43)'; RETURN 0; END $$;
         GRANT EXECUTE ON FUNCTION planning_fold(int), planning_write(int), prepare_hidden()
           TO PUBLIC;",
    );
}

fn hits(env: &Env, n: i32) -> String {
    env.superuser_sql(&format!("SELECT count(*) FROM planning_hits WHERE n = {n}"))
}

/// The request's statement records of `text`, with their outcome's status.
async fn records_of(env: &Env, id: &str, text: &str) -> Vec<(String, String)> {
    let trail = env
        .wait_for_audit("an outcome for each statement", |t| {
            let ours: Vec<&Value> = t.iter().filter(|r| r["request_id"] == id).collect();
            ours.iter()
                .filter(|r| r["type"] == "statement" && r["statement"] == text)
                .all(|s| {
                    ours.iter()
                        .any(|o| o["type"] == "outcome" && o["statement_seq"] == s["seq"])
                })
        })
        .await;
    let status = |seq: &Value| {
        trail
            .iter()
            .find(|o| o["type"] == "outcome" && &o["statement_seq"] == seq)
            .map(|o| o["status"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    trail
        .iter()
        .filter(|r| r["request_id"] == id && r["type"] == "statement" && r["statement"] == text)
        .map(|r| {
            (
                r["protocol"].as_str().unwrap_or("").to_owned(),
                status(&r["seq"]),
            )
        })
        .collect()
}

/// A test database with the functions, and a logged-in write session (its request id).
async fn write_session(name: &str) -> (Env, String, Raw) {
    let env = Env::start(name).await;
    create_functions(&env);
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    (env, id, raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_without_its_execute_is_recorded_for_the_planning_it_runs() {
    let (env, id, mut raw) = write_session("bind_planning").await;

    // Parse, Bind, Sync: the server plans, so the function writes, with no Execute.
    let alone = "SELECT planning_fold(41)";
    raw.send(&[parse("", alone), bind("", ""), sync()].concat())
        .await;
    let answer = raw.read_until_ready().await;
    assert!(errors_in(&answer).is_empty(), "{:?}", errors_in(&answer));
    assert_eq!(hits(&env, 41), "1", "the planner ran the function at Bind");
    assert_eq!(
        records_of(&env, &id, alone).await,
        [("bind".to_owned(), "ok".to_owned())],
        "the planning that wrote has its record"
    );

    // The Bind at the end of one write, its Execute in the next: it waits for the Execute,
    // whose record covers it, rather than go alone.
    let split = "SELECT planning_fold(42)";
    raw.send(&[parse("", split), bind("", "")].concat()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hits(&env, 42), "0", "the Bind waited for what follows it");
    raw.send(&[execute(""), sync()].concat()).await;
    raw.read_until_ready().await;
    assert_eq!(hits(&env, 42), "1");
    assert_eq!(
        records_of(&env, &id, split).await,
        [("extended".to_owned(), "ok".to_owned())]
    );
}

/// A Bind converts its parameters whatever its statement: a domain's check runs then, for
/// a utility statement too (a review ran one through `SHOW work_mem` given a parameter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_of_any_statement_is_recorded_since_its_parameters_run_domain_checks() {
    let (env, id, mut raw) = write_session("bind_parameters").await;
    let domain = env.superuser_sql("SELECT 'planning_checked'::regtype::oid");
    let domain: u32 = domain.trim().parse().expect("an OID");
    let shown = "SHOW work_mem";
    let typed_parse = |sql: &str| {
        let mut body = b"\0".to_vec();
        body.extend_from_slice(sql.as_bytes());
        body.push(0);
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&domain.to_be_bytes());
        crate::harness::message(b'P', &body)
    };
    raw.send(
        &[
            typed_parse(shown),
            crate::frontend::bind_with("", "", &["seven!!"]),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_ready().await;
    assert!(errors_in(&answer).is_empty(), "{:?}", errors_in(&answer));
    assert_eq!(hits(&env, 7), "1", "the domain's check ran at Bind");
    assert_eq!(
        records_of(&env, &id, shown).await,
        [("bind".to_owned(), "ok".to_owned())]
    );

    // Its Execute refused (a cursor lockbox never saw declared): the Bind, which runs the
    // check, still has its record (a review's refused FETCH covered a Bind that ran one).
    let fetch = "FETCH 1 FROM nowhere";
    raw.send(
        &[
            typed_parse(fetch),
            crate::frontend::bind_with("", "", &["eight!!!"]),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_ready_after_error().await;
    let codes: Vec<String> = errors_in(&answer).into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes, ["42501"], "the FETCH is refused");
    // The check's row went with the transaction the refusal failed; its `ok` is the
    // server's BindComplete: the Bind ran.
    assert_eq!(
        records_of(&env, &id, fetch).await,
        [
            ("bind".to_owned(), "ok".to_owned()),
            ("extended".to_owned(), "refused".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_of_a_statement_lockbox_never_saw_prepared_is_refused_below_admin() {
    let (env, id, mut raw) = write_session("bind_unknown").await;
    // Server-side code prepares a statement the client never sent.
    raw.send(&crate::harness::query("SELECT prepare_hidden()"))
        .await;
    let answer = raw.read_until_ready().await;
    assert!(errors_in(&answer).is_empty(), "{:?}", errors_in(&answer));
    // Its Execute follows, and is refused too: the Bind itself must not go, since the
    // server would plan the hidden statement at Bind (a review's refused Execute let it).
    raw.send(&[bind("", "hidden"), execute(""), sync()].concat())
        .await;
    let answer = raw.read_until_ready_after_error().await;
    let codes: Vec<String> = errors_in(&answer).into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes, ["42501"], "{:?}", errors_in(&answer));
    assert_eq!(hits(&env, 43), "0", "nothing was planned");
    raw.send(&crate::harness::query(
        "SELECT name FROM pg_prepared_statements WHERE name = 'hidden'",
    ))
    .await;
    let answer = raw.read_until_ready().await;
    assert_eq!(rows_in(&answer), 1, "the server holds the hidden statement");
    let text = "-- Bind of statement \"hidden\", whose statement lockbox did not see prepared";
    assert_eq!(
        records_of(&env, &id, text).await,
        [("bind".to_owned(), "refused".to_owned())]
    );
}
