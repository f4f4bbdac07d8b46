//! The tracker against the server's own order of replies: groups, skips to Sync, COPY,
//! and the steps of the extended protocol.

use super::*;

fn statuses(out: &[Outcome]) -> Vec<(u64, OutcomeStatus)> {
    out.iter().map(|o| (o.statement_seq, o.status)).collect()
}

/// Replies, each of which must answer a message sent.
fn feed(t: &mut Tracker, out: &mut Vec<Outcome>, events: impl IntoIterator<Item = BackendEvent>) {
    for event in events {
        t.on_event(event, out)
            .expect("every reply answers a message sent");
    }
}

fn err() -> BackendEvent {
    BackendEvent::Error {
        sqlstate: "22012".into(),
        message: "division by zero".into(),
        fatal: false,
    }
}

#[test]
fn a_query_string_inside_a_failed_pipeline_gets_no_ready_of_its_own() {
    // Execute(1) fails; the server then discards Query(2) up to the Sync, answers the
    // Sync alone, and runs Query(3) after it.
    let now = Instant::now();
    let mut t = Tracker::default();
    t.statement(1, now, true);
    t.statement(2, now, false);
    t.query_end(0);
    t.sync(0);
    t.statement(3, now, false);
    t.query_end(0);
    let mut out = Vec::new();
    feed(
        &mut t,
        &mut out,
        [
            err(),
            BackendEvent::Ready(b'I'),
            BackendEvent::Complete("SELECT 1".into()),
            BackendEvent::Ready(b'I'),
        ],
    );
    assert_eq!(
        statuses(&out),
        vec![
            (1, OutcomeStatus::Error),
            (2, OutcomeStatus::NotExecuted),
            (3, OutcomeStatus::Ok)
        ]
    );
    assert!(!t.in_flight());
}

#[test]
fn error_in_a_query_string_skips_the_rest() {
    let now = Instant::now();
    let mut t = Tracker::default();
    for seq in 1..=3 {
        t.statement(seq, now, false);
    }
    t.query_end(0);
    let mut out = Vec::new();
    feed(
        &mut t,
        &mut out,
        [
            BackendEvent::Complete("SELECT 1".into()),
            err(),
            BackendEvent::Ready(b'I'),
        ],
    );
    assert_eq!(
        statuses(&out),
        [
            (1, OutcomeStatus::Ok),
            (2, OutcomeStatus::Error),
            (3, OutcomeStatus::NotExecuted)
        ]
    );
    assert_eq!(out[0].rows(), Some(1));
    assert!(!t.in_flight());
}

#[test]
fn pipelined_groups_close_one_at_a_time() {
    let now = Instant::now();
    let mut t = Tracker::default();
    t.statement(1, now, false);
    t.sync(0);
    t.statement(2, now, false);
    t.sync(0);
    let mut out = Vec::new();
    feed(&mut t, &mut out, [err(), BackendEvent::Ready(b'I')]);
    assert_eq!(statuses(&out), [(1, OutcomeStatus::Error)]);
    assert!(t.in_flight(), "second group still open");
    feed(
        &mut t,
        &mut out,
        [
            BackendEvent::Complete("INSERT 0 4".into()),
            BackendEvent::Ready(b'T'),
        ],
    );
    assert_eq!(statuses(&out)[1], (2, OutcomeStatus::Ok));
    assert_eq!(out[1].rows(), Some(4));
    assert_eq!(t.transaction_status, b'T');
}

#[test]
fn parse_error_lands_on_the_groups_first_statement_and_leftovers_are_interrupted() {
    let now = Instant::now();
    let mut t = Tracker::default();
    let mut out = Vec::new();
    // An error with nothing recorded (a lone Parse) changes nothing.
    t.sync(0);
    feed(&mut t, &mut out, [err(), BackendEvent::Ready(b'I')]);
    assert!(out.is_empty());
    t.statement(7, now, false);
    t.interrupt_all(&mut out);
    assert_eq!(statuses(&out), [(7, OutcomeStatus::Interrupted)]);
}

#[test]
fn syncs_sent_during_copy_in_get_no_ready_for_query() {
    let now = Instant::now();
    // Whether the client's CopyDone arrives before or after the server's CopyInResponse,
    // the COPY's outcome and the next statement's must line up.
    for copy_done_first in [false, true] {
        let mut t = Tracker::default();
        let mut out = Vec::new();
        t.statement(1, now, false);
        t.sync(0);
        if copy_done_first {
            t.copy_end();
            t.sync(0);
            feed(&mut t, &mut out, [BackendEvent::CopyIn]);
        } else {
            feed(&mut t, &mut out, [BackendEvent::CopyIn]);
            t.copy_end();
            t.sync(0);
        }
        feed(
            &mut t,
            &mut out,
            [
                BackendEvent::Complete("COPY 5".into()),
                BackendEvent::Ready(b'I'),
            ],
        );
        t.statement(2, now, false);
        t.sync(0);
        feed(
            &mut t,
            &mut out,
            [
                BackendEvent::Complete("COPY 9".into()),
                BackendEvent::Ready(b'I'),
            ],
        );
        let rows: Vec<_> = out
            .iter()
            .map(|o| (o.statement_seq, o.status, o.rows()))
            .collect();
        assert_eq!(
            rows,
            [
                (1, OutcomeStatus::Ok, Some(5)),
                (2, OutcomeStatus::Ok, Some(9))
            ],
            "copy_done_first = {copy_done_first}"
        );
    }
}

#[test]
fn simple_query_copy_keeps_its_group_end() {
    let now = Instant::now();
    let mut t = Tracker::default();
    let mut out = Vec::new();
    t.statement(1, now, false);
    t.query_end(0);
    t.copy_end();
    feed(
        &mut t,
        &mut out,
        [
            BackendEvent::CopyIn,
            BackendEvent::Complete("COPY 2".into()),
            BackendEvent::Ready(b'I'),
        ],
    );
    assert_eq!(statuses(&out), [(1, OutcomeStatus::Ok)]);
    assert!(!t.in_flight());
}

#[test]
fn a_failed_copy_in_ends_copy_mode() {
    let now = Instant::now();
    let mut t = Tracker::default();
    let mut out = Vec::new();
    t.statement(1, now, false);
    t.query_end(0);
    feed(&mut t, &mut out, [BackendEvent::CopyIn]);
    // A bad row: the server errors out of COPY and answers the query string; the client,
    // still sending data, then syncs, which the server now answers too.
    feed(&mut t, &mut out, [err(), BackendEvent::Ready(b'I')]);
    t.sync(0);
    feed(&mut t, &mut out, [BackendEvent::Ready(b'I')]);
    t.statement(2, now, false);
    t.sync(0);
    feed(
        &mut t,
        &mut out,
        [
            BackendEvent::Complete("SELECT 1".into()),
            BackendEvent::Ready(b'I'),
        ],
    );
    assert_eq!(
        statuses(&out),
        [(1, OutcomeStatus::Error), (2, OutcomeStatus::Ok)]
    );
    assert!(!t.in_flight());
}

/// What a client sends, in order, and the tracker's slots for it (ids count messages).
struct Client {
    t: Tracker,
    next_id: MessageId,
    out: Vec<Outcome>,
    names: Vec<Names>,
}

impl Client {
    fn new() -> Self {
        Client {
            t: Tracker::default(),
            next_id: 0,
            out: Vec::new(),
            names: Vec::new(),
        }
    }

    fn id(&mut self) -> MessageId {
        self.next_id += 1;
        self.next_id
    }

    fn step(&mut self, step: Step) -> MessageId {
        let id = self.id();
        self.t.step(step, id);
        id
    }

    fn execute(&mut self, seq: u64) {
        self.t.statement(seq, Instant::now(), true);
    }

    fn query(&mut self, seq: u64) -> MessageId {
        self.t.statement(seq, Instant::now(), false);
        let id = self.id();
        self.t.query_end(id);
        id
    }

    fn sync(&mut self) -> MessageId {
        let id = self.id();
        self.t.sync(id);
        id
    }

    fn reply(&mut self, event: BackendEvent) -> Result<(), LostTrack> {
        let names = self.t.on_event(event, &mut self.out)?;
        self.names.extend(names);
        Ok(())
    }

    fn replies(&mut self, events: impl IntoIterator<Item = BackendEvent>) {
        for event in events {
            self.reply(event)
                .expect("every reply answers a message sent");
        }
    }
}

fn complete(tag: &str) -> BackendEvent {
    BackendEvent::Complete(tag.into())
}

#[test]
fn an_error_in_any_step_skips_a_query_string_sent_before_the_sync() {
    // Describe, Parse, Bind or Close fails; the server then ignores the query string up to
    // the Sync, answers the Sync alone, and runs the next query string. Each reply must land
    // on its own statement.
    for failing in [Step::Describe, Step::Parse, Step::Bind, Step::Close] {
        let mut c = Client::new();
        let failed = c.step(failing);
        c.query(1);
        let sync = c.sync();
        let next = c.query(2);
        c.replies([err(), BackendEvent::Ready(b'I')]);
        c.replies([complete("SELECT 1"), BackendEvent::Ready(b'I')]);
        assert_eq!(
            statuses(&c.out),
            [(1, OutcomeStatus::NotExecuted), (2, OutcomeStatus::Ok)],
            "{failing:?}"
        );
        // Only a failed Parse or Bind may have changed a name (it drops the unnamed
        // statement or portal).
        let failure =
            matches!(failing, Step::Parse | Step::Bind).then_some(Names::Failed { id: failed });
        let settles = [
            Names::Settle {
                through: Some(sync),
            },
            Names::Settle {
                through: Some(next),
            },
        ];
        assert_eq!(
            c.names,
            failure.into_iter().chain(settles).collect::<Vec<_>>(),
            "{failing:?}"
        );
        assert!(c.t.is_idle(), "{failing:?}");
    }
}

#[test]
fn steps_sent_after_an_error_and_before_the_sync_get_no_reply() {
    // The error comes back before the client has sent its Sync: what it sends until then
    // is skipped by the server, steps and query strings alike.
    let mut c = Client::new();
    c.step(Step::Describe);
    c.replies([err()]);
    c.step(Step::Parse);
    c.query(1);
    c.sync();
    c.step(Step::Parse);
    c.step(Step::Bind);
    c.execute(2);
    c.sync();
    c.replies([BackendEvent::Ready(b'I')]);
    c.replies([
        BackendEvent::ParseComplete,
        BackendEvent::BindComplete,
        complete("UPDATE 1"),
        BackendEvent::Ready(b'I'),
    ]);
    assert_eq!(
        statuses(&c.out),
        [(1, OutcomeStatus::NotExecuted), (2, OutcomeStatus::Ok)]
    );
}

#[test]
fn each_confirmation_names_the_message_it_answers() {
    let mut c = Client::new();
    let parse = c.step(Step::Parse);
    let bind = c.step(Step::Bind);
    c.step(Step::Describe);
    c.execute(1);
    let close = c.step(Step::Close);
    let sync = c.sync();
    c.replies([
        BackendEvent::ParseComplete,
        BackendEvent::BindComplete,
        BackendEvent::Description,
        complete("SELECT 3"),
        BackendEvent::CloseComplete,
        BackendEvent::Ready(b'I'),
    ]);
    let confirm = |id| Names::Confirm { id, tag: None };
    assert_eq!(
        c.names,
        [
            confirm(parse),
            confirm(bind),
            confirm(close),
            Names::Settle {
                through: Some(sync)
            }
        ]
    );
    assert_eq!(statuses(&c.out), [(1, OutcomeStatus::Ok)]);
}

#[test]
fn a_parse_error_lands_on_the_statement_it_kept_from_running() {
    let mut c = Client::new();
    c.step(Step::Parse);
    c.step(Step::Bind);
    c.execute(1);
    c.sync();
    c.replies([err(), BackendEvent::Ready(b'I')]);
    assert_eq!(statuses(&c.out), [(1, OutcomeStatus::Error)]);
    assert_eq!(c.out[0].sqlstate.as_deref(), Some("22012"));
}

#[test]
fn a_failed_describe_or_close_is_no_statements_error() {
    for failing in [Step::Describe, Step::Close] {
        let mut c = Client::new();
        c.step(failing);
        c.step(Step::Bind);
        c.execute(1);
        c.sync();
        c.replies([err(), BackendEvent::Ready(b'I')]);
        assert_eq!(
            statuses(&c.out),
            [(1, OutcomeStatus::NotExecuted)],
            "{failing:?}"
        );
    }
}

#[test]
fn a_reply_to_no_message_sent_is_lost_track() {
    for reply in [
        BackendEvent::ParseComplete,
        BackendEvent::BindComplete,
        BackendEvent::CloseComplete,
    ] {
        let mut c = Client::new();
        c.query(1);
        assert!(c.reply(reply).is_err());
    }
    // A BindComplete where a ParseComplete is due.
    let mut c = Client::new();
    c.step(Step::Parse);
    c.step(Step::Bind);
    assert!(c.reply(BackendEvent::BindComplete).is_err());
}

#[test]
fn a_statements_name_change_is_confirmed_by_its_command_complete() {
    let mut c = Client::new();
    c.t.statement_changing(1, Instant::now(), false, Some(7));
    c.t.statement(2, Instant::now(), false);
    let end = c.id();
    c.t.query_end(end);
    c.replies([
        complete("PREPARE"),
        complete("SELECT 1"),
        BackendEvent::Ready(b'I'),
    ]);
    assert_eq!(
        c.names,
        [
            Names::Confirm {
                id: 7,
                tag: Some("PREPARE".into())
            },
            Names::Settle { through: Some(end) }
        ]
    );
}

#[test]
fn a_refused_statement_the_server_skips_keeps_its_rule() {
    let refusal = Arc::new(Refusal {
        rule: "read_only",
        message: "lockbox: refused".into(),
    });
    let mut c = Client::new();
    c.step(Step::Describe);
    c.t.refused(1, Instant::now(), refusal, false, None);
    let end = c.id();
    c.t.query_end(end);
    c.sync();
    c.replies([err(), BackendEvent::Ready(b'I')]);
    assert_eq!(statuses(&c.out), [(1, OutcomeStatus::NotExecuted)]);
    assert_eq!(c.out[0].rule, Some("read_only"));
    assert!(!c.t.refusal_pending());
}

#[test]
fn a_copy_that_fails_with_a_sync_behind_it_is_lost_track_but_one_that_loads_is_not() {
    // The Sync sent after the COPY (before its data) is read inside the COPY, unless the
    // COPY fails before reading anything: then the server answers it.
    for fails in [true, false] {
        let mut c = Client::new();
        c.execute(1);
        c.sync();
        c.replies([BackendEvent::CopyIn]);
        c.t.copy_end();
        let after = c.sync();
        let end = if fails { err() } else { complete("COPY 1") };
        let result = c.reply(end);
        assert_eq!(result.is_err(), fails);
        if !fails {
            c.replies([BackendEvent::Ready(b'I')]);
            assert_eq!(
                c.names,
                [Names::Settle {
                    through: Some(after)
                }]
            );
        }
        // Either way the COPY has its outcome.
        assert_eq!(c.out.len(), 1);
    }
}

fn unique_violation() -> BackendEvent {
    BackendEvent::Error {
        sqlstate: "23505".into(),
        message: "duplicate key value violates unique constraint \"k\"".into(),
        fatal: false,
    }
}

#[test]
fn a_commit_that_fails_at_the_sync_is_the_last_statements_error() {
    // Two INSERTs and a Sync: the Sync commits the implicit transaction, a deferred unique
    // key fails there, and nothing of either INSERT is kept. The server reports such a
    // failure on the last statement of a query string; the record does so for a Sync.
    for commit_fails in [true, false] {
        let mut c = Client::new();
        c.execute(1);
        c.execute(2);
        c.sync();
        c.replies([complete("INSERT 0 1"), complete("INSERT 0 1")]);
        assert_eq!(statuses(&c.out), [(1, OutcomeStatus::Ok)], "2 waits");
        if commit_fails {
            c.replies([unique_violation()]);
        }
        c.replies([BackendEvent::Ready(b'I')]);
        let last = &c.out[1];
        if commit_fails {
            assert_eq!(last.status, OutcomeStatus::Error);
            assert_eq!(last.sqlstate.as_deref(), Some("23505"));
            assert_eq!(last.command_tag, None, "nothing of it was kept");
        } else {
            assert_eq!(last.status, OutcomeStatus::Ok);
            assert_eq!(last.command_tag.as_deref(), Some("INSERT 0 1"));
        }
        assert_eq!(c.out.len(), 2);
    }
}

#[test]
fn a_statement_waits_for_its_commit_past_steps_but_not_for_a_sync_not_sent() {
    // A Close between the Execute and the Sync.
    let mut c = Client::new();
    c.execute(1);
    c.step(Step::Close);
    c.sync();
    c.replies([complete("INSERT 0 1"), BackendEvent::CloseComplete]);
    assert!(c.out.is_empty());
    c.replies([unique_violation(), BackendEvent::Ready(b'I')]);
    assert_eq!(statuses(&c.out), [(1, OutcomeStatus::Error)]);

    // Execute and Flush; the Sync comes once the client has its rows. The client may idle
    // before it, so the outcome is recorded at once, and a commit that fails at that Sync
    // is no statement's error.
    let mut c = Client::new();
    c.execute(1);
    c.replies([complete("INSERT 0 1")]);
    assert_eq!(statuses(&c.out), [(1, OutcomeStatus::Ok)]);
    c.sync();
    c.replies([unique_violation(), BackendEvent::Ready(b'I')]);
    assert_eq!(statuses(&c.out), [(1, OutcomeStatus::Ok)]);

    // …or more statements come before the Sync: the first one's transaction goes on.
    let mut c = Client::new();
    c.execute(1);
    c.step(Step::Parse);
    c.execute(2);
    c.sync();
    c.replies([complete("INSERT 0 1")]);
    assert_eq!(statuses(&c.out), [(1, OutcomeStatus::Ok)]);
    c.replies([BackendEvent::ParseComplete, complete("SELECT 1")]);
    assert_eq!(statuses(&c.out), [(1, OutcomeStatus::Ok)], "2 waits");
    c.replies([BackendEvent::Ready(b'I')]);
    assert_eq!(
        statuses(&c.out),
        [(1, OutcomeStatus::Ok), (2, OutcomeStatus::Ok)]
    );

    // A session that ends first records what completed.
    let mut c = Client::new();
    c.execute(1);
    c.sync();
    c.replies([complete("INSERT 0 1")]);
    assert!(c.out.is_empty());
    c.t.interrupt_all(&mut c.out);
    assert_eq!(statuses(&c.out), [(1, OutcomeStatus::Ok)]);
}

#[test]
fn a_query_strings_statements_are_not_held() {
    let mut c = Client::new();
    c.query(1);
    c.replies([complete("INSERT 0 1")]);
    assert_eq!(statuses(&c.out), [(1, OutcomeStatus::Ok)]);
}

#[test]
fn a_copy_from_stdin_is_awaited_until_the_server_starts_or_fails_it() {
    // Started.
    let mut c = Client::new();
    c.execute(1);
    c.t.copy_from_stdin();
    assert!(c.t.copy_start_awaited());
    c.replies([BackendEvent::CopyIn]);
    assert!(!c.t.copy_start_awaited());
    assert!(c.t.in_copy_in());

    // Failed before starting (no such table).
    let mut c = Client::new();
    c.execute(1);
    c.t.copy_from_stdin();
    c.replies([err()]);
    assert!(!c.t.copy_start_awaited());

    // Skipped: a statement before it failed, and the server skips to the Sync held back.
    let mut c = Client::new();
    c.execute(1);
    c.execute(2);
    c.t.copy_from_stdin();
    assert!(c.t.copy_start_awaited());
    c.replies([err()]);
    assert!(!c.t.copy_start_awaited(), "the server will not start it");

    // In a query string after a statement that failed: skipped too, which the server says
    // with its ReadyForQuery.
    let mut c = Client::new();
    c.t.statement(1, Instant::now(), false);
    c.t.statement(2, Instant::now(), false);
    c.t.copy_from_stdin();
    c.t.query_end(0);
    c.replies([err()]);
    assert!(c.t.copy_start_awaited());
    c.replies([BackendEvent::Ready(b'E')]);
    assert!(!c.t.copy_start_awaited());

    // Two COPYs in one query string, the first ended before it started: the second is
    // still awaited, and started by its own CopyInResponse.
    let mut c = Client::new();
    c.t.statement(1, Instant::now(), false);
    c.t.copy_from_stdin();
    c.t.statement(2, Instant::now(), false);
    c.t.copy_from_stdin();
    c.t.query_end(0);
    assert_eq!(c.t.copies_unstarted(), 2);
    c.t.copy_end();
    assert_eq!(c.t.copies_unstarted(), 1);
    c.replies([BackendEvent::CopyIn, complete("COPY 0")]);
    assert_eq!(
        c.t.copies_unstarted(),
        1,
        "the first COPY read up to its CopyDone"
    );
    c.replies([BackendEvent::CopyIn]);
    assert_eq!(c.t.copies_unstarted(), 0);

    // Another statement is no COPY.
    let mut c = Client::new();
    c.execute(1);
    assert!(!c.t.copy_start_awaited());
}

#[test]
fn the_server_works_on_steps_and_group_ends_too() {
    let mut c = Client::new();
    let bind = c.step(Step::Bind);
    c.execute(1);
    let sync = c.sync();
    assert_eq!(c.t.working(), Some(Work::Message(bind)), "a Bind plans");
    c.replies([BackendEvent::BindComplete]);
    assert_eq!(c.t.working(), Some(Work::Statement(1)));
    c.replies([complete("INSERT 0 1")]);
    assert_eq!(c.t.working(), Some(Work::Message(sync)), "a Sync commits");
    c.replies([BackendEvent::Ready(b'I')]);
    assert_eq!(c.t.working(), None);
}

/// What the client sends after an extended error and before its Sync is skipped by the
/// server: settled at once as not executed, nothing kept for it, however many there are
/// (an `executemany` whose first row failed pipelines the rest).
#[test]
fn statements_sent_while_the_server_skips_are_settled_at_once() {
    let now = Instant::now();
    let mut t = Tracker::default();
    t.statement(1, now, true);
    let mut out = Vec::new();
    feed(&mut t, &mut out, [err()]);
    assert_eq!(statuses(&out), [(1, OutcomeStatus::Error)]);
    assert!(t.skipping_to_sync());
    let before = t.outstanding();
    let skipped = t.skipped(2, now, None).expect("skipped");
    assert_eq!(skipped.status, OutcomeStatus::NotExecuted);
    assert_eq!(t.outstanding(), before, "nothing kept");
    let refusal = Refusal {
        rule: "deny_truncate",
        message: "refused".into(),
    };
    let skipped = t.skipped(3, now, Some(&refusal)).expect("skipped");
    assert_eq!(skipped.rule, Some("deny_truncate"));
    // Past the Sync the server runs what comes: nothing is settled ahead of its answer.
    t.sync(0);
    assert!(t.skipped(4, now, None).is_none());
    feed(&mut t, &mut out, [BackendEvent::Ready(b'I')]);
    assert_eq!(t.outstanding(), 0);
}

/// CopyDones sent for COPYs of a query string that an error skipped wait for no reply:
/// the group's ReadyForQuery leaves none behind (a review stranded 8,300, which then held
/// the session's next query for ever behind the bound on unanswered messages).
#[test]
fn copy_ends_of_copies_an_error_skipped_go_with_their_group() {
    let now = Instant::now();
    let mut t = Tracker::default();
    t.statement(1, now, false);
    for seq in 2..5 {
        t.statement(seq, now, false);
        t.copy_from_stdin();
    }
    t.query_end(0);
    for _ in 2..5 {
        t.copy_end();
    }
    assert_eq!(t.outstanding(), 8);
    let mut out = Vec::new();
    feed(&mut t, &mut out, [err(), BackendEvent::Ready(b'I')]);
    assert_eq!(
        statuses(&out),
        [
            (1, OutcomeStatus::Error),
            (2, OutcomeStatus::NotExecuted),
            (3, OutcomeStatus::NotExecuted),
            (4, OutcomeStatus::NotExecuted)
        ]
    );
    assert_eq!(t.outstanding(), 0, "nothing left waiting");
    assert!(t.running().is_none());
}

/// Whether a refusal's error is still to come, and which statement runs, are kept as the
/// queue changes (asked on every reply, they are counted rather than looked for).
#[test]
fn refusals_and_statements_are_counted_as_they_come_and_go() {
    let now = Instant::now();
    let refusal = Arc::new(Refusal {
        rule: "deny_truncate",
        message: "refused".into(),
    });
    let mut t = Tracker::default();
    t.query_end(0);
    assert!(t.running().is_none() && !t.refusal_pending());
    t.refused(1, now, refusal.clone(), false, None);
    t.statement(2, now, false);
    t.query_end(0);
    assert!(t.refusal_pending());
    let mut out = Vec::new();
    feed(&mut t, &mut out, [BackendEvent::Ready(b'I')]);
    assert_eq!(t.running(), Some(1));
    feed(&mut t, &mut out, [err()]);
    assert!(!t.refusal_pending(), "its error came");
    assert_eq!(t.running(), Some(2), "settled at the ReadyForQuery");
    feed(&mut t, &mut out, [BackendEvent::Ready(b'I')]);
    assert_eq!(t.running(), None);
    t.refused(3, now, refusal, true, None);
    t.interrupt_all(&mut out);
    assert!(!t.refusal_pending() && t.running().is_none());
}

#[test]
fn a_failure_that_changes_a_name_says_which_message_failed() {
    let refusal = Arc::new(Refusal {
        rule: "deny_write",
        message: "refused".into(),
    });
    let mut c = Client::new();
    // A Parse the server fails, then the Execute it kept from running.
    let parse = c.step(Step::Parse);
    c.execute(1);
    let sync = c.sync();
    c.replies([err(), BackendEvent::Ready(b'I')]);
    // A refused Parse of the unnamed statement: its stand-in's failure is the change.
    let refused_parse = c.id();
    c.t.refused(
        2,
        Instant::now(),
        refusal.clone(),
        true,
        Some(refused_parse),
    );
    let second_sync = c.sync();
    c.replies([err(), BackendEvent::Ready(b'I')]);
    // A refusal that changes no name says nothing of names.
    c.t.refused(3, Instant::now(), refusal, true, None);
    let third_sync = c.sync();
    c.replies([err(), BackendEvent::Ready(b'I')]);
    assert_eq!(
        c.names,
        [
            Names::Failed { id: parse },
            Names::Settle {
                through: Some(sync)
            },
            Names::Failed { id: refused_parse },
            Names::Settle {
                through: Some(second_sync)
            },
            Names::Settle {
                through: Some(third_sync)
            },
        ]
    );
    assert_eq!(
        statuses(&c.out),
        [
            (1, OutcomeStatus::Error),
            (2, OutcomeStatus::Refused),
            (3, OutcomeStatus::Refused)
        ]
    );
}
