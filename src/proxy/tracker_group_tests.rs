//! `Tracker::one_group_open`: when everything sent ends with a group the server closes with
//! a ReadyForQuery whatever it answers, so a relay whose client left may read up to it.

use super::*;

fn tracker() -> Tracker {
    Tracker::default()
}

#[test]
fn a_query_string_or_steps_with_their_sync_are_one_group() {
    let now = Instant::now();
    let mut t = tracker();
    t.statement(1, now, false);
    t.statement(2, now, false);
    t.query_end(0);
    assert!(t.one_group_open(), "a query string of two statements");

    let mut t = tracker();
    t.step(Step::Parse, 0);
    t.step(Step::Bind, 1);
    t.statement(1, now, true);
    t.statement(2, now, true);
    t.sync(2);
    assert!(t.one_group_open(), "steps, two Executes and their Sync");
}

#[test]
fn what_no_ready_for_query_is_sure_to_close_is_not() {
    let now = Instant::now();
    assert!(!tracker().one_group_open(), "nothing sent");

    // Steps without their Sync: no ReadyForQuery until the client sends one.
    let mut t = tracker();
    t.step(Step::Parse, 0);
    t.statement(1, now, true);
    assert!(!t.one_group_open());

    // Behind them a query string: an error among the steps (the cancel) makes the server
    // skip to a Sync, past the query string's ReadyForQuery.
    t.statement(2, now, false);
    t.query_end(1);
    assert!(!t.one_group_open(), "a query string behind unsynced steps");

    // Two groups: the second would run after the first is cancelled.
    let mut t = tracker();
    t.statement(1, now, false);
    t.query_end(0);
    t.statement(2, now, false);
    t.query_end(1);
    assert!(!t.one_group_open(), "two query strings");

    // A COPY FROM STDIN not started yet waits for data that never comes.
    let mut t = tracker();
    t.statement(1, now, false);
    t.copy_from_stdin();
    t.query_end(0);
    assert!(!t.one_group_open(), "a COPY FROM STDIN to come");
}

#[test]
fn a_completion_or_a_ready_that_answers_nothing_sent_loses_track() {
    // A review's Flush with a body made the server skip a group the tracker still waited
    // for: every later reply answered the message before its own. Such a reply now ends
    // the session instead.
    let now = Instant::now();
    let mut out = Vec::new();
    let mut t = tracker();
    t.sync(1);
    let completed = t.on_event(BackendEvent::Complete("SELECT 1".into()), &mut out);
    assert!(
        completed.is_err(),
        "a CommandComplete with no statement sent"
    );

    let mut t = tracker();
    t.statement(1, now, false);
    let ready = t.on_event(BackendEvent::Ready(b'I'), &mut out);
    assert!(ready.is_err(), "a ReadyForQuery that ends no group sent");

    // The same replies, where they answer what was sent, settle it.
    let mut t = tracker();
    t.statement(1, now, false);
    t.query_end(2);
    for event in [
        BackendEvent::Complete("SELECT 1".into()),
        BackendEvent::Ready(b'I'),
    ] {
        t.on_event(event, &mut out).expect("answers what was sent");
    }
    assert_eq!(out.len(), 1);
    assert!(t.is_idle());
}
