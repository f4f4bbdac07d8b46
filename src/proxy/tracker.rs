//! Matching upstream replies to the statements the audit recorded, so each statement
//! record gets exactly one outcome record, and to the messages that change the session's
//! prepared statements and portals, so each change is confirmed by its own reply.
//!
//! Replies come in order. A query string, a FunctionCall or a Sync ends a group that the
//! server closes with ReadyForQuery. An error in a query string skips the rest of it; an
//! error in an extended-protocol message (Parse, Bind, Describe, Close, Execute) makes the
//! server skip every message up to the next Sync, query strings included. Skipped
//! statements are recorded as not executed.
//!
//! Parse, Bind, Close and Describe are steps here, each answered by its own reply. Without
//! them an error from one of them could not be told from an error of the statement after
//! it: a Describe of a missing statement followed by a query string then looked like an
//! error in the query string, the server's skip to Sync went unseen, and every later reply
//! was matched to the statement before its own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::guard::Refusal;

use crate::audit::OutcomeStatus;
pub use crate::proxy::outcome::Outcome;
use crate::proxy::statements::{LostTrack, MessageId};
use crate::wire::BackendEvent;

/// An extended-protocol message other than Execute, and the reply that says the server
/// took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// ParseComplete.
    Parse,
    /// BindComplete.
    Bind,
    /// CloseComplete.
    Close,
    /// RowDescription or NoData (a Describe of a statement sends its ParameterDescription
    /// first).
    Describe,
}

enum Slot {
    Statement {
        seq: u64,
        started: Instant,
        /// Set when the proxy refused the statement and sent a stand-in that fails: its
        /// error is this refusal.
        refusal: Option<Arc<Refusal>>,
        /// Sent with the extended protocol: an error makes the server skip to the next Sync.
        extended: bool,
        /// The name it creates or removes (PREPARE, DECLARE, …), confirmed by its
        /// CommandComplete.
        change: Option<MessageId>,
        /// A COPY FROM STDIN the server has not yet started (CopyInResponse) or failed.
        copy_start: bool,
    },
    Step {
        step: Step,
        id: MessageId,
        /// A Bind recorded for the planning it runs (its portal's Execute did not follow):
        /// the record's seq, settled by the server's answer to the Bind.
        planned: Option<(u64, Instant)>,
    },
    /// End of a group: a ReadyForQuery will answer it. `sync` tells a Sync message from
    /// the end of a query string or FunctionCall.
    GroupEnd { sync: bool, id: MessageId },
    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail).
    CopyEnd,
}

/// Something the server works on, as the statement timeout sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// A statement, by its record's seq.
    Statement(u64),
    /// A step or the end of a group, by its message id.
    Message(MessageId),
}

/// What a reply did to the session's names (see `Statements`).
#[derive(Debug, PartialEq)]
pub enum Names {
    /// The server took message `id`; `tag` is the CommandComplete of a SQL statement.
    Confirm { id: MessageId, tag: Option<String> },
    /// ReadyForQuery: every message up to `through` is settled.
    Settle { through: Option<MessageId> },
    /// The server failed message `id` (a Parse, a Bind, or a refused statement's stand-in
    /// that changes a name), rather than skipped it.
    Failed { id: MessageId },
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
    /// The COPY FROM STDIN (by seq) that asked for data while Syncs the client sent after
    /// it were waiting (see `copy_in_started`).
    copy_with_syncs: Option<u64>,
    /// The outcome of an extended statement that completed with nothing but steps and a
    /// Sync after it, held until the server's next reply to a statement or a group: the
    /// Sync commits
    /// the implicit transaction, and if that commit fails (a deferred constraint, a
    /// serialization failure) the statement's work is undone and the error is its own, as
    /// the server reports it for the last statement of a query string.
    awaiting_commit: Option<(Outcome, Instant)>,
    /// How many slots may still be a COPY FROM STDIN not started (`copy_start`): zero
    /// spares every client message a walk of the slots. Counted up as one is sent, and
    /// again from the slots when the server answers a COPY or a group.
    copy_starts: usize,
    /// Statement slots in `slots`, and those of refused statements among them: a reply
    /// asks after them without a walk of slots that may be thousands of Syncs.
    statements: usize,
    refused: usize,
}

impl Tracker {
    #[cfg(test)]
    pub fn statement(&mut self, seq: u64, started: Instant, extended: bool) {
        self.statement_changing(seq, started, extended, None);
    }

    /// A statement whose CommandComplete confirms the name change of message `change`.
    pub fn statement_changing(
        &mut self,
        seq: u64,
        started: Instant,
        extended: bool,
        change: Option<MessageId>,
    ) {
        self.statements += 1;
        self.slots.push_back(Slot::Statement {
            seq,
            started,
            refusal: None,
            extended,
            change,
            copy_start: false,
        });
    }

    /// A refused statement whose stand-in will fail upstream; `change`, the name change its
    /// failure makes (a refused Parse of the unnamed statement leaves none).
    pub fn refused(
        &mut self,
        seq: u64,
        started: Instant,
        refusal: Arc<Refusal>,
        extended: bool,
        change: Option<MessageId>,
    ) {
        self.statements += 1;
        self.refused += 1;
        self.slots.push_back(Slot::Statement {
            seq,
            started,
            refusal: Some(refusal),
            extended,
            change,
            copy_start: false,
        });
    }

    /// A Parse, Bind, Close or Describe was sent. One sent while the server skips to Sync
    /// gets no reply.
    pub fn step(&mut self, step: Step, id: MessageId) {
        if !self.skipping_to_sync {
            self.slots.push_back(Slot::Step {
                step,
                id,
                planned: None,
            });
        }
    }

    /// A Bind (message `id`) recorded as `seq` for the planning it runs. One sent while the
    /// server skips to Sync is not planned: its outcome comes back at once.
    pub fn planned_bind(&mut self, id: MessageId, seq: u64, started: Instant) -> Option<Outcome> {
        if self.skipping_to_sync {
            return Some(Outcome::new(seq, started, OutcomeStatus::NotExecuted));
        }
        self.slots.push_back(Slot::Step {
            step: Step::Bind,
            id,
            planned: Some((seq, started)),
        });
        None
    }

    /// The outcome of statement `seq` if the server will skip it: it skips to a Sync after
    /// an error, and the client sent none since. Settled now rather than kept until the
    /// Sync's ReadyForQuery, so that a client pipelining on after an error (an `executemany`
    /// whose first row failed) makes the proxy keep nothing per message. A refused one's
    /// outcome names the rule, as at the ReadyForQuery.
    pub fn skipped(
        &self,
        seq: u64,
        started: Instant,
        refusal: Option<&Refusal>,
    ) -> Option<Outcome> {
        if !self.skipping_to_sync {
            return None;
        }
        let mut outcome = Outcome::new(seq, started, OutcomeStatus::NotExecuted);
        if let Some(r) = refusal {
            outcome.message = Some(r.message.clone());
            outcome.rule = Some(r.rule);
        }
        Some(outcome)
    }

    /// Messages sent that still wait for the server's answer (statements, steps, group
    /// ends): the relay reads no more from a client with too many (`hold::backlogged`).
    pub fn outstanding(&self) -> usize {
        self.slots.len()
    }

    /// The statement the server is working on (the oldest without an outcome), by seq.
    pub fn running(&self) -> Option<u64> {
        if self.statements == 0 {
            return None;
        }
        self.slots.iter().find_map(|s| match s {
            Slot::Statement { seq, .. } => Some(*seq),
            _ => None,
        })
    }

    /// What the server is working on: the oldest message sent that is still unanswered —
    /// a statement, or a step (a Bind plans its statement, and planning runs functions),
    /// or a group end (a Sync commits an implicit transaction, deferred checks and all).
    /// The grant's statement timeout times each.
    pub fn working(&self) -> Option<Work> {
        self.slots.iter().find_map(|s| match s {
            Slot::Statement { seq, .. } => Some(Work::Statement(*seq)),
            Slot::Step { id, .. } | Slot::GroupEnd { id, .. } => Some(Work::Message(*id)),
            Slot::CopyEnd => None,
        })
    }

    /// After an extended-protocol error, the server skips what the client sends until a
    /// Sync the client has not sent yet.
    pub fn skipping_to_sync(&self) -> bool {
        self.skipping_to_sync
    }

    /// Nothing sent is still waiting for its outcome or its ReadyForQuery.
    pub fn is_idle(&self) -> bool {
        self.slots.is_empty()
    }

    /// Everything sent ends with one group that a ReadyForQuery will close however the
    /// server answers (a query string, or steps and their Sync), and no COPY FROM STDIN may
    /// start in it (it would wait for data that never comes): once the server answers up to
    /// it, every statement sent has its outcome. A query string behind extended messages
    /// without their Sync is not such a group: an error among them makes the server skip
    /// to a Sync, past the query string's ReadyForQuery.
    pub fn one_group_open(&self) -> bool {
        let Some(Slot::GroupEnd { sync, .. }) = self.slots.back() else {
            return false;
        };
        let mut before = self.slots.iter().take(self.slots.len() - 1);
        before.all(|s| match s {
            Slot::Statement {
                extended,
                copy_start,
                ..
            } => !copy_start && (*sync || !extended),
            Slot::Step { .. } => *sync,
            Slot::GroupEnd { .. } | Slot::CopyEnd => false,
        }) && !self.in_copy_in
            && !self.skipping_to_sync
    }

    /// Whether a refusal's error is still to come (its bytes must be rewritten).
    pub fn refusal_pending(&self) -> bool {
        self.refused > 0
    }

    /// Counts a statement slot out, as it leaves the queue.
    fn forget_statement(&mut self, refusal: &Option<Arc<Refusal>>) {
        self.statements = self.statements.saturating_sub(1);
        self.refused = self.refused.saturating_sub(usize::from(refusal.is_some()));
    }

    /// A query string or FunctionCall (message `id`) was sent: its ReadyForQuery closes
    /// the group.
    pub fn query_end(&mut self, id: MessageId) {
        if !self.skipping_to_sync {
            self.slots.push_back(Slot::GroupEnd { sync: false, id });
        }
    }

    /// A Sync (message `id`) was sent. The server ignores Sync during COPY FROM STDIN, so
    /// does the tracker.
    pub fn sync(&mut self, id: MessageId) {
        if !self.in_copy_in {
            self.slots.push_back(Slot::GroupEnd { sync: true, id });
            self.skipping_to_sync = false;
        }
    }

    /// After an extended-protocol error the server ignores every message up to the next
    /// Sync: steps get no reply, and a query string or FunctionCall sent in between gets no
    /// ReadyForQuery, so its group end is dropped and its statements close with the Sync's
    /// group as not executed.
    fn skip_to_sync(&mut self, out: &mut Vec<Outcome>) {
        let sync_at = self
            .slots
            .iter()
            .position(|s| matches!(s, Slot::GroupEnd { sync: true, .. }));
        let end = sync_at.unwrap_or(self.slots.len());
        let mut i = 0;
        let mut kept = end;
        while i < kept {
            if matches!(
                self.slots[i],
                Slot::GroupEnd { sync: false, .. } | Slot::Step { .. }
            ) {
                if let Some(Slot::Step {
                    planned: Some((seq, started)),
                    ..
                }) = self.slots.remove(i)
                {
                    out.push(Outcome::new(seq, started, OutcomeStatus::NotExecuted));
                }
                kept -= 1;
            } else {
                i += 1;
            }
        }
        // The Sync is not sent yet: what is sent before it is skipped too.
        self.skipping_to_sync = sync_at.is_none();
    }

    /// Statements still waiting for the server.
    #[cfg(test)]
    fn in_flight(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s, Slot::Statement { .. }))
    }

    /// Applies one upstream event; outcomes it settles are pushed to `out`, and what it
    /// did to the session's names is returned. A reply that answers no message lockbox
    /// sent is an error: from there on, replies could be matched to the wrong statements.
    pub fn on_event(
        &mut self,
        event: BackendEvent,
        out: &mut Vec<Outcome>,
    ) -> Result<Option<Names>, LostTrack> {
        // A COPY FROM STDIN that fails (bad row, cancel, timeout) ends copy mode without
        // the client's CopyDone: Syncs count again.
        if matches!(
            event,
            BackendEvent::Error { .. } | BackendEvent::Complete(_) | BackendEvent::Ready(_)
        ) {
            self.in_copy_in = false;
        }
        // A step's reply says nothing of the transaction; a statement's or a group's does.
        if !matches!(
            event,
            BackendEvent::Parameter { .. }
                | BackendEvent::ParseComplete
                | BackendEvent::BindComplete
                | BackendEvent::CloseComplete
                | BackendEvent::Description
        ) {
            self.settle_awaiting_commit(&event, out);
        }
        match event {
            BackendEvent::Complete(tag) => return self.complete(tag, out),
            BackendEvent::Empty | BackendEvent::Suspended { .. } | BackendEvent::FunctionResult => {
                out.extend(self.pop_statement(OutcomeStatus::Ok))
            }
            BackendEvent::Error {
                sqlstate, message, ..
            } => {
                let failed = self.error(sqlstate, message, out);
                self.recount_copy_starts();
                return failed;
            }
            BackendEvent::Ready(_)
                if !self
                    .slots
                    .iter()
                    .any(|s| matches!(s, Slot::GroupEnd { .. })) =>
            {
                return Err(LostTrack(
                    "a ReadyForQuery that ends no group lockbox saw sent".to_owned(),
                ));
            }
            BackendEvent::Ready(status) => {
                self.transaction_status = status;
                let through = self.close_group(out);
                self.recount_copy_starts();
                return Ok(Some(Names::Settle { through }));
            }
            BackendEvent::CopyIn => {
                self.copy_in_started();
                self.recount_copy_starts();
            }
            BackendEvent::ParseComplete => return self.answered(Step::Parse, out),
            BackendEvent::BindComplete => return self.answered(Step::Bind, out),
            BackendEvent::CloseComplete => return self.answered(Step::Close, out),
            // A RowDescription is also a query string's, and answers a Describe only when
            // one is next.
            BackendEvent::Description => {
                if matches!(
                    self.front(),
                    Some(Slot::Step {
                        step: Step::Describe,
                        ..
                    })
                ) {
                    self.slots.pop_front();
                }
            }
            BackendEvent::Parameter { .. } | BackendEvent::DataRow | BackendEvent::CopyData(_) => {}
        }
        Ok(None)
    }

    /// A CommandComplete answers the statement at the head of the queue; one that finds
    /// none answers a message lockbox did not see sent (a review's Flush with a body made
    /// the server skip a group the tracker still waited for).
    fn complete(
        &mut self,
        tag: String,
        out: &mut Vec<Outcome>,
    ) -> Result<Option<Names>, LostTrack> {
        let (change, extended, started) = match self.front() {
            Some(Slot::Statement {
                change,
                extended,
                started,
                ..
            }) => (*change, *extended, *started),
            _ => {
                return Err(LostTrack(format!(
                    "the server completed a statement ({tag}) that lockbox did not see sent next"
                )))
            }
        };
        let Some(mut outcome) = self.pop_statement(OutcomeStatus::Ok) else {
            return Ok(None);
        };
        if self.copy_with_syncs == Some(outcome.statement_seq) {
            // It read everything up to the client's CopyDone: the Syncs among it too.
            self.copy_with_syncs = None;
        }
        let names = change.map(|id| Names::Confirm {
            id,
            tag: Some(tag.clone()),
        });
        outcome.command_tag = Some(tag);
        // Only steps (a Close, say) before the Sync. A client that has not sent its Sync
        // yet may idle before it: the outcome is not held for as long.
        let commit_next = matches!(
            self.slots
                .iter()
                .find(|s| !matches!(s, Slot::Step { .. } | Slot::CopyEnd)),
            Some(Slot::GroupEnd { sync: true, .. })
        );
        if extended && commit_next {
            self.awaiting_commit = Some((outcome, started));
        } else {
            out.push(outcome);
        }
        Ok(names)
    }

    /// The outcome held for the commit at a Sync (see `awaiting_commit`), when the next
    /// reply comes. An error answering the Sync is the commit's: nothing of the statement
    /// was kept. Any other reply means the statement's transaction goes on (the client
    /// sent more before its Sync) or committed.
    fn settle_awaiting_commit(&mut self, event: &BackendEvent, out: &mut Vec<Outcome>) {
        let Some((mut outcome, started)) = self.awaiting_commit.take() else {
            return;
        };
        if let BackendEvent::Error {
            sqlstate, message, ..
        } = event
        {
            if matches!(self.front(), Some(Slot::GroupEnd { sync: true, .. })) {
                outcome.status = OutcomeStatus::Error;
                outcome.command_tag = None;
                outcome.sqlstate = Some(sqlstate.clone());
                outcome.message = Some(message.clone());
                outcome.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            }
        }
        out.push(outcome);
    }

    /// The outcome held for a Sync's commit, for the relay to complete (COPY bytes).
    pub fn awaiting_commit_mut(&mut self) -> Option<&mut Outcome> {
        self.awaiting_commit.as_mut().map(|(outcome, _)| outcome)
    }

    /// The reply that says the server took the step at the head of the queue.
    fn answered(&mut self, step: Step, out: &mut Vec<Outcome>) -> Result<Option<Names>, LostTrack> {
        match self.front() {
            Some(Slot::Step {
                step: next,
                id,
                planned,
            }) if *next == step => {
                let id = *id;
                if let Some((seq, started)) = *planned {
                    out.push(Outcome::new(seq, started, OutcomeStatus::Ok));
                }
                self.slots.pop_front();
                Ok(Some(Names::Confirm { id, tag: None }))
            }
            _ => Err(LostTrack(format!(
                "the server took a {step:?} that lockbox did not see sent next"
            ))),
        }
    }

    /// An ErrorResponse: it answers the message at the head of the queue.
    fn error(
        &mut self,
        sqlstate: String,
        message: String,
        out: &mut Vec<Outcome>,
    ) -> Result<Option<Names>, LostTrack> {
        let (failed_step, extended) = match self.front() {
            Some(Slot::Step { step, id, .. }) => (Some((*step, *id)), true),
            Some(Slot::Statement { extended, .. }) => (None, *extended),
            _ => (None, false),
        };
        // A Parse or Bind the server failed may have dropped a statement or portal (see
        // `Statements::failed`).
        let failed_parse = match failed_step {
            Some((Step::Parse | Step::Bind, id)) => Some(Names::Failed { id }),
            _ => None,
        };
        let failed_step = failed_step.map(|(step, _)| step);
        if failed_step.is_some() {
            if let Some(Slot::Step {
                planned: Some((seq, started)),
                ..
            }) = self.slots.pop_front()
            {
                // The planning that failed is the Bind's own record's.
                let mut outcome = Outcome::new(seq, started, OutcomeStatus::Error);
                outcome.sqlstate = Some(sqlstate);
                outcome.message = Some(message);
                out.push(outcome);
                self.skip_to_sync(out);
                return Ok(failed_parse);
            }
        }
        if extended {
            self.skip_to_sync(out);
        }
        // The statement that failed; or, when its preparation failed (a Parse or a Bind),
        // the extended statement of the group that it kept from running. A Describe or a
        // Close that fails is no statement's failure, and a query string the server skips
        // is not the one that failed: they close with their group as not executed, as does
        // a refused statement whose stand-in is skipped.
        let preparation = matches!(failed_step, Some(Step::Parse | Step::Bind));
        let (refusal, change) = match self.front() {
            Some(Slot::Statement {
                extended,
                refusal,
                change,
                ..
            }) if failed_step.is_none() || (preparation && *extended && refusal.is_none()) => {
                (refusal.clone(), *change)
            }
            _ => return Ok(failed_parse),
        };
        // A refused statement's stand-in failed as the refused statement would not have: the
        // name change it stands for is the failure's (a statement's own change, a PREPARE
        // or DECLARE that failed, changes nothing, and is dropped at the group's end).
        let names = match (&refusal, change) {
            (Some(_), Some(id)) => Some(Names::Failed { id }),
            _ => failed_parse,
        };
        let Some(mut outcome) = self.pop_statement(OutcomeStatus::Error) else {
            return Ok(names);
        };
        let ambiguous = self.copy_with_syncs.take() == Some(outcome.statement_seq);
        match refusal {
            Some(r) => {
                outcome.status = OutcomeStatus::Refused;
                outcome.sqlstate = Some(crate::wire::sqlstate::INSUFFICIENT_PRIVILEGE.to_owned());
                outcome.message = Some(r.message.clone());
                outcome.rule = Some(r.rule);
            }
            None => {
                outcome.sqlstate = Some(sqlstate);
                outcome.message = Some(message);
            }
        }
        out.push(outcome);
        if ambiguous {
            return Err(LostTrack(
                "a COPY FROM STDIN failed with Syncs sent after it: whether the server read \
                 them during the COPY (and ignored them) or after it (and answers them) \
                 cannot be told"
                    .to_owned(),
            ));
        }
        Ok(names)
    }

    /// The head of the queue, past CopyEnd markers the server never answered (the COPY
    /// failed before starting).
    fn front(&mut self) -> Option<&Slot> {
        self.drop_leading_copy_ends();
        self.slots.front()
    }

    /// CopyEnd markers ahead of every statement left can end no COPY (one ends the first
    /// COPY before it to start): the server ignored them.
    fn drop_leading_copy_ends(&mut self) {
        while matches!(self.slots.front(), Some(Slot::CopyEnd)) {
            self.slots.pop_front();
        }
    }

    /// The statement at the head of the current group, if the group has one left.
    fn pop_statement(&mut self, status: OutcomeStatus) -> Option<Outcome> {
        match self.front() {
            Some(Slot::Statement { .. }) => match self.slots.pop_front() {
                Some(Slot::Statement {
                    seq,
                    started,
                    refusal,
                    ..
                }) => {
                    self.forget_statement(&refusal);
                    Some(Outcome::new(seq, started, status))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// ReadyForQuery: what is left of the group was not executed. Returns the message that
    /// ended the group, if one was waiting.
    fn close_group(&mut self, out: &mut Vec<Outcome>) -> Option<MessageId> {
        // `on_event` loses track of a ReadyForQuery with no group end waiting.
        while let Some(slot) = self.slots.pop_front() {
            match slot {
                Slot::GroupEnd { id, .. } => {
                    // Ends sent for COPYs of this group that never started (an error skipped
                    // them) wait for no reply: kept, they would count as unanswered
                    // messages for ever (a review stranded 8,300 so, and the session's next
                    // query waited behind them).
                    self.drop_leading_copy_ends();
                    return Some(id);
                }
                Slot::CopyEnd | Slot::Step { planned: None, .. } => {}
                Slot::Step {
                    planned: Some((seq, started)),
                    ..
                } => out.push(Outcome::new(seq, started, OutcomeStatus::NotExecuted)),
                Slot::Statement {
                    seq,
                    started,
                    refusal,
                    ..
                } => {
                    self.forget_statement(&refusal);
                    let mut outcome = Outcome::new(seq, started, OutcomeStatus::NotExecuted);
                    // Refused, and skipped by the server before its stand-in failed: the
                    // record still names the rule.
                    if let Some(r) = refusal {
                        outcome.message = Some(r.message.clone());
                        outcome.rule = Some(r.rule);
                    }
                    out.push(outcome)
                }
            }
        }
        None
    }

    /// The session ended: whatever is still open was interrupted.
    pub fn interrupt_all(&mut self, out: &mut Vec<Outcome>) {
        // It completed; the session's end rolls its transaction back, as it does any
        // other open transaction's work.
        out.extend(self.awaiting_commit.take().map(|(outcome, _)| outcome));
        (self.statements, self.refused) = (0, 0);
        for slot in self.slots.drain(..) {
            if let Slot::Statement { seq, started, .. }
            | Slot::Step {
                planned: Some((seq, started)),
                ..
            } = slot
            {
                out.push(Outcome::new(seq, started, OutcomeStatus::Interrupted));
            }
        }
    }
}

#[path = "tracker_copy.rs"]
mod copy;

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "tracker_group_tests.rs"]
mod group_tests;

#[cfg(test)]
#[path = "tracker_planned_tests.rs"]
mod planned_tests;
