//! After an error in an extended-protocol message (Parse, Bind, Describe, Close), the server
//! ignores every message up to the next Sync, query strings included. A proxy that missed
//! that skip for errors of messages other than Execute fell one reply behind the server for
//! the rest of the session: a ParseComplete confirmed the text of an earlier, skipped Parse
//! (so a statement ran under another's record), outcomes landed on the statement before
//! their own, and the row limit and statement timeout looked at the wrong statement.

use std::time::Duration;

use lockbox::policy::{AccessLevel, NewRequest};
use serde_json::Value;

use crate::frontend::{bind, close, describe, execute, parse, sync};
use crate::harness::{errors_in, query, Env, Raw};

/// One message of each kind that fails without an Execute: each starts the skip.
fn skip_triggers() -> [(&'static str, Vec<u8>); 4] {
    [
        ("Describe", describe(b'S', "no_such_statement")),
        ("Parse", parse("", "SELECT * FROM no_such_table")),
        ("Bind", bind("", "no_such_statement")),
        ("Close", close(b'Z', "bad_kind")),
    ]
}

/// A failing message, then a query string the server skips, then the Sync.
async fn skip_a_query_string(raw: &mut Raw, trigger: &[u8], skipped: &str) {
    raw.send(&[trigger, &query(skipped), &sync()].concat())
        .await;
    let answer = raw.read_until_ready_after_error().await;
    assert_eq!(
        errors_in(&answer).len(),
        1,
        "one error, for the failed message"
    );
}

async fn raw_session(env: &Env, request: NewRequest) -> (String, Raw) {
    let (id, token) = env.approved("eve", request).await;
    let mut raw = Raw::login(env, "eve", &token).await;
    raw.read_until_ready().await;
    (id, raw)
}

fn request(env: &Env, access: AccessLevel) -> NewRequest {
    NewRequest {
        database: env.db.clone(),
        ticket: "T-5".into(),
        reason: "look".into(),
        access,
        duration: Some("1h".into()),
        ..NewRequest::default()
    }
}

/// The outcome record of the statement record whose text is `text`.
fn outcome_of<'a>(trail: &'a [Value], text: &str) -> &'a Value {
    let statement = trail
        .iter()
        .find(|r| r["type"] == "statement" && r["statement"] == text)
        .unwrap_or_else(|| panic!("no statement record of {text:?}"));
    trail
        .iter()
        .find(|r| r["type"] == "outcome" && r["statement_seq"] == statement["seq"])
        .unwrap_or_else(|| panic!("no outcome of {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_parsed_after_a_skipped_query_string_is_recorded_as_itself() {
    let env = Env::start("sync_skip_hidden").await;
    let (id, mut raw) = raw_session(&env, request(&env, AccessLevel::Write)).await;
    let update = "UPDATE items SET name = 'changed' WHERE id = 1";
    // A query string inside a skipped stretch, then a Parse the server skips, then the
    // real Parse of the same name, then a query string, then the Execute.
    skip_a_query_string(&mut raw, &describe(b'S', "nope"), "SELECT 1").await;
    raw.send(
        &[
            describe(b'S', "nope2"),
            parse("s1", "SELECT 'harmless' AS x"),
            sync(),
        ]
        .concat(),
    )
    .await;
    raw.read_until_ready_after_error().await;
    raw.send(&[parse("s1", update), sync()].concat()).await;
    raw.read_until_ready().await;
    raw.send(&query("SELECT 2")).await;
    raw.read_until_ready().await;
    raw.send(&[bind("", "s1"), execute(""), sync()].concat())
        .await;
    let answer = raw.read_until_ready().await;
    assert!(errors_in(&answer).is_empty(), "{:?}", errors_in(&answer));
    assert_eq!(
        env.superuser_sql("SELECT name FROM items WHERE id = 1"),
        "changed"
    );
    let trail = env
        .wait_for_audit("the UPDATE's outcome", |t| {
            t.iter()
                .any(|r| r["type"] == "outcome" && r["command_tag"] == "UPDATE 1")
        })
        .await;
    let trail: Vec<Value> = trail
        .into_iter()
        .filter(|r| r["request_id"] == id.as_str())
        .collect();
    let ran = outcome_of(&trail, update);
    assert_eq!(
        (&ran["status"], &ran["command_tag"]),
        (&"ok".into(), &"UPDATE 1".into())
    );
    assert!(
        !trail.iter().any(|r| r["statement"]
            .as_str()
            .is_some_and(|s| s.contains("harmless"))),
        "the skipped Parse never ran, so nothing ran under its text"
    );
    let select = outcome_of(&trail, "SELECT 2");
    assert_eq!(select["command_tag"], "SELECT 1");
    assert_eq!(outcome_of(&trail, "SELECT 1")["status"], "not_executed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failing_step_keeps_each_outcome_on_its_own_statement() {
    let env = Env::start("sync_skip_outcomes").await;
    for (name, trigger) in skip_triggers() {
        let (id, mut raw) = raw_session(&env, request(&env, AccessLevel::Read)).await;
        let skipped = format!("SELECT 'skipped after {name}'");
        skip_a_query_string(&mut raw, &trigger, &skipped).await;
        let count = format!("SELECT count(*) FROM items -- {name}");
        let all = format!("SELECT id FROM items -- {name}");
        for sql in [&count, &all] {
            raw.send(&query(sql)).await;
            raw.read_until_ready().await;
        }
        raw.send(&crate::harness::message(b'X', &[])).await;
        raw.read_to_close().await;
        let trail = env
            .wait_for_audit("the session's end", |t| {
                t.iter().any(|r| {
                    r["type"] == "session"
                        && r["event"] == "disconnected"
                        && r["request_id"] == id.as_str()
                })
            })
            .await;
        let trail: Vec<Value> = trail
            .into_iter()
            .filter(|r| r["request_id"] == id.as_str())
            .collect();
        assert_eq!(
            outcome_of(&trail, &skipped)["status"],
            "not_executed",
            "{name}"
        );
        assert_eq!(
            outcome_of(&trail, &count)["command_tag"],
            "SELECT 1",
            "{name}"
        );
        assert_eq!(
            outcome_of(&trail, &all)["command_tag"],
            "SELECT 10",
            "{name}"
        );
        let end = trail
            .iter()
            .find(|r| r["event"] == "disconnected")
            .expect("disconnected");
        assert!(end["reason"].is_null(), "{name}: a clean end, got {end}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_limit_still_counts_after_a_skipped_query_string() {
    let env = Env::start("sync_skip_rows").await;
    for (name, trigger) in skip_triggers() {
        let limited = NewRequest {
            max_rows: Some(5),
            ..request(&env, AccessLevel::Read)
        };
        let (_id, mut raw) = raw_session(&env, limited).await;
        skip_a_query_string(&mut raw, &trigger, "SELECT 'skipped'").await;
        // A catalog-only statement (not counted), then the table's 10 rows.
        raw.send(&query("SELECT relname FROM pg_class LIMIT 1"))
            .await;
        raw.read_until_ready().await;
        raw.send(&query("SELECT * FROM items")).await;
        let answer = raw.read_to_close().await;
        let codes: Vec<String> = errors_in(&answer).into_iter().map(|(c, _)| c).collect();
        assert_eq!(codes, ["54000"], "{name}: the 10 rows end the session");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statement_timeout_still_holds_after_a_skipped_query_string() {
    let env = Env::start("sync_skip_timeout").await;
    let timed = NewRequest {
        statement_timeout: Some("500ms".into()),
        ..request(&env, AccessLevel::Read)
    };
    let (_id, mut raw) = raw_session(&env, timed).await;
    skip_a_query_string(&mut raw, &describe(b'S', "nope"), "SELECT 'skipped'").await;
    raw.send(&query("SET statement_timeout = 0")).await;
    raw.read_until_ready().await;
    raw.send(&query("SELECT 1")).await;
    raw.read_until_ready().await;
    // Idle past the grant's timeout and the proxy's grace after it (1 s): a deadline that
    // belonged to a statement long done must not be spent on it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    raw.send(&query("SELECT pg_sleep(5)")).await;
    let answer = raw.read_until_ready_after_error().await;
    let codes: Vec<String> = errors_in(&answer).into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes, ["57014"], "the grant's timeout cancels the sleep");
}
