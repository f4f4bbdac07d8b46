use super::*;

fn stmt(text: &str) -> Prepared {
    Prepared {
        text: text.into(),
        kind: StatementKind::Other,
        names: None,
        catalog_only: false,
        catalog_unqualified: false,
        plan_only: false,
        copy_in: false,
        recorded: false,
        code_epoch: 0,
        mentions: None,
    }
}

fn text_of(s: &Statements, portal: &str) -> String {
    s.portal(portal)
        .map(|p| p.statement.text.to_string())
        .unwrap_or_default()
}

/// A Sync: its ReadyForQuery settles what came before it.
fn sync(s: &mut Statements, status: u8) {
    let id = s.message();
    s.settle(Some(id), status);
}

#[test]
fn a_rejected_parse_does_not_replace_the_statement() {
    let mut s = Statements::default();
    let parse = s.parse("s1".into(), stmt("DELETE FROM t")).expect("parse");
    s.confirm(parse, None).expect("confirmed");
    sync(&mut s, b'I');
    // The server answers 42P05 (already exists): no ParseComplete.
    s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
    sync(&mut s, b'I');
    s.bind("".into(), "s1", Arc::from([])).expect("bind");
    assert_eq!(text_of(&s, ""), "DELETE FROM t");
}

#[test]
fn a_failed_parse_of_the_unnamed_statement_leaves_none() {
    let mut s = Statements::default();
    let parse = s.parse("".into(), stmt("SELECT 'old'")).expect("parse");
    s.confirm(parse, None).expect("confirmed");
    s.parse("s1".into(), stmt("SELECT 'named'"))
        .map(|id| s.confirm(id, None))
        .expect("parse")
        .expect("confirmed");
    sync(&mut s, b'I');
    // The server drops its unnamed statement before it parses the new one, which fails.
    let failing = s.parse("".into(), stmt("SELEC 'new'")).expect("parse");
    s.failed(failing);
    sync(&mut s, b'I');
    assert!(s.statement("").is_none() && !s.knows_statement(""));
    // A named one that fails keeps what the name held.
    let failing = s.parse("s1".into(), stmt("SELEC 'new'")).expect("parse");
    s.failed(failing);
    sync(&mut s, b'I');
    assert_eq!(
        s.statement("s1").map(|p| p.text.to_string()).as_deref(),
        Some("SELECT 'named'")
    );
    assert_eq!(s.retained(), s.prepared.bytes(), "nothing is left waiting");
}

#[test]
fn a_refused_parse_of_the_unnamed_statement_leaves_none_once_its_stand_in_failed() {
    let mut s = Statements::default();
    let parse = s.parse("".into(), stmt("SELECT 'old'")).expect("parse");
    s.confirm(parse, None).expect("confirmed");
    sync(&mut s, b'I');
    assert_eq!(
        s.refused_parse("s1").expect("named"),
        None,
        "a named one changes nothing"
    );
    let refused = s.refused_parse("").expect("refused").expect("numbered");
    // The server skips the rest of the group: it is recorded as it would have run.
    assert_eq!(
        s.statement("").map(|p| p.text.to_string()).as_deref(),
        Some("SELECT 'old'")
    );
    assert!(s.statement_certain(""));
    let sync_id = s.end_group();
    assert!(
        s.statement("").is_none() && !s.statement_certain(""),
        "past the Sync, what relies on it waits for its answer"
    );
    s.failed(refused);
    s.settle(Some(sync_id), b'I');
    assert!(s.statement("").is_none());
    // One the server skipped (an error earlier in its group) dropped nothing.
    let parse = s.parse("".into(), stmt("SELECT 'again'")).expect("parse");
    s.confirm(parse, None).expect("confirmed");
    sync(&mut s, b'I');
    s.refused_parse("").expect("refused");
    sync(&mut s, b'I');
    assert_eq!(
        s.statement("").map(|p| p.text.to_string()).as_deref(),
        Some("SELECT 'again'")
    );
}

#[test]
fn a_query_string_that_ran_drops_the_unnamed_statement_and_portal() {
    let mut s = Statements::default();
    let parse = s.parse("".into(), stmt("SELECT 'old'")).expect("parse");
    s.confirm(parse, None).expect("confirmed");
    let bind = s.bind("".into(), "", Arc::from([])).expect("bind");
    s.confirm(bind, None).expect("confirmed");
    sync(&mut s, b'T');
    // One the server skipped (an extended error before it, up to the Sync) drops nothing.
    s.end_query(true).expect("query");
    assert!(
        s.statement("").is_none(),
        "what the pipeline sends next finds none"
    );
    sync(&mut s, b'T');
    assert_eq!(text_of(&s, ""), "SELECT 'old'");
    assert!(s.statement("").is_some());
    // An empty one drops the statement only.
    let end = s.end_query(false).expect("query");
    s.settle(Some(end), b'T');
    assert!(s.statement("").is_none());
    assert_eq!(text_of(&s, ""), "SELECT 'old'");
    let end = s.end_query(true).expect("query");
    assert!(s.portal("").is_none());
    s.settle(Some(end), b'T');
    assert!(s.portal("").is_none() && s.statement("").is_none());
    // One that failed may have left a failed portal in the old one's place.
    let bind = s.bind("".into(), "", Arc::from([])).expect("bind");
    s.confirm(bind, None).expect("confirmed");
    sync(&mut s, b'T');
    let end = s.end_query(true).expect("query");
    s.server_failed();
    s.settle(Some(end), b'E');
    assert!(s.portal("").is_none());
    // A Bind of the unnamed portal that fails leaves none lockbox knows of: the server
    // drops the old one before the steps that may fail.
    let bind = s.bind("".into(), "", Arc::from([])).expect("bind");
    s.failed(bind);
    sync(&mut s, b'E');
    assert!(s.portal("").is_none());
    // With nothing unnamed and nothing waiting, a query string keeps no change.
    s.end_query(true).expect("query");
    assert_eq!(s.pending_load(), (0, 0));
}

#[test]
fn a_name_changed_in_an_earlier_group_is_uncertain_until_that_group_settles() {
    let mut s = Statements::default();
    let parse = s.parse("s1".into(), stmt("DELETE FROM t")).expect("parse");
    s.confirm(parse, None).expect("confirmed");
    sync(&mut s, b'T');
    assert!(s.statement_certain("s1"));
    // Pipelined: a Parse of the same name (the server will reject it: 42P05), its
    // Sync, then a Bind.
    s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
    assert!(
        s.statement_certain("s1"),
        "in its own group the Parse decides: if it fails, the rest is skipped"
    );
    let group_end = s.end_group();
    assert!(
        !s.statement_certain("s1"),
        "past its Sync it may have failed"
    );
    assert!(
        s.statement_certain("s2"),
        "a name nothing changes is certain"
    );
    s.settle(Some(group_end), b'T');
    assert!(s.statement_certain("s1"));
    s.bind("p".into(), "s1", Arc::from([])).expect("bind");
    assert_eq!(text_of(&s, "p"), "DELETE FROM t");
    // Portals likewise.
    assert!(s.portal_certain("p"));
    let group_end = s.end_group();
    assert!(!s.portal_certain("p"));
    s.settle(Some(group_end), b'T');
    assert!(s.portal_certain("p"));
    // DISCARD ALL decides every name.
    s.sql(SqlChange::DiscardAll).expect("discard");
    s.end_group();
    assert!(!s.statement_certain("s2") && !s.portal_certain("q"));
}

#[test]
fn the_changes_waiting_and_their_text_are_counted_until_answered() {
    let mut s = Statements::default();
    let parse = s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
    s.bind("".into(), "s1", Arc::from([])).expect("bind");
    assert_eq!(
        s.pending_load(),
        (2, "SELECT 1".len()),
        "a Bind shares its text"
    );
    assert_eq!(text_of(&s, ""), "SELECT 1");
    s.confirm(parse, None).expect("confirmed");
    assert_eq!(s.pending_load(), (1, 0));
    let group_end = s.end_group();
    s.settle(Some(group_end), b'I');
    assert_eq!(s.pending_load(), (0, 0));
    assert_eq!(
        s.statement("s1").map(|p| p.text.to_string()).as_deref(),
        Some("SELECT 1"),
        "a name no pending change touches is found without a walk"
    );
    // A bound on text: what waits may not grow past it.
    let big = "x".repeat(MAX_PENDING_TEXT / 2 + 1);
    s.parse("a".into(), stmt(&big)).expect("half fits");
    assert!(
        s.parse("b".into(), stmt(&big)).is_err(),
        "the second half does not"
    );
}

#[test]
fn in_flight_changes_are_seen_by_later_messages_of_the_pipeline() {
    let mut s = Statements::default();
    let parse = s.parse("".into(), stmt("SELECT 2")).expect("parse");
    let bind = s.bind("".into(), "", Arc::from([])).expect("bind");
    assert_eq!(text_of(&s, ""), "SELECT 2");
    s.confirm(parse, None).expect("parse confirmed");
    s.confirm(bind, None).expect("bind confirmed");
    sync(&mut s, b'T');
    assert_eq!(text_of(&s, ""), "SELECT 2");
    sync(&mut s, b'I');
    assert_eq!(text_of(&s, ""), "", "portals end with the transaction");
}

#[test]
fn a_confirmation_takes_effect_only_for_the_message_it_answers() {
    // Two Parses of one name: the reply to the second cannot confirm the first's text,
    // whatever was left waiting before it.
    let mut s = Statements::default();
    s.parse("s1".into(), stmt("SELECT 'harmless'"))
        .expect("parse");
    let real = s
        .parse("s1".into(), stmt("UPDATE t SET x = 1"))
        .expect("parse");
    s.confirm(real, None).expect("confirmed");
    sync(&mut s, b'I');
    s.bind("".into(), "s1", Arc::from([])).expect("bind");
    assert_eq!(text_of(&s, ""), "UPDATE t SET x = 1");
}

#[test]
fn a_reply_for_a_message_that_changed_nothing_is_lost_track() {
    let mut s = Statements::default();
    let parse = s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
    let describe = s.message();
    assert!(
        s.confirm(describe, None).is_err(),
        "no change was made by it"
    );
    // A settled message cannot be confirmed afterwards either.
    sync(&mut s, b'I');
    assert!(s.confirm(parse, None).is_err());
    // Nor can a Parse be confirmed by a SQL statement's tag.
    let parse = s.parse("s2".into(), stmt("SELECT 2")).expect("parse");
    assert!(s.confirm(parse, Some("PREPARE")).is_err());
}

#[test]
fn sql_prepare_and_deallocate_share_the_namespace_of_parse() {
    let mut s = Statements::default();
    let parse = s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
    s.confirm(parse, None).expect("confirmed");
    sync(&mut s, b'I');
    // DEALLOCATE s1; PREPARE s1 AS DELETE … in one simple Query, both confirmed.
    let deallocate = s
        .sql(SqlChange::Deallocate(Some("s1".into())))
        .expect("deallocate");
    let prepare = s
        .sql(SqlChange::Prepare(
            "s1".into(),
            stmt("PREPARE s1 AS DELETE FROM t"),
        ))
        .expect("prepare");
    s.confirm(deallocate, Some("DEALLOCATE"))
        .expect("confirmed");
    s.confirm(prepare, Some("PREPARE")).expect("confirmed");
    sync(&mut s, b'I');
    s.bind("".into(), "s1", Arc::from([])).expect("bind");
    assert_eq!(text_of(&s, ""), "PREPARE s1 AS DELETE FROM t");
}

#[test]
fn an_unconfirmed_sql_change_never_happened() {
    let mut s = Statements::default();
    let parse = s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
    s.confirm(parse, None).expect("confirmed");
    sync(&mut s, b'I');
    // DEALLOCATE ALL fails (inside an aborted transaction, say): no CommandComplete.
    s.sql(SqlChange::Deallocate(None)).expect("deallocate");
    sync(&mut s, b'E');
    s.bind("".into(), "s1", Arc::from([])).expect("bind");
    assert_eq!(text_of(&s, ""), "SELECT 1");
    // One that completes as something else changed nothing either.
    let odd = s.sql(SqlChange::Deallocate(None)).expect("deallocate");
    s.confirm(odd, Some("SELECT 1"))
        .expect("a statement's own tag");
    sync(&mut s, b'I');
    s.bind("".into(), "s1", Arc::from([])).expect("bind");
    assert_eq!(text_of(&s, ""), "SELECT 1");
}

#[test]
fn deallocate_all_and_discard_all_leave_the_unnamed_statement() {
    // The server keeps its unnamed statement apart from the named ones: both statements
    // drop the named ones only, and a later Bind of "" runs the unnamed one's text.
    for change in [SqlChange::Deallocate(None), SqlChange::DiscardAll] {
        let mut s = Statements::default();
        let unnamed = s.parse("".into(), stmt("DELETE FROM t")).expect("parse");
        let named = s.parse("s1".into(), stmt("SELECT 1")).expect("parse");
        s.confirm(unnamed, None).expect("confirmed");
        s.confirm(named, None).expect("confirmed");
        sync(&mut s, b'I');
        let tag = match change {
            SqlChange::DiscardAll => "DISCARD ALL",
            _ => "DEALLOCATE ALL",
        };
        let all = s.sql(change).expect("change");
        s.confirm(all, Some(tag)).expect("confirmed");
        sync(&mut s, b'I');
        assert!(s.statement("s1").is_none(), "{tag}: the named one is gone");
        s.bind("".into(), "", Arc::from([])).expect("bind");
        assert_eq!(text_of(&s, ""), "DELETE FROM t", "{tag}");
    }
}

#[test]
fn declared_cursors_are_portals_and_held_ones_outlive_the_transaction() {
    let mut s = Statements::default();
    let cursor = |text: &str, held| Portal {
        statement: stmt(text),
        params: Arc::from([]),
        held,
        rows: 0,
        opened_in: None,
    };
    let c = s
        .sql(SqlChange::Declare(
            "c".into(),
            cursor("DECLARE c CURSOR FOR SELECT 1", false),
        ))
        .expect("declare");
    let h = s
        .sql(SqlChange::Declare(
            "h".into(),
            cursor("DECLARE h CURSOR WITH HOLD FOR SELECT 2", true),
        ))
        .expect("declare");
    s.confirm(c, Some("DECLARE CURSOR")).expect("confirmed");
    s.confirm(h, Some("DECLARE CURSOR")).expect("confirmed");
    sync(&mut s, b'T');
    assert_eq!(text_of(&s, "c"), "DECLARE c CURSOR FOR SELECT 1");
    sync(&mut s, b'I');
    assert_eq!(
        text_of(&s, "c"),
        "",
        "a plain cursor ends with its transaction"
    );
    assert_eq!(text_of(&s, "h"), "DECLARE h CURSOR WITH HOLD FOR SELECT 2");
    let discard = s.sql(SqlChange::DiscardAll).expect("discard");
    s.confirm(discard, Some("DISCARD ALL")).expect("confirmed");
    sync(&mut s, b'I');
    assert_eq!(text_of(&s, "h"), "");
}

#[test]
fn a_portals_rows_add_up_until_its_name_is_bound_again() {
    let mut s = Statements::default();
    let parse = s.parse("".into(), stmt("SELECT 1")).expect("parse");
    let bind = s.bind("".into(), "", Arc::from([])).expect("bind");
    assert_eq!(s.take_row(""), None, "not open until the server says so");
    s.confirm(parse, None).expect("parse confirmed");
    s.confirm(bind, None).expect("bind confirmed");
    assert_eq!(s.take_row(""), Some(1));
    assert_eq!(
        s.take_row(""),
        Some(2),
        "a second Execute adds to the first's"
    );
    let again = s.bind("".into(), "", Arc::from([])).expect("bind");
    s.confirm(again, None).expect("bind confirmed");
    assert_eq!(s.take_row(""), Some(1), "a new portal of the same name");
    assert_eq!(s.take_row("c"), None);
}

fn held_cursor(s: &mut Statements, name: &str) {
    let portal = Portal {
        statement: stmt("DECLARE … CURSOR WITH HOLD FOR SELECT 1"),
        params: Arc::from([]),
        held: true,
        rows: 0,
        opened_in: None,
    };
    let id = s
        .sql(SqlChange::Declare(name.into(), portal))
        .expect("declare");
    s.confirm(id, Some("DECLARE CURSOR")).expect("confirmed");
}

fn end_transaction(s: &mut Statements, tag: &str) {
    let id = s.sql(SqlChange::EndTransaction).expect("end");
    s.confirm(id, Some(tag)).expect("confirmed");
}

#[test]
fn a_held_cursor_of_a_transaction_that_aborts_ends_with_it() {
    // As PostgreSQL does (checked with pg_cursors): WITH HOLD keeps a cursor past its
    // transaction's commit only.
    let mut s = Statements::default();
    held_cursor(&mut s, "rolled_back");
    end_transaction(&mut s, "ROLLBACK");
    assert!(s.portal("rolled_back").is_none(), "ROLLBACK");

    held_cursor(&mut s, "commit_of_failed");
    end_transaction(&mut s, "ROLLBACK");
    assert!(s.portal("commit_of_failed").is_none(), "a failed COMMIT");

    held_cursor(&mut s, "implicit");
    s.server_failed();
    sync(&mut s, b'I');
    assert!(
        s.portal("implicit").is_none(),
        "an error in the query string's implicit transaction"
    );

    held_cursor(&mut s, "committed");
    end_transaction(&mut s, "COMMIT");
    s.server_failed();
    sync(&mut s, b'I');
    assert!(
        s.portal("committed").is_some(),
        "committed before the error, in a transaction of its own"
    );
    held_cursor(&mut s, "later");
    end_transaction(&mut s, "ROLLBACK");
    assert!(
        s.portal("committed").is_some(),
        "a rollback does not reach back past a commit"
    );
    // BEGIN; DECLARE …; SAVEPOINT s; a failing statement; ROLLBACK TO s; COMMIT.
    held_cursor(&mut s, "before_the_savepoint");
    s.server_failed();
    sync(&mut s, b'E');
    sync(&mut s, b'T');
    end_transaction(&mut s, "COMMIT");
    sync(&mut s, b'I');
    assert!(
        s.portal("before_the_savepoint").is_some(),
        "an error in an earlier group, rolled back to a savepoint, is no abort"
    );
}

#[test]
fn an_unanswered_end_of_transaction_decides_the_cursors_opened_in_it() {
    let mut s = Statements::default();
    held_cursor(&mut s, "old");
    sync(&mut s, b'I');
    held_cursor(&mut s, "new");
    let end = s.sql(SqlChange::EndTransaction).expect("end");
    assert!(
        s.portal("old").is_some(),
        "held from before: kept either way"
    );
    assert!(
        s.portal("new").is_none(),
        "kept only if the transaction commits"
    );
    s.end_group();
    assert!(
        !s.portal_certain("old"),
        "an earlier group's end is unanswered"
    );
    s.confirm(end, Some("COMMIT")).expect("confirmed");
    assert!(s.portal("new").is_some());
}

fn transaction_step(s: &mut Statements, change: SqlChange, tag: &str) {
    let id = s.sql(change).expect("change");
    s.confirm(id, Some(tag)).expect("confirmed");
}

#[test]
fn a_rollback_to_a_savepoint_ends_the_cursors_opened_since_it() {
    let mut s = Statements::default();
    held_cursor(&mut s, "before");
    transaction_step(&mut s, SqlChange::Savepoint("a".into()), "SAVEPOINT");
    held_cursor(&mut s, "under_a");
    transaction_step(&mut s, SqlChange::Savepoint("b".into()), "SAVEPOINT");
    held_cursor(&mut s, "under_b");
    transaction_step(&mut s, SqlChange::Release("b".into()), "RELEASE");
    let rollback = s
        .sql(SqlChange::RollbackTo("a".into()))
        .expect("rollback to");
    assert!(
        s.portal("under_a").is_none(),
        "which savepoint is meant is not settled until the server answers"
    );
    s.confirm(rollback, Some("ROLLBACK")).expect("confirmed");
    assert!(s.portal("before").is_some(), "opened before the savepoint");
    assert!(s.portal("under_a").is_none());
    assert!(
        s.portal("under_b").is_none(),
        "released into a's level first"
    );
    // The savepoint stays after a rollback to it; an unknown name changes nothing.
    held_cursor(&mut s, "again");
    transaction_step(&mut s, SqlChange::RollbackTo("nosuch".into()), "ROLLBACK");
    assert!(s.portal("again").is_some());
    transaction_step(&mut s, SqlChange::RollbackTo("a".into()), "ROLLBACK");
    assert!(s.portal("again").is_none());
    end_transaction(&mut s, "COMMIT");
    assert!(s.portal("before").is_some());
}

/// What the session keeps for its statements and portals is counted as they come and go,
/// so the relay can hold it to the shared budget (`MessageShare::hold_kept`).
#[test]
fn what_statements_and_portals_keep_is_counted_as_they_come_and_go() {
    let mut s = Statements::default();
    assert_eq!(s.retained(), 0);
    let text = "x".repeat(10_000);
    // Waiting for the server, then kept: counted either way.
    let parse = s.parse("s1".into(), stmt(&text)).expect("parse");
    let waiting = s.retained();
    assert!(waiting >= 10_000, "{waiting}");
    s.confirm(parse, None).expect("confirmed");
    sync(&mut s, b'I');
    let one = s.retained();
    assert!(one >= 10_000, "{one}");
    // A second statement adds its own text.
    let parse = s.parse("s2".into(), stmt(&text)).expect("parse");
    s.confirm(parse, None).expect("confirmed");
    sync(&mut s, b'T');
    assert!(s.retained() >= one + 10_000);
    // A portal's parameter values count, waiting and kept; the transaction's end drops it.
    let before_bind = s.retained();
    let params: Arc<[serde_json::Value]> =
        Arc::from([serde_json::Value::String("y".repeat(50_000))]);
    let bind = s.bind("p".into(), "s1", params).expect("bind");
    assert!(s.retained() >= before_bind + 50_000);
    s.confirm(bind, None).expect("confirmed");
    assert!(s.retained() >= before_bind + 50_000);
    sync(&mut s, b'I');
    assert_eq!(
        s.retained(),
        before_bind,
        "the portal ended with its transaction"
    );
    // A Parse the server never took gives its text back once its group settles.
    s.parse("s3".into(), stmt(&text)).expect("parse");
    assert!(s.retained() >= before_bind + 10_000);
    sync(&mut s, b'I');
    assert_eq!(s.retained(), before_bind);
    // Closing and DEALLOCATE ALL give the rest back.
    let close = s.close_statement("s2".into()).expect("close");
    s.confirm(close, None).expect("confirmed");
    assert_eq!(s.retained(), one);
    let all = s.sql(SqlChange::Deallocate(None)).expect("deallocate");
    s.confirm(all, Some("DEALLOCATE ALL")).expect("confirmed");
    assert_eq!(s.retained(), 0);
}

/// Replacing the unnamed statement keeps one text, not both.
#[test]
fn a_replaced_statement_weighs_only_what_replaced_it() {
    let mut s = Statements::default();
    for size in [40_000, 10_000] {
        let parse = s
            .parse(String::new(), stmt(&"x".repeat(size)))
            .expect("parse");
        s.confirm(parse, None).expect("confirmed");
        sync(&mut s, b'I');
    }
    let kept = s.retained();
    assert!((10_000..40_000).contains(&kept), "{kept}");
}

/// The names a statement keeps for its record weigh more than their bytes of text: each is
/// an allocation of its own (an attack review kept 16 times the text with thousands of
/// short column names).
#[test]
fn the_names_a_statement_keeps_count_per_name() {
    let fields: Vec<String> = (0..2_000).map(|i| format!("f{i}")).collect();
    let text = fields.join(",");
    let mut named = stmt(&text);
    named.mentions = Some(crate::audit::StatementNames {
        relations: Arc::from([]),
        functions: Arc::from([]),
        fields: fields.into(),
        skeleton: Some(text.as_str().into()),
    });
    let mut s = Statements::default();
    let parse = s.parse("plain".into(), stmt(&text)).expect("parse");
    s.confirm(parse, None).expect("confirmed");
    let plain = s.retained();
    let parse = s.parse("named".into(), named).expect("parse");
    let waiting = s.retained() - plain;
    s.confirm(parse, None).expect("confirmed");
    let kept = s.retained() - plain;
    assert_eq!(waiting, kept, "waiting or kept, the same weight");
    assert!(
        kept >= plain + 2_000 * std::mem::size_of::<String>() + text.len(),
        "{kept} vs {plain}"
    );
}
