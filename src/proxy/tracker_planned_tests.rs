//! A Bind recorded for the planning it runs (`relay/planning.rs`): its outcome is the
//! server's answer to the Bind, and each way a group ends settles it.

use super::*;

fn statuses(out: &[Outcome]) -> Vec<(u64, OutcomeStatus)> {
    out.iter().map(|o| (o.statement_seq, o.status)).collect()
}

fn feed(t: &mut Tracker, events: impl IntoIterator<Item = BackendEvent>) -> Vec<Outcome> {
    let mut out = Vec::new();
    for event in events {
        t.on_event(event, &mut out)
            .expect("every reply answers a message sent");
    }
    out
}

fn error() -> BackendEvent {
    BackendEvent::Error {
        sqlstate: "22012".into(),
        message: "division by zero".into(),
        fatal: false,
    }
}

#[test]
fn a_planned_bind_is_settled_by_its_bind_complete_or_its_error() {
    let now = Instant::now();
    let mut t = Tracker::default();
    t.step(Step::Parse, 1);
    assert_eq!(t.planned_bind(2, 7, now), None);
    t.sync(3);
    let out = feed(
        &mut t,
        [
            BackendEvent::ParseComplete,
            BackendEvent::BindComplete,
            BackendEvent::Ready(b'I'),
        ],
    );
    assert_eq!(statuses(&out), [(7, OutcomeStatus::Ok)]);

    // Planning that fails (a folded call raising) fails the Bind's own record; the server
    // skips the Execute of another portal that follows.
    t.planned_bind(4, 8, now);
    t.statement(9, now, true);
    t.sync(5);
    let out = feed(&mut t, [error(), BackendEvent::Ready(b'I')]);
    assert_eq!(
        statuses(&out),
        [(8, OutcomeStatus::Error), (9, OutcomeStatus::NotExecuted)]
    );
    assert_eq!(out[0].sqlstate.as_deref(), Some("22012"));
    assert!(t.is_idle());
}

#[test]
fn a_planned_bind_the_server_skips_or_never_answers_is_not_executed_or_interrupted() {
    let now = Instant::now();
    // Behind an Execute that fails, before the Sync.
    let mut t = Tracker::default();
    t.statement(1, now, true);
    t.planned_bind(2, 2, now);
    t.sync(3);
    let out = feed(&mut t, [error(), BackendEvent::Ready(b'I')]);
    let mut settled = statuses(&out);
    settled.sort_by_key(|(seq, _)| *seq);
    assert_eq!(
        settled,
        [(1, OutcomeStatus::Error), (2, OutcomeStatus::NotExecuted)]
    );

    // Sent while the server skips to a Sync the client has not sent yet.
    let mut t = Tracker::default();
    t.step(Step::Describe, 1);
    feed(&mut t, [error()]);
    assert!(t.skipping_to_sync());
    let skipped = t.planned_bind(2, 3, now).expect("settled at once");
    assert_eq!(skipped.status, OutcomeStatus::NotExecuted);

    // The session ends before the server answers.
    let mut t = Tracker::default();
    t.planned_bind(1, 4, now);
    let mut out = Vec::new();
    t.interrupt_all(&mut out);
    assert_eq!(statuses(&out), [(4, OutcomeStatus::Interrupted)]);
}
