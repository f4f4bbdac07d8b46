//! Names whose text the audit never holds. A Parse or Bind makes no record of its own: a
//! statement's text is recorded when an Execute runs it. SQL `EXECUTE` of a Parse'd
//! statement, or `FETCH` from a Bind's portal, would run that text under a record of
//! "EXECUTE s" or "FETCH ALL FROM p" only, so below admin only names made by SQL PREPARE
//! or DECLARE (whose records hold their text) may be used that way. And the stand-in a
//! refused Execute sends names a portal no client can know: with a fixed name, a client
//! could Bind its own DELETE under it and have a refused Execute run it. An attack review
//! found all three.

use lockbox::policy::AccessLevel;

use crate::frontend::{bind, bind_with, execute, parse, sync};
use crate::harness::{errors_in, query, Env, Raw};

pub(crate) async fn session(env: &Env, access: AccessLevel) -> Raw {
    let (_id, token) = env.approved_token_for("eve", "1h", access).await;
    let mut raw = Raw::login(env, "eve", &token).await;
    raw.read_until_ready().await;
    raw
}

pub(crate) fn codes(bytes: &[u8]) -> Vec<String> {
    errors_in(bytes).into_iter().map(|(c, _)| c).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_named_like_the_old_stand_in_is_not_run_by_a_refused_execute() {
    let env = Env::start("names_unrecorded_stand_in").await;
    let mut raw = session(&env, AccessLevel::Write).await;
    raw.send(
        &[
            parse("d", "DELETE FROM items WHERE id = 3 RETURNING id"),
            bind("lockbox\nrefused this portal", "d"),
            execute("nosuch"),
            sync(),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_ready().await;
    assert_eq!(codes(&answer), ["42501"], "the Execute is refused");
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_fetch_from_a_protocol_portal_is_refused() {
    let env = Env::start("names_unrecorded_fetch").await;
    let mut raw = session(&env, AccessLevel::Write).await;
    raw.send(&query("BEGIN")).await;
    raw.read_until_ready().await;
    raw.send(
        &[
            parse("d", "DELETE FROM items WHERE id = 4 RETURNING id"),
            bind("p", "d"),
            sync(),
        ]
        .concat(),
    )
    .await;
    raw.read_until_ready().await;
    raw.send(&query("FETCH ALL FROM p")).await;
    let answer = raw.read_until_ready().await;
    assert_eq!(codes(&answer), ["42501"]);
    raw.send(&query("COMMIT")).await;
    raw.read_until_ready().await;
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "10");
    // A cursor made by SQL DECLARE, whose record holds its query, may be fetched.
    raw.send(&query("BEGIN; DECLARE c CURSOR FOR SELECT id FROM items"))
        .await;
    raw.read_until_ready().await;
    raw.send(&query("FETCH 2 FROM c")).await;
    let fetched = raw.read_until_ready().await;
    assert!(codes(&fetched).is_empty(), "{:?}", errors_in(&fetched));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_execute_of_a_parsed_statement_is_refused() {
    let env = Env::start("names_unrecorded_execute").await;
    let mut raw = session(&env, AccessLevel::Read).await;
    raw.send(&[parse("s", "SELECT id FROM items"), sync()].concat())
        .await;
    raw.read_until_ready().await;
    raw.send(&query("EXECUTE s")).await;
    let answer = raw.read_until_ready().await;
    assert_eq!(codes(&answer), ["42501"]);
    // One made by SQL PREPARE, whose record holds its text, may be executed.
    raw.send(&query("PREPARE q AS SELECT id FROM items")).await;
    raw.read_until_ready().await;
    raw.send(&query("EXECUTE q")).await;
    let ran = raw.read_until_ready().await;
    assert!(codes(&ran).is_empty(), "{:?}", errors_in(&ran));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_execute_of_a_name_an_unanswered_earlier_query_changes_is_refused() {
    // A re-PREPARE the server rejects (42P05) would leave the old statement to run under
    // the record "EXECUTE s"; the proxy cannot know yet whether it will be rejected.
    let env = Env::start("names_unrecorded_uncertain").await;
    let mut raw = session(&env, AccessLevel::Write).await;
    raw.send(&query("PREPARE s AS DELETE FROM items WHERE id = 5"))
        .await;
    raw.read_until_ready().await;
    raw.send(&[query("PREPARE s AS SELECT 1"), query("EXECUTE s")].concat())
        .await;
    let answer = raw.read_until_readies(2).await;
    assert_eq!(codes(&answer), ["42P05", "42501"]);
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "10");
    // Within one query string the PREPARE decides: if it fails, the rest is skipped.
    raw.send(&query("PREPARE t AS SELECT 1; EXECUTE t")).await;
    let ran = raw.read_until_ready().await;
    assert!(codes(&ran).is_empty(), "{:?}", errors_in(&ran));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parsed_statement_run_below_the_top_is_refused_like_execute() {
    // `EXECUTE s` nested where the grammar allows it runs `s` too: its text, made by a
    // Parse, would be in no record (an attack review found `EXPLAIN ANALYZE CREATE TABLE …
    // AS EXECUTE s` deleting rows recorded as "ddl").
    let env = Env::start("names_unrecorded_nested").await;
    let mut raw = session(&env, AccessLevel::Write).await;
    raw.send(
        &[
            parse(
                "s",
                "WITH d AS (DELETE FROM items WHERE id >= 9 RETURNING *) SELECT * FROM d",
            ),
            sync(),
        ]
        .concat(),
    )
    .await;
    raw.read_until_ready().await;
    for sql in [
        "EXPLAIN ANALYZE CREATE TEMP TABLE z AS EXECUTE s",
        "EXPLAIN (ANALYZE, COSTS OFF) CREATE TEMP TABLE z AS EXECUTE s",
        "CREATE TEMP TABLE z AS EXECUTE s",
    ] {
        raw.send(&query(sql)).await;
        let answer = raw.read_until_ready().await;
        assert_eq!(codes(&answer), ["42501"], "{sql}: {:?}", errors_in(&answer));
    }
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "10");
    // One made by SQL PREPARE, whose record holds its text, may run there.
    raw.send(&query("PREPARE q AS SELECT id FROM items WHERE id < 3"))
        .await;
    raw.read_until_ready().await;
    raw.send(&query("EXPLAIN ANALYZE CREATE TEMP TABLE z AS EXECUTE q"))
        .await;
    let ran = raw.read_until_ready().await;
    assert!(codes(&ran).is_empty(), "{:?}", errors_in(&ran));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_outlives_deallocate_all_and_discard_all_in_the_record_too() {
    // The server drops only named statements on DEALLOCATE ALL and DISCARD ALL: a Bind of
    // the unnamed one afterwards runs its text, which its Execute's record must hold (an
    // attack review found it recorded as a statement lockbox "did not see prepared").
    let env = Env::start("names_unrecorded_unnamed").await;
    let mut raw = session(&env, AccessLevel::Admin).await;
    for (id, all) in [(10, "DEALLOCATE ALL"), (9, "DISCARD ALL")] {
        let marker = format!("survivor of {all}");
        let delete = format!("DELETE FROM items WHERE id = {id} /* {marker} */");
        raw.send(&[parse("", &delete), sync()].concat()).await;
        raw.read_until_ready().await;
        raw.send(&[parse("d", all), bind("", "d"), execute(""), sync()].concat())
            .await;
        let dropped = raw.read_until_ready().await;
        assert!(
            codes(&dropped).is_empty(),
            "{all}: {:?}",
            errors_in(&dropped)
        );
        raw.send(&[bind("", ""), execute(""), sync()].concat())
            .await;
        let ran = raw.read_until_ready().await;
        assert!(codes(&ran).is_empty(), "{all}: {:?}", errors_in(&ran));
        assert_eq!(
            env.superuser_sql(&format!("SELECT count(*) FROM items WHERE id = {id}")),
            "0",
            "the server ran the unnamed statement after {all}"
        );
        env.wait_for_audit(&marker, |records| {
            records.iter().any(|r| {
                r["type"] == "statement"
                    && r["statement"].as_str().is_some_and(|s| s.contains(&marker))
            })
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_grant_may_not_run_a_parsed_statement_by_name_either() {
    // An admin may do anything, but not unrecorded: SQL EXECUTE of a Parse'd statement, or
    // FETCH from a Bind's portal, would run text no record holds.
    let env = Env::start("names_unrecorded_admin").await;
    let mut raw = session(&env, AccessLevel::Admin).await;
    raw.send(
        &[
            parse("s", "DELETE FROM items WHERE id = 7 RETURNING id"),
            sync(),
        ]
        .concat(),
    )
    .await;
    raw.read_until_ready().await;
    for sql in [
        "EXECUTE s",
        "EXPLAIN ANALYZE CREATE TEMP TABLE z AS EXECUTE s",
    ] {
        raw.send(&query(sql)).await;
        let answer = raw.read_until_ready().await;
        assert_eq!(codes(&answer), ["42501"], "{sql}: {:?}", errors_in(&answer));
    }
    raw.send(&query("BEGIN")).await;
    raw.read_until_ready().await;
    raw.send(&[bind("p", "s"), sync()].concat()).await;
    raw.read_until_ready().await;
    raw.send(&query("FETCH ALL FROM p")).await;
    let fetched = raw.read_until_ready().await;
    assert_eq!(codes(&fetched), ["42501"], "{:?}", errors_in(&fetched));
    raw.send(&query("ROLLBACK")).await;
    raw.read_until_ready().await;
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "10");
    // The statement itself runs through the protocol, its Execute recording its text.
    raw.send(&[bind("", "s"), execute(""), sync()].concat())
        .await;
    let ran = raw.read_until_ready().await;
    assert!(codes(&ran).is_empty(), "{:?}", errors_in(&ran));
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_grant_does_not_run_a_name_an_unanswered_change_may_leave_to_a_parse() {
    // A change the server may not make (a re-PREPARE it rejects, a DEALLOCATE or CLOSE it
    // skips after an error) leaves the name to the Parse or Bind before it, whose text no
    // record holds: an attack review ran such text under an admin grant.
    let env = Env::start("names_unrecorded_admin_uncertain").await;
    let mut raw = session(&env, AccessLevel::Admin).await;
    let secret = |n: u32| format!("DELETE FROM items WHERE id = {n} RETURNING 'never recorded'");
    raw.send(&[parse("s1", &secret(10)), parse("s2", &secret(9)), sync()].concat())
        .await;
    raw.read_until_ready().await;
    raw.send(&[query("PREPARE s1 AS SELECT 'decoy'"), query("EXECUTE s1")].concat())
        .await;
    let answer = raw.read_until_readies(2).await;
    assert_eq!(
        codes(&answer),
        ["42P05", "42501"],
        "{:?}",
        errors_in(&answer)
    );
    raw.send(&[query("SELECT 1/0; DEALLOCATE s2"), query("EXECUTE s2")].concat())
        .await;
    let answer = raw.read_until_readies(2).await;
    assert_eq!(
        codes(&answer),
        ["22012", "42501"],
        "{:?}",
        errors_in(&answer)
    );
    // A portal a skipped CLOSE leaves.
    raw.send(&query("BEGIN")).await;
    raw.read_until_ready().await;
    raw.send(&[parse("s3", &secret(8)), bind("p3", "s3"), sync()].concat())
        .await;
    raw.read_until_ready().await;
    raw.send(
        &[
            query("SAVEPOINT a; SELECT 1/0; CLOSE p3"),
            query("ROLLBACK TO a"),
            query("FETCH ALL FROM p3"),
        ]
        .concat(),
    )
    .await;
    let answer = raw.read_until_readies(3).await;
    assert_eq!(
        codes(&answer),
        ["22012", "42501"],
        "{:?}",
        errors_in(&answer)
    );
    raw.send(&query("COMMIT")).await;
    raw.read_until_ready().await;
    assert_eq!(env.superuser_sql("SELECT count(*) FROM items"), "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_to_xml_of_a_bound_portal_is_refused_at_every_level() {
    // `cursor_to_xml('p', …)` fetches from any portal, a Bind's too (its statement's text
    // and parameters in no record), by a name that is a value.
    let env = Env::start("names_unrecorded_cursor_to_xml").await;
    for access in [AccessLevel::Read, AccessLevel::Write, AccessLevel::Admin] {
        let mut raw = session(&env, access).await;
        raw.send(&query("BEGIN")).await;
        raw.read_until_ready().await;
        raw.send(&[parse("", "SELECT id FROM items"), bind("p", ""), sync()].concat())
            .await;
        raw.read_until_ready().await;
        for sql in [
            "SELECT cursor_to_xml('p', 10, false, false, '')",
            "SELECT pg_catalog.cursor_to_xmlschema('p', false, false, '')",
        ] {
            raw.send(&query(sql)).await;
            let answer = raw.read_until_ready().await;
            assert_eq!(
                codes(&answer),
                ["42501"],
                "{access:?} {sql}: {:?}",
                errors_in(&answer)
            );
            raw.send(&query("ROLLBACK; BEGIN")).await;
            raw.read_until_readies(1).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_or_execute_records_what_it_runs_by_name_as_it_runs() {
    // A FETCH from a portal a Bind made of a prepared DELETE runs it with the Bind's value:
    // its record holds the value and the kind `delete`, in a query string and as a Parse'd
    // statement; a Parse'd `EXECUTE s` takes the kind `s` has when it runs, not when the
    // Parse came (attack reviews found them recorded as `select`/`other`, the values in no
    // record).
    let env = Env::start("names_unrecorded_by_name").await;
    let (request, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&query(
        "PREPARE d(int) AS DELETE FROM items WHERE id = $1 RETURNING id",
    ))
    .await;
    raw.read_until_ready().await;
    raw.send(&query("BEGIN")).await;
    raw.read_until_ready().await;
    raw.send(
        &[
            parse("q", "FETCH ALL FROM p"),
            bind_with("p", "d", &["4"]),
            bind("", "q"),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    let fetched = raw.read_until_ready().await;
    assert!(codes(&fetched).is_empty(), "{:?}", errors_in(&fetched));
    raw.send(&[bind_with("p3", "d", &["3"]), sync()].concat())
        .await;
    raw.read_until_ready().await;
    raw.send(&query("FETCH ALL FROM p3")).await;
    let fetched = raw.read_until_ready().await;
    assert!(codes(&fetched).is_empty(), "{:?}", errors_in(&fetched));
    raw.send(&query("COMMIT")).await;
    raw.read_until_ready().await;
    // An EXECUTE parsed before its statement exists.
    raw.send(&[parse("e", "EXECUTE later"), sync()].concat())
        .await;
    raw.read_until_ready().await;
    raw.send(&query("PREPARE later AS DELETE FROM items WHERE id = 6"))
        .await;
    raw.read_until_ready().await;
    raw.send(&[bind("", "e"), execute(""), sync()].concat())
        .await;
    let ran = raw.read_until_ready().await;
    assert!(codes(&ran).is_empty(), "{:?}", errors_in(&ran));
    assert_eq!(
        env.superuser_sql("SELECT count(*) FROM items WHERE id IN (3, 4, 6)"),
        "0"
    );
    let records = env
        .wait_for_audit("both records", |records| {
            records.iter().any(|r| r["statement"] == "EXECUTE later")
        })
        .await;
    let of = |text: &str| {
        records
            .iter()
            .find(|r| r["statement"] == text && r["request_id"] == request.as_str())
            .unwrap_or_else(|| panic!("{text} is recorded"))
            .clone()
    };
    for (text, value) in [("FETCH ALL FROM p", "4"), ("FETCH ALL FROM p3", "3")] {
        let fetch = of(text);
        assert_eq!(fetch["kind"], "delete", "{fetch}");
        assert_eq!(fetch["params"], serde_json::json!([value]), "{fetch}");
    }
    let execute = of("EXECUTE later");
    assert_eq!(execute["kind"], "delete", "{execute}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_from_a_cursor_a_parsed_declare_opened_records_the_declares_values() {
    // A Parse'd `DECLARE c CURSOR … $1` run with a Bind value opens a cursor whose query
    // runs with that value as it is fetched: a later SQL `FETCH c` records the value, as a
    // FETCH from a Bind's portal does (a review found it in the DECLARE's record only).
    let env = Env::start("names_unrecorded_declare_values").await;
    let (request, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&query("BEGIN")).await;
    raw.read_until_ready().await;
    raw.send(
        &[
            parse(
                "d",
                "DECLARE c CURSOR FOR SELECT id FROM items WHERE id = $1::int",
            ),
            bind_with("", "d", &["5"]),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    let declared = raw.read_until_ready().await;
    assert!(codes(&declared).is_empty(), "{:?}", errors_in(&declared));
    raw.send(&query("FETCH ALL FROM c")).await;
    let fetched = raw.read_until_ready().await;
    assert!(codes(&fetched).is_empty(), "{:?}", errors_in(&fetched));
    // The server ran the cursor's query with 5: one row, id 5.
    assert_eq!(crate::harness::rows_in(&fetched), 1);
    let records = env
        .wait_for_audit("the fetch", |records| {
            records.iter().any(|r| {
                r["statement"] == "FETCH ALL FROM c" && r["request_id"] == request.as_str()
            })
        })
        .await;
    let fetch = records
        .iter()
        .find(|r| r["statement"] == "FETCH ALL FROM c" && r["request_id"] == request.as_str())
        .expect("recorded");
    assert_eq!(fetch["params"], serde_json::json!(["5"]), "{fetch}");
}
