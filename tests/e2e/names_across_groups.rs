//! A Bind or Execute that finds its statement or portal through a change in an earlier
//! group, not yet answered. PostgreSQL rejects a Parse of a name that exists (42P05),
//! and the Sync after it ends the skip, so a Bind pipelined behind that Sync runs the
//! statement the name held before. An attack review used it to run a read of a customer
//! table under the text of a catalog query (which the row limit does not count) and a
//! DELETE under the text of a SELECT. Such a message now waits for the earlier group's
//! ReadyForQuery, and the record names what runs.

use lockbox::policy::{AccessLevel, NewRequest};
use serde_json::Value;

use crate::frontend::{bind, execute, execute_rows, parse, sync};
use crate::harness::{errors_in, Env, Raw};

async fn session(env: &Env, access: AccessLevel, max_rows: Option<u64>) -> (String, Raw) {
    let (id, token) = env
        .approved(
            "eve",
            NewRequest {
                database: env.db.clone(),
                ticket: "T-10".into(),
                reason: "look into it".into(),
                access,
                duration: Some("1h".into()),
                max_rows,
                ..NewRequest::default()
            },
        )
        .await;
    let mut raw = Raw::login(env, "eve", &token).await;
    raw.read_until_ready().await;
    (id, raw)
}

/// Defines `s1` as `first`, then, pipelined, tries to define it again as `second` and
/// runs it, each in a group of its own.
fn redefine_then_run(first: &str, second: &str) -> Vec<u8> {
    [
        parse("s1", first),
        sync(),
        parse("s1", second),
        sync(),
        bind("", "s1"),
        execute(""),
        sync(),
    ]
    .concat()
}

/// The statements recorded for `grant` and their outcomes' status and tag.
fn executed(trail: &[Value], grant: &str) -> Vec<(String, String, String)> {
    recorded_with(trail, grant, "command_tag")
}

/// The statements recorded for `grant`, with their outcomes' status and `field`.
fn recorded_with(trail: &[Value], grant: &str, field: &str) -> Vec<(String, String, String)> {
    trail
        .iter()
        .filter(|r| r["type"] == "statement" && r["request_id"] == grant)
        .map(|r| {
            let outcome = trail
                .iter()
                .find(|o| o["type"] == "outcome" && o["statement_seq"] == r["seq"]);
            let value = |k: &str| {
                outcome
                    .and_then(|o| o[k].as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            (
                r["statement"].as_str().unwrap_or_default().to_owned(),
                value("status"),
                value(field),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_redefinition_does_not_lend_its_text_to_what_runs() {
    let env = Env::start("names_across_groups_write").await;
    let (grant, mut raw) = session(&env, AccessLevel::Write, None).await;
    let delete = "DELETE FROM items WHERE id = 3";
    raw.send(&redefine_then_run(delete, "SELECT 'harmless'"))
        .await;
    let answer = raw.read_until_readies(3).await;
    let codes = sqlstates(&answer);
    assert_eq!(codes, ["42P05"], "the server rejects the second Parse");
    assert_eq!(
        env.superuser_sql("SELECT count(*) FROM items"),
        "9",
        "the DELETE ran"
    );
    let trail = env
        .wait_for_audit("the DELETE's outcome", |t| {
            executed(t, &grant)
                .iter()
                .any(|(_, status, _)| !status.is_empty())
        })
        .await;
    assert_eq!(
        executed(&trail, &grant),
        [(delete.to_owned(), "ok".to_owned(), "DELETE 1".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_redefinition_as_a_catalog_query_does_not_escape_the_row_limit() {
    let env = Env::start("names_across_groups_read").await;
    env.superuser_sql(
        "CREATE TABLE big AS SELECT g AS id FROM generate_series(1, 100) g; \
         GRANT SELECT ON big TO lockbox_read",
    );
    let (grant, mut raw) = session(&env, AccessLevel::Read, Some(5)).await;
    let read = "SELECT id FROM big";
    raw.send(&redefine_then_run(
        read,
        "SELECT relname FROM pg_catalog.pg_class LIMIT 1",
    ))
    .await;
    let answer = raw.read_to_close().await;
    let mut events = Vec::new();
    lockbox::wire::BackendScanner::counting_rows(true).feed(&answer, &mut events);
    let rows = events
        .iter()
        .filter(|e| matches!(e, lockbox::wire::BackendEvent::DataRow))
        .count();
    assert_eq!(rows, 5, "the row limit holds");
    let trail = env
        .wait_for_audit("the read's outcome", |t| {
            executed(t, &grant)
                .iter()
                .any(|(_, status, _)| !status.is_empty())
        })
        .await;
    let recorded = executed(&trail, &grant);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].0, read, "the record names what ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_prepares_then_runs_across_syncs_still_runs() {
    // libpq's pipeline mode: PQsendPrepare, PQpipelineSync, PQsendQueryPrepared.
    let env = Env::start("names_across_groups_pipeline").await;
    let (grant, mut raw) = session(&env, AccessLevel::Read, None).await;
    let count = "SELECT count(*) FROM items";
    raw.send(
        &[
            parse("s2", count),
            sync(),
            bind("", "s2"),
            execute(""),
            sync(),
            bind("", "s2"),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_readies(3).await;
    assert!(errors_in(&answer).is_empty(), "{:?}", errors_in(&answer));
    let trail = env
        .wait_for_audit("both outcomes", |t| {
            executed(t, &grant)
                .iter()
                .filter(|(_, status, _)| status == "ok")
                .count()
                == 2
        })
        .await;
    let ok = (count.to_owned(), "ok".to_owned(), "SELECT 1".to_owned());
    assert_eq!(executed(&trail, &grant), [ok.clone(), ok]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_server_will_skip_does_not_wait() {
    // The Parse fails, so the server skips everything up to a Sync, the query string
    // included: that group never gets its ReadyForQuery, and the Bind behind it, which
    // the server skips too, must not wait for one (its Sync comes after it).
    let env = Env::start("names_across_groups_skip").await;
    let (_grant, mut raw) = session(&env, AccessLevel::Read, None).await;
    raw.send(
        &[
            parse("s1", "SELECT * FROM no_such_table"),
            crate::harness::query("SELECT 1"),
            bind("", "s1"),
            execute(""),
            sync(),
            crate::harness::query("SELECT 2"),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_readies(2).await;
    let codes = sqlstates(&answer);
    assert_eq!(codes, ["42P01"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_sent_inside_copy_data_is_refused_not_held() {
    // The PREPARE waits behind a COPY that waits for data: a Bind of its statement sent
    // now would be the COPY's end upstream, and waiting for the PREPARE's answer would
    // wait for ever.
    let env = Env::start("names_across_groups_copy").await;
    let (_grant, mut raw) = session(&env, AccessLevel::Write, None).await;
    raw.send(&crate::harness::query(
        "COPY items FROM STDIN; PREPARE s1 AS SELECT 1",
    ))
    .await;
    raw.read_until(|events| events.contains(&lockbox::wire::BackendEvent::CopyIn))
        .await;
    raw.send(&[bind("", "s1"), execute(""), sync()].concat())
        .await;
    let answer = raw.read_to_close().await;
    let codes = sqlstates(&answer);
    assert_eq!(codes, ["08P01"]);
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_earlier_in_the_same_read_ends_the_skip_for_what_follows_it() {
    // The re-Parse fails alone (no Sync behind it yet), so the server skips to a Sync.
    // Then one write brings that Sync and a Bind and Execute of the name: the Sync ends
    // the skip, the Bind runs the statement the name held before, and the record must say
    // so though the proxy learns of the Sync only once the whole read is recorded.
    let env = Env::start("names_across_groups_batch_sync").await;
    let (grant, mut raw) = session(&env, AccessLevel::Write, None).await;
    let delete = "DELETE FROM items WHERE id = 4";
    raw.send(&[parse("s1", delete), sync()].concat()).await;
    raw.read_until_ready().await;
    raw.send(&parse("s1", "SELECT 'harmless'")).await;
    raw.read_until(|events| {
        events
            .iter()
            .any(|e| matches!(e, lockbox::wire::BackendEvent::Error { .. }))
    })
    .await;
    raw.send(&[sync(), bind("", "s1"), execute(""), sync()].concat())
        .await;
    raw.read_until_readies(2).await;
    assert_eq!(
        env.superuser_sql("SELECT count(*) FROM items"),
        "9",
        "the DELETE ran"
    );
    let trail = env
        .wait_for_audit("the DELETE's outcome", |t| {
            executed(t, &grant)
                .iter()
                .any(|(_, status, _)| !status.is_empty())
        })
        .await;
    assert_eq!(
        executed(&trail, &grant),
        [(delete.to_owned(), "ok".to_owned(), "DELETE 1".to_owned())]
    );
}

/// The statements recorded for `grant`, with their outcomes' status and SQLSTATE.
fn outcomes(trail: &[Value], grant: &str) -> Vec<(String, String, String)> {
    recorded_with(trail, grant, "sqlstate")
}

/// [`outcomes`] once the trail holds `count` statements of `grant`, each with its outcome.
async fn settled(env: &Env, grant: &str, count: usize) -> Vec<(String, String, String)> {
    let trail = env
        .wait_for_audit("every outcome", |t| {
            let recorded = outcomes(t, grant);
            recorded.len() == count && recorded.iter().all(|(_, s, _)| !s.is_empty())
        })
        .await;
    outcomes(&trail, grant)
}

/// The SQLSTATEs of the errors in `answer`, in order.
fn sqlstates(answer: &[u8]) -> Vec<String> {
    errors_in(answer).into_iter().map(|(c, _)| c).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_parse_of_the_unnamed_statement_leaves_none_to_run() {
    // PostgreSQL drops its unnamed statement before it parses a new one: when the new one
    // fails, a later Bind of it finds none (26000). The audit used to name the text it held
    // before, as if that ran again. An admin grant forwards a Bind of a statement lockbox
    // does not know, so the server's own answer shows what it holds.
    let env = Env::start("names_unnamed_failed").await;
    let (grant, mut raw) = session(&env, AccessLevel::Admin, None).await;
    let old = "SELECT 'old'";
    raw.send(
        &[
            parse("", old),
            sync(),
            parse("", "SELEC 'new'"),
            sync(),
            bind("", ""),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_readies(3).await;
    let codes = sqlstates(&answer);
    assert_eq!(
        codes,
        ["42601", "26000"],
        "the server kept no unnamed statement"
    );
    let trail = env
        .wait_for_audit("the Execute's outcome", |t| {
            outcomes(t, &grant).iter().any(|(_, s, _)| !s.is_empty())
        })
        .await;
    let recorded = outcomes(&trail, &grant);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_ne!(
        recorded[0].0, old,
        "the record names a statement lockbox did not see"
    );
    assert_eq!((&*recorded[0].1, &*recorded[0].2), ("error", "26000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_parse_of_the_unnamed_statement_leaves_none_to_run() {
    // The refused Parse's stand-in (a Parse of the same name that fails) drops the server's
    // unnamed statement too: a Bind of it after the Sync runs nothing, and is refused as a
    // statement lockbox does not know rather than recorded under the text it held before.
    let env = Env::start("names_unnamed_refused").await;
    let (grant, mut raw) = session(&env, AccessLevel::Read, None).await;
    let old = "SELECT 'old'";
    raw.send(
        &[
            parse("", old),
            sync(),
            parse("", "DELETE FROM items WHERE id = 3"),
            sync(),
            bind("", ""),
            execute(""),
            sync(),
            parse("", "SELECT 'next'"),
            bind("", ""),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_readies(4).await;
    let codes = sqlstates(&answer);
    assert_eq!(codes, ["42501", "42501"], "{:?}", errors_in(&answer));
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "10");
    let recorded = settled(&env, &grant, 4).await;
    assert!(
        recorded.iter().all(|(text, _, _)| text != old),
        "{recorded:?}"
    );
    let statuses: Vec<&str> = recorded.iter().map(|(_, s, _)| s.as_str()).collect();
    // The refused Parse; the Bind of a statement lockbox does not know, refused, and its
    // Execute, which the server skipped; then the next statement, which runs.
    assert_eq!(
        statuses,
        ["refused", "refused", "not_executed", "ok"],
        "{recorded:?}"
    );
    assert_eq!(recorded[3].0, "SELECT 'next'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_string_leaves_no_unnamed_statement_or_portal() {
    // PostgreSQL drops its unnamed statement as it starts a query string, and runs each of
    // its statements in the unnamed portal, dropping the one there. A Bind or Execute of
    // them after it finds none (26000, 34000). The audit used to name the text they held.
    let env = Env::start("names_unnamed_query").await;
    let (grant, mut raw) = session(&env, AccessLevel::Admin, None).await;
    let (old_statement, old_portal) = ("SELECT 'old'", "SELECT g FROM generate_series(1, 10) g");
    raw.send(
        &[
            parse("", old_statement),
            sync(),
            crate::harness::query("SELECT 'between'"),
            bind("", ""),
            execute(""),
            sync(),
            crate::harness::query("BEGIN"),
            parse("", old_portal),
            bind("", ""),
            execute_rows("", 2),
            sync(),
            crate::harness::query("SELECT 'between'"),
            execute_rows("", 2),
            sync(),
            crate::harness::query("ROLLBACK"),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_readies(8).await;
    let codes = sqlstates(&answer);
    // The server holds no unnamed statement (its own 26000); an Execute of an unnamed
    // portal no Bind made is refused, to admin too (a failed one can crash the server).
    assert_eq!(codes, ["26000", "42501"]);
    let recorded = settled(&env, &grant, 7).await;
    let failed: Vec<_> = recorded
        .iter()
        .filter(|(_, s, _)| s == "error" || s == "refused")
        .collect();
    assert_eq!(failed.len(), 2, "{recorded:?}");
    for (text, _, _) in failed {
        assert!(
            text != old_statement && text != old_portal,
            "a record names what the server no longer held: {recorded:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_function_call_leaves_the_unnamed_statement_in_place() {
    // A FunctionCall that fails leaves the unnamed statement as it was; a refused one's
    // stand-in must too (a query string in its place dropped it, and the next Bind failed
    // where PostgreSQL would have run it).
    let env = Env::start("names_unnamed_function_call").await;
    let (grant, mut raw) = session(&env, AccessLevel::Read, None).await;
    let kept = "SELECT 'kept'";
    let mut call = 2227u32.to_be_bytes().to_vec();
    call.extend_from_slice(&[0; 6]);
    raw.send(
        &[
            parse("", kept),
            sync(),
            crate::harness::message(b'F', &call),
            bind("", ""),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_readies(3).await;
    let errors = errors_in(&answer);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "42501", "the call is refused");
    let trail = env
        .wait_for_audit("the Execute's outcome", |t| {
            outcomes(t, &grant)
                .iter()
                .any(|(text, s, _)| text == kept && !s.is_empty())
        })
        .await;
    let recorded = outcomes(&trail, &grant);
    assert!(
        recorded
            .iter()
            .any(|(text, s, _)| text == kept && s == "ok"),
        "{recorded:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bind_of_the_unnamed_portal_leaves_none_to_run() {
    // PostgreSQL drops its unnamed portal before it plans a Bind: one whose planning fails
    // in a transaction block leaves an empty portal, whose Execute runs nothing
    // (EmptyQueryResponse). The audit used to record the old portal's statement as run, ok;
    // now lockbox knows of no unnamed portal there, and refuses the Execute.
    let env = Env::start("names_unnamed_failed_bind").await;
    let (grant, mut raw) = session(&env, AccessLevel::Admin, None).await;
    let series = "SELECT g FROM generate_series(1, 10) g";
    raw.send(
        &[
            crate::harness::query("BEGIN"),
            parse("", series),
            bind("", ""),
            execute_rows("", 2),
            sync(),
            parse("z", "SELECT 1/0"),
            bind("", "z"),
            sync(),
            execute_rows("", 2),
            sync(),
            crate::harness::query("ROLLBACK"),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_readies(5).await;
    let codes = sqlstates(&answer);
    // The last Execute finds no portal lockbox knows of: refused, to admin too.
    assert_eq!(codes, ["22012", "42501"]);
    let recorded = settled(&env, &grant, 5).await;
    let runs = recorded
        .iter()
        .filter(|(text, _, _)| text == series)
        .count();
    assert_eq!(runs, 1, "the series ran once: {recorded:?}");
    assert_eq!(recorded[3].1, "refused", "{recorded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_of_a_failed_query_strings_portal_is_refused_and_the_server_lives() {
    // A query string that fails after its statement took the unnamed portal leaves a failed
    // portal in a transaction block; an Execute of it after another query string crashes
    // PostgreSQL 15 (a segfault, and every session with it). lockbox took the portal a Bind
    // made before to be still there and forwarded the Execute of a read grant. Now a query
    // string that ran leaves no unnamed portal lockbox knows of, and an Execute of one no
    // Bind made is refused, to admin too.
    let env = Env::start("names_unnamed_failed_portal").await;
    for access in [AccessLevel::Read, AccessLevel::Admin] {
        let (_grant, mut raw) = session(&env, access, None).await;
        let mut steps = vec![crate::harness::query("BEGIN")];
        if access == AccessLevel::Read {
            steps.extend([parse("", "SELECT 1"), bind("", ""), sync()]);
        }
        steps.extend([
            crate::harness::query("ROLLBACK TO nope"),
            crate::harness::query("SELECT 1/0; SELECT 2"),
            execute(""),
            sync(),
            crate::harness::query("ROLLBACK"),
            crate::harness::query("SELECT 'alive'"),
        ]);
        raw.send(&steps.concat()).await;
        let readies = if access == AccessLevel::Read { 7 } else { 6 };
        let answer = raw.read_until_readies(readies).await;
        let codes = sqlstates(&answer);
        assert_eq!(codes, ["3B001", "25P02", "42501"], "{access:?}");
        assert!(
            String::from_utf8_lossy(&answer).contains("alive"),
            "{access:?}: the server still answers"
        );
    }
}
