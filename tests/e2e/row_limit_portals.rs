//! A grant's row limit counts a result however it is fetched: a cursor read a few rows per
//! FETCH, or a portal read a few rows per Execute, returns no more of it than one statement
//! may (an attack review read 250 rows under a limit of 5 five at a time); and each Execute's
//! outcome records the rows it returned, one stopped at its row limit too.

use lockbox::policy::AccessLevel;

use crate::frontend::{bind, execute_rows, parse, sync};
use crate::harness::{errors_in, limited_session, query, rows_in, Env, Raw};

async fn limited(env: &Env, max_rows: u64) -> Raw {
    limited_session(env, AccessLevel::Read, max_rows).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_a_cursor_a_few_rows_at_a_time_counts_against_the_limit() {
    let env = Env::start("rows_cursor").await;
    let mut raw = limited(&env, 5).await;
    raw.send(&query(
        "BEGIN; DECLARE c CURSOR FOR SELECT id FROM items ORDER BY id",
    ))
    .await;
    raw.read_until_ready().await;
    raw.send(&query("FETCH 3 FROM c")).await;
    let first = raw.read_until_ready().await;
    assert_eq!(rows_in(&first), 3);
    raw.send(&query("FETCH 3 FROM c")).await;
    let rest = raw.read_to_close().await;
    assert_eq!(rows_in(&rest), 2, "rows 4 and 5, not the sixth");
    let codes: Vec<String> = errors_in(&rest).into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes, ["54000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executing_a_portal_a_few_rows_at_a_time_counts_against_the_limit() {
    let env = Env::start("rows_portal").await;
    let mut raw = limited(&env, 5).await;
    raw.send(
        &[
            parse("", "SELECT id FROM items ORDER BY id"),
            bind("", ""),
            execute_rows("", 3),
            execute_rows("", 3),
            execute_rows("", 3),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_to_close().await;
    assert_eq!(rows_in(&answer), 5);
    let codes: Vec<String> = errors_in(&answer).into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes, ["54000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_new_portal_starts_its_own_count() {
    // Drivers bind the unnamed portal for every query: rows of earlier portals of that
    // name do not count against a later one.
    let env = Env::start("rows_new_portal").await;
    let mut raw = limited(&env, 5).await;
    for _ in 0..4 {
        raw.send(
            &[
                parse("", "SELECT id FROM items ORDER BY id LIMIT 4"),
                bind("", ""),
                execute_rows("", 0),
                sync(),
            ]
            .concat(),
        )
        .await;
        let answer = raw.read_until_ready().await;
        assert_eq!(rows_in(&answer), 4);
        assert!(errors_in(&answer).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_sent_as_parse_bind_execute_counts_against_its_cursor() {
    // The rows come through the unnamed portal that runs the FETCH, which every Bind makes
    // anew; they are the cursor's, and count against it.
    let env = Env::start("rows_fetch_extended").await;
    let mut raw = limited(&env, 5).await;
    raw.send(&query(
        "BEGIN; DECLARE c CURSOR FOR SELECT id FROM items ORDER BY id",
    ))
    .await;
    raw.read_until_ready().await;
    let fetch = [
        parse("", "FETCH 3 FROM c"),
        bind("", ""),
        execute_rows("", 0),
        sync(),
    ]
    .concat();
    raw.send(&fetch).await;
    assert_eq!(rows_in(&raw.read_until_ready().await), 3);
    raw.send(&fetch).await;
    let rest = raw.read_to_close().await;
    assert_eq!(rows_in(&rest), 2);
    let codes: Vec<String> = errors_in(&rest).into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes, ["54000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parsed_fetch_from_a_cursor_lockbox_never_saw_is_refused_when_it_runs() {
    let env = Env::start("rows_fetch_unknown").await;
    let mut raw = limited(&env, 5).await;
    raw.send(
        &[
            parse("", "FETCH 3 FROM made_elsewhere"),
            bind("", ""),
            execute_rows("", 0),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_ready_after_error().await;
    let errors = errors_in(&answer);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "42501");
    assert!(errors[0].1.contains("unknown_cursor"), "{}", errors[0].1);
}

/// EXPLAIN's rows are the server's plan, never a table's: a plan longer than the limit
/// comes back whole, by either protocol, and the session's next read is still counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_longer_than_the_limit_is_not_counted() {
    let env = Env::start("rows_explain").await;
    let mut raw = limited(&env, 3).await;
    let explain = "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) SELECT i.name FROM items i \
                   JOIN items j USING (id) WHERE i.id IN (SELECT id FROM items ORDER BY id LIMIT 8)";
    raw.send(&query(explain)).await;
    let simple = raw.read_until_ready().await;
    assert!(errors_in(&simple).is_empty(), "{:?}", errors_in(&simple));
    assert!(rows_in(&simple) > 3, "{} plan lines", rows_in(&simple));
    raw.send(
        &[
            parse("", explain),
            bind("", ""),
            execute_rows("", 0),
            sync(),
        ]
        .concat(),
    )
    .await;
    let extended = raw.read_until_ready().await;
    assert!(
        errors_in(&extended).is_empty(),
        "{:?}",
        errors_in(&extended)
    );
    assert!(rows_in(&extended) > 3, "{} plan lines", rows_in(&extended));
    raw.send(&query("SELECT id FROM items")).await;
    let rows = raw.read_to_close().await;
    assert_eq!(rows_in(&rows), 3);
    let codes: Vec<String> = errors_in(&rows).into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes, ["54000"]);
}

/// An Execute that stops at its own row limit (PortalSuspended) has no command tag: its
/// outcome still says how many rows it returned, and the Execute that finishes the portal
/// says how many it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_stopped_at_its_row_limit_records_the_rows_it_returned() {
    let env = Env::start("rows_suspended_outcome").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (mut client, _conn) = env.connect("eve", &token).await.expect("login");
    let transaction = client.transaction().await.expect("begin");
    let portal = transaction
        .bind("SELECT id FROM items WHERE id <= 5 ORDER BY id", &[])
        .await
        .expect("bind");
    let first = transaction.query_portal(&portal, 2).await.expect("first");
    let rest = transaction.query_portal(&portal, 10).await.expect("rest");
    assert_eq!((first.len(), rest.len()), (2, 3));
    transaction.commit().await.expect("commit");
    let records = env
        .wait_for_audit("the portal's outcomes", |records| {
            records
                .iter()
                .filter(|r| r["type"] == "outcome" && r["request_id"] == id.as_str())
                .count()
                >= 5
        })
        .await;
    let executes: Vec<u64> = records
        .iter()
        .filter(|r| {
            r["type"] == "statement"
                && r["request_id"] == id.as_str()
                && r["protocol"] == "extended"
                && r["statement"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("SELECT id FROM items"))
        })
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert_eq!(executes.len(), 2, "{records:#?}");
    let rows: Vec<(Option<&str>, Option<u64>)> = executes
        .iter()
        .map(|seq| {
            let outcome = records
                .iter()
                .find(|r| r["type"] == "outcome" && r["statement_seq"] == *seq)
                .unwrap_or_else(|| panic!("no outcome for {seq}: {records:#?}"));
            (outcome["status"].as_str(), outcome["rows"].as_u64())
        })
        .collect();
    assert_eq!(rows, [(Some("ok"), Some(2)), (Some("ok"), Some(3))]);
}
