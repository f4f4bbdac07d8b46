//! A query string of thousands of statements is written to the trail in parts, other
//! sessions' records free to go between them (so none waits behind it): each statement
//! still has its own record, in order, and the outcome that answers it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio_postgres::SimpleQueryMessage;

use lockbox::policy::AccessLevel;

use crate::harness::Env;

/// Statements in the query string: about 1.4 MB of records, several parts.
const STATEMENTS: usize = 2000;

/// Rows statement `i` returns.
fn rows_of(i: usize) -> usize {
    i % 5
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_string_written_in_parts_keeps_each_statement_with_its_own_outcome() {
    let env = Env::start("large_batch").await;
    let (id, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let (other, _other_conn) = env.connect("eve", &token).await.expect("second login");

    // Another session keeps appending while the large one is written.
    let done = Arc::new(AtomicBool::new(false));
    let busy = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut ran = 0usize;
            while !done.load(Ordering::SeqCst) {
                other.simple_query("SELECT 'other'").await.expect("other");
                ran += 1;
            }
            ran
        })
    };
    let text: String = (0..STATEMENTS)
        .map(|i| format!("SELECT generate_series(1, {}) AS big_{i};", rows_of(i)))
        .collect();
    let answers = client.simple_query(&text).await.expect("the query string");
    done.store(true, Ordering::SeqCst);
    let other_ran = busy.await.expect("other session");
    let completions = answers
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
        .count();
    assert_eq!(completions, STATEMENTS);

    let ours = |r: &Value| r["request_id"] == id.as_str();
    let is_big = |r: &Value| {
        r["type"] == "statement"
            && r["statement"]
                .as_str()
                .is_some_and(|s| s.contains(" AS big_"))
    };
    let records = env
        .wait_for_audit(
            "an outcome for each statement of the query string",
            |records| {
                let statements: Vec<&Value> =
                    records.iter().filter(|r| ours(r) && is_big(r)).collect();
                statements.len() == STATEMENTS
                    && statements.iter().all(|s| {
                        records
                            .iter()
                            .any(|o| o["type"] == "outcome" && o["statement_seq"] == s["seq"])
                    })
            },
        )
        .await;
    let statements: Vec<&Value> = records.iter().filter(|r| ours(r) && is_big(r)).collect();
    let mut last_seq = 0;
    for (i, statement) in statements.iter().enumerate() {
        let text = statement["statement"].as_str().unwrap_or("");
        assert!(
            text.ends_with(&format!(" AS big_{i}")),
            "record {i} in trail order is `{text}`"
        );
        let seq = statement["seq"].as_u64().expect("seq");
        assert!(seq > last_seq, "sequence numbers rise with the statements");
        last_seq = seq;
        let outcome = records
            .iter()
            .find(|o| o["type"] == "outcome" && o["statement_seq"] == statement["seq"])
            .expect("outcome");
        assert_eq!(outcome["status"], "ok", "statement {i}: {outcome}");
        assert_eq!(
            outcome["rows"].as_u64(),
            Some(rows_of(i) as u64),
            "statement {i}'s outcome is its own: {outcome}"
        );
    }
    let others = records
        .iter()
        .filter(|r| ours(r) && r["type"] == "statement" && r["statement"] == "SELECT 'other'")
        .count();
    assert_eq!(
        others, other_ran,
        "every statement of the other session recorded"
    );
}
