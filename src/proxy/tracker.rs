//! Matching upstream replies to the statements the audit recorded, so each statement
//! record gets exactly one outcome record.
//!
//! Replies come in order. A query string, a FunctionCall or a Sync ends a group that the
//! server closes with ReadyForQuery; after an error the server skips the rest of the
//! group, and those statements are recorded as not executed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::guard::Refusal;

use crate::audit::OutcomeStatus;
use crate::wire::BackendEvent;

enum Slot {
    Statement {
        seq: u64,
        started: Instant,
        /// Set when the proxy refused the statement and sent a stand-in that fails: its
        /// error is this refusal.
        refusal: Option<Arc<Refusal>>,
        /// Sent with the extended protocol: an error makes the server skip to the next Sync.
        extended: bool,
    },
    /// End of a group: a ReadyForQuery will answer it. `sync` tells a Sync message from
    /// the end of a query string or FunctionCall.
    GroupEnd { sync: bool },
    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail).
    CopyEnd,
}

/// What became of one recorded statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub statement_seq: u64,
    pub status: OutcomeStatus,
    pub command_tag: Option<String>,
    pub sqlstate: Option<String>,
    pub message: Option<String>,
    pub duration_ms: f64,
    /// The guardrail rule that refused it.
    pub rule: Option<&'static str>,
    /// COPY data bytes it moved (either direction), set by the relay as it settles.
    pub bytes: Option<u64>,
}

impl Outcome {
    fn new(seq: u64, started: Instant, status: OutcomeStatus) -> Self {
        Outcome {
            statement_seq: seq,
            status,
            command_tag: None,
            sqlstate: None,
            message: None,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            rule: None,
            bytes: None,
        }
    }

    /// A statement recorded but never sent (its query string was refused).
    pub fn not_run(seq: u64) -> Self {
        Outcome::new(seq, Instant::now(), OutcomeStatus::NotExecuted)
    }

    /// A statement recorded but never sent: the session ended while its record was
    /// being made durable.
    pub fn never_sent(seq: u64) -> Self {
        Outcome::new(seq, Instant::now(), OutcomeStatus::Interrupted)
    }

    /// Row count from the command tag (`SELECT 3`, `INSERT 0 5`, `COPY 10`).
    pub fn rows(&self) -> Option<u64> {
        self.command_tag
            .as_deref()?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }
}

#[derive(Default)]
pub struct Tracker {
    slots: VecDeque<Slot>,
    /// Transaction status of the last ReadyForQuery.
    pub transaction_status: u8,
    /// The server is in COPY FROM STDIN and the client has not ended it yet.
    in_copy_in: bool,
    /// An extended-protocol error: the server discards what comes before the next Sync,
    /// query strings included, so they get no ReadyForQuery of their own.
    skipping_to_sync: bool,
}

impl Tracker {
    pub fn statement(&mut self, seq: u64, started: Instant, extended: bool) {
        self.slots.push_back(Slot::Statement {
            seq,
            started,
            refusal: None,
            extended,
        });
    }

    /// A refused statement whose stand-in will fail upstream.
    pub fn refused(&mut self, seq: u64, started: Instant, refusal: Arc<Refusal>, extended: bool) {
        self.slots.push_back(Slot::Statement {
            seq,
            started,
            refusal: Some(refusal),
            extended,
        });
    }

    /// The statement the server is working on (the oldest without an outcome), by seq.
    pub fn running(&self) -> Option<u64> {
        self.slots.iter().find_map(|s| match s {
            Slot::Statement { seq, .. } => Some(*seq),
            _ => None,
        })
    }

    /// Nothing sent is still waiting for its outcome or its ReadyForQuery.
    pub fn is_idle(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether a refusal's error is still to come (its bytes must be rewritten).
    pub fn refusal_pending(&self) -> bool {
        self.slots.iter().any(|s| {
            matches!(
                s,
                Slot::Statement {
                    refusal: Some(_),
                    ..
                }
            )
        })
    }

    /// A query string or FunctionCall was sent: its ReadyForQuery closes the group.
    pub fn query_end(&mut self) {
        if !self.skipping_to_sync {
            self.slots.push_back(Slot::GroupEnd { sync: false });
        }
    }

    /// A Sync was sent. The server ignores Sync during COPY FROM STDIN, so does the tracker.
    pub fn sync(&mut self) {
        if !self.in_copy_in {
            self.slots.push_back(Slot::GroupEnd { sync: true });
            self.skipping_to_sync = false;
        }
    }

    /// After an extended-protocol error the server ignores every message up to the next
    /// Sync: a query string or FunctionCall sent in between gets no ReadyForQuery, so its
    /// group end is dropped and its statements close with the Sync's group as not executed.
    fn skip_to_sync(&mut self) {
        let sync_at = self
            .slots
            .iter()
            .position(|s| matches!(s, Slot::GroupEnd { sync: true }));
        let end = sync_at.unwrap_or(self.slots.len());
        let mut i = 0;
        let mut kept = end;
        while i < kept {
            if matches!(self.slots[i], Slot::GroupEnd { sync: false }) {
                self.slots.remove(i);
                kept -= 1;
            } else {
                i += 1;
            }
        }
        // The Sync is not sent yet: query strings sent before it are skipped too.
        self.skipping_to_sync = sync_at.is_none();
    }

    /// The client sent CopyDone or CopyFail.
    pub fn copy_end(&mut self) {
        if self.in_copy_in {
            self.in_copy_in = false;
        } else {
            self.slots.push_back(Slot::CopyEnd);
        }
    }

    /// The server entered COPY FROM STDIN: Syncs the client sent after the COPY and before
    /// ending it will get no ReadyForQuery.
    fn copy_in_started(&mut self) {
        let Some(copy) = self
            .slots
            .iter()
            .position(|s| matches!(s, Slot::Statement { .. }))
        else {
            return;
        };
        let mut i = copy + 1;
        while i < self.slots.len() {
            match self.slots[i] {
                Slot::GroupEnd { sync: true } => {
                    self.slots.remove(i);
                }
                Slot::CopyEnd => {
                    self.slots.remove(i);
                    return;
                }
                _ => i += 1,
            }
        }
        self.in_copy_in = true;
    }

    /// Statements still waiting for the server.
    #[cfg(test)]
    fn in_flight(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s, Slot::Statement { .. }))
    }

    /// Applies one upstream event; outcomes it settles are pushed to `out`.
    pub fn on_event(&mut self, event: BackendEvent, out: &mut Vec<Outcome>) {
        // A COPY FROM STDIN that fails (bad row, cancel, timeout) ends copy mode without
        // the client's CopyDone: Syncs count again.
        if matches!(
            event,
            BackendEvent::Error { .. } | BackendEvent::Complete(_) | BackendEvent::Ready(_)
        ) {
            self.in_copy_in = false;
        }
        match event {
            BackendEvent::Complete(tag) => {
                if let Some(mut outcome) = self.pop_statement(OutcomeStatus::Ok) {
                    outcome.command_tag = Some(tag);
                    out.push(outcome);
                }
            }
            BackendEvent::Empty | BackendEvent::Suspended | BackendEvent::FunctionResult => {
                out.extend(self.pop_statement(OutcomeStatus::Ok))
            }
            BackendEvent::Error { sqlstate, message } => {
                let (refusal, extended) = match self.front_statement() {
                    Some(Slot::Statement {
                        refusal, extended, ..
                    }) => (refusal.clone(), *extended),
                    _ => (None, false),
                };
                if extended {
                    self.skip_to_sync();
                }
                if let Some(mut outcome) = self.pop_statement(OutcomeStatus::Error) {
                    match refusal {
                        Some(r) => {
                            outcome.status = OutcomeStatus::Refused;
                            outcome.sqlstate =
                                Some(crate::wire::sqlstate::INSUFFICIENT_PRIVILEGE.to_owned());
                            outcome.message = Some(r.message.clone());
                            outcome.rule = Some(r.rule);
                        }
                        None => {
                            outcome.sqlstate = Some(sqlstate);
                            outcome.message = Some(message);
                        }
                    }
                    out.push(outcome);
                }
            }
            BackendEvent::Ready(status) => {
                self.transaction_status = status;
                self.close_group(out);
            }
            BackendEvent::CopyIn => self.copy_in_started(),
            BackendEvent::Parameter { .. }
            | BackendEvent::DataRow
            | BackendEvent::CopyData(_)
            | BackendEvent::ParseComplete
            | BackendEvent::BindComplete
            | BackendEvent::CloseComplete => {}
        }
    }

    /// The head of the queue, past CopyEnd markers the server never answered (the COPY
    /// failed before starting).
    fn front_statement(&mut self) -> Option<&Slot> {
        while matches!(self.slots.front(), Some(Slot::CopyEnd)) {
            self.slots.pop_front();
        }
        self.slots.front()
    }

    /// The statement at the head of the current group, if the group has one left.
    fn pop_statement(&mut self, status: OutcomeStatus) -> Option<Outcome> {
        match self.front_statement() {
            Some(Slot::Statement { .. }) => match self.slots.pop_front() {
                Some(Slot::Statement { seq, started, .. }) => {
                    Some(Outcome::new(seq, started, status))
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn close_group(&mut self, out: &mut Vec<Outcome>) {
        if !self
            .slots
            .iter()
            .any(|s| matches!(s, Slot::GroupEnd { .. }))
        {
            return;
        }
        while let Some(slot) = self.slots.pop_front() {
            match slot {
                Slot::GroupEnd { .. } => return,
                Slot::CopyEnd => {}
                Slot::Statement { seq, started, .. } => {
                    out.push(Outcome::new(seq, started, OutcomeStatus::NotExecuted))
                }
            }
        }
    }

    /// The session ended: whatever is still open was interrupted.
    pub fn interrupt_all(&mut self, out: &mut Vec<Outcome>) {
        for slot in self.slots.drain(..) {
            if let Slot::Statement { seq, started, .. } = slot {
                out.push(Outcome::new(seq, started, OutcomeStatus::Interrupted));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(out: &[Outcome]) -> Vec<(u64, OutcomeStatus)> {
        out.iter().map(|o| (o.statement_seq, o.status)).collect()
    }

    fn err() -> BackendEvent {
        BackendEvent::Error {
            sqlstate: "22012".into(),
            message: "division by zero".into(),
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
        t.query_end();
        t.sync();
        t.statement(3, now, false);
        t.query_end();
        let mut out = Vec::new();
        t.on_event(err(), &mut out);
        t.on_event(BackendEvent::Ready(b'I'), &mut out);
        t.on_event(BackendEvent::Complete("SELECT 1".into()), &mut out);
        t.on_event(BackendEvent::Ready(b'I'), &mut out);
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
        t.query_end();
        let mut out = Vec::new();
        t.on_event(BackendEvent::Complete("SELECT 1".into()), &mut out);
        t.on_event(err(), &mut out);
        t.on_event(BackendEvent::Ready(b'I'), &mut out);
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
        t.sync();
        t.statement(2, now, false);
        t.sync();
        let mut out = Vec::new();
        t.on_event(err(), &mut out);
        t.on_event(BackendEvent::Ready(b'I'), &mut out);
        assert_eq!(statuses(&out), [(1, OutcomeStatus::Error)]);
        assert!(t.in_flight(), "second group still open");
        t.on_event(BackendEvent::Complete("INSERT 0 4".into()), &mut out);
        t.on_event(BackendEvent::Ready(b'T'), &mut out);
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
        t.sync();
        t.on_event(err(), &mut out);
        t.on_event(BackendEvent::Ready(b'I'), &mut out);
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
            t.sync();
            if copy_done_first {
                t.copy_end();
                t.sync();
                t.on_event(BackendEvent::CopyIn, &mut out);
            } else {
                t.on_event(BackendEvent::CopyIn, &mut out);
                t.copy_end();
                t.sync();
            }
            t.on_event(BackendEvent::Complete("COPY 5".into()), &mut out);
            t.on_event(BackendEvent::Ready(b'I'), &mut out);
            t.statement(2, now, false);
            t.sync();
            t.on_event(BackendEvent::Complete("COPY 9".into()), &mut out);
            t.on_event(BackendEvent::Ready(b'I'), &mut out);
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
        t.query_end();
        t.copy_end();
        t.on_event(BackendEvent::CopyIn, &mut out);
        t.on_event(BackendEvent::Complete("COPY 2".into()), &mut out);
        t.on_event(BackendEvent::Ready(b'I'), &mut out);
        assert_eq!(statuses(&out), [(1, OutcomeStatus::Ok)]);
        assert!(!t.in_flight());
    }

    #[test]
    fn a_failed_copy_in_ends_copy_mode() {
        let now = Instant::now();
        let mut t = Tracker::default();
        let mut out = Vec::new();
        t.statement(1, now, false);
        t.sync();
        t.on_event(BackendEvent::CopyIn, &mut out);
        // A bad row: the server errors out of COPY; the client then syncs.
        t.on_event(err(), &mut out);
        t.sync();
        t.on_event(BackendEvent::Ready(b'I'), &mut out);
        t.statement(2, now, false);
        t.sync();
        t.on_event(BackendEvent::Complete("SELECT 1".into()), &mut out);
        t.on_event(BackendEvent::Ready(b'I'), &mut out);
        assert_eq!(
            statuses(&out),
            [(1, OutcomeStatus::Error), (2, OutcomeStatus::Ok)]
        );
        assert!(!t.in_flight());
    }
}
