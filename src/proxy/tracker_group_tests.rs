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
