//! The server's side of the relay: what upstream sends is scanned for outcomes, which are
//! recorded, and forwarded to the client as read.

use bytes::BytesMut;

use super::buffers::{self, shrink_if_oversized, splice};
use super::record::take_copy_bytes;
use super::{End, Relay};
use crate::audit::OutcomeStatus;
use crate::guard;
use crate::proxy::tracker::Names;
use crate::wire::{self, sqlstate, BackendEvent};

impl Relay {
    /// Notes whether the server's message `event` was its last word: a FATAL (or PANIC)
    /// ErrorResponse, told by the scanner even when the message came in pieces.
    pub(super) fn heard(&mut self, event: &BackendEvent) {
        let fatal = matches!(event, BackendEvent::Error { fatal: true, .. });
        self.upstream_said_why = fatal;
        self.server_ended_it |= fatal;
    }

    /// Scans what upstream sent for outcomes, records them, and forwards the bytes as read
    /// (except that a refused statement's stand-in error becomes the refusal).
    pub(super) async fn on_upstream_bytes(&mut self) -> Result<(), End> {
        // The event buffer is reused from read to read (taken out so the loop may borrow self).
        let mut events = std::mem::take(&mut self.events);
        self.scanner.feed_located(&self.ubuf, &mut events);
        let mut rewrites = Vec::new();
        for (event, range) in events.drain(..) {
            if let BackendEvent::Parameter { name, value } = &event {
                if !guard::reported_setting_is_safe(name, value) {
                    // End before forwarding anything more: later statements would be split
                    // differently by the server than by the audit.
                    return Err(End::UnsafeSetting(format!(
                        "lockbox: {name} changed to \"{value}\"; the session is ended so that no statement escapes the audit"
                    )));
                }
                if !guard::reported_setting_keeps_access(self.grant.access, name, value) {
                    // The guard's checks failed to keep a read session read-only (the
                    // server reports its default since PostgreSQL 14): nothing more runs.
                    return Err(End::UnsafeSetting(format!(
                        "lockbox: {name} changed to \"{value}\" under a read grant; the session is ended"
                    )));
                }
            }
            // A server that ends a session on purpose says why (a FATAL ErrorResponse is
            // its last message); one that stops or crashes goes without a word. An ERROR is
            // no such word: a pipeline waits for its Sync after one, and the server may
            // crash then.
            self.heard(&event);
            match &event {
                // COPY … TO STDOUT sends one CopyData per row: a row limit counts them too.
                BackendEvent::DataRow | BackendEvent::CopyData(_) => {
                    if let BackendEvent::CopyData(n) = &event {
                        self.copy_bytes += n;
                    }
                    let Some(max) = self.grant.limits.max_rows else {
                        continue;
                    };
                    if self.counts_rows() && self.count_row() > max {
                        // Forward what came before this row, then end the session. A row that
                        // began in an earlier read began in the bytes held back: none of it goes.
                        let Some(upto) = range.as_ref().map(|r| r.start) else {
                            self.torn.clear();
                            return Err(End::RowLimit(max));
                        };
                        let ubuf = std::mem::take(&mut self.ubuf);
                        let head = splice(&ubuf[..upto], std::mem::take(&mut rewrites));
                        let resumes_at = self.scanner.first_boundary();
                        let _ = self.forward_held_then(&head, false, resumes_at).await;
                        return Err(End::RowLimit(max));
                    }
                    continue;
                }
                BackendEvent::Error { .. } => {
                    self.rows = 0;
                    self.statements.server_failed();
                }
                BackendEvent::Complete(_)
                | BackendEvent::Empty
                | BackendEvent::Suspended { .. } => self.rows = 0,
                BackendEvent::Ready(_)
                    if self.uncounted.is_empty() && self.drawn_from.is_empty() => {}
                BackendEvent::Ready(_) => {
                    // Statements before this Ready are settled.
                    if let Some(next) = self.tracker.running() {
                        self.uncounted = self.uncounted.split_off(&next);
                        self.drawn_from = self.drawn_from.split_off(&next);
                    } else {
                        self.uncounted.clear();
                        self.drawn_from.clear();
                    }
                }
                _ => {}
            }
            let settled = self.outcomes.len();
            let suspended = match event {
                BackendEvent::Suspended { rows } => self.tracker.running().map(|seq| (seq, rows)),
                _ => None,
            };
            let copying = self.tracker.in_copy_in();
            let names = self
                .tracker
                .on_event(event, &mut self.outcomes)
                .map_err(|lost| End::LostTrack(lost.0))?;
            // The server asked for COPY data the client has not ended yet, or the COPY is
            // over (its end read before any Sync the client sends from now on).
            match (copying, self.tracker.in_copy_in()) {
                (false, true) => self.copy_open = true,
                (true, false) => self.copy_open = false,
                _ => {}
            }
            if let Some(names) = names {
                match names {
                    Names::Confirm { id, tag } => self
                        .statements
                        .confirm(id, tag.as_deref())
                        .map_err(|lost| End::LostTrack(lost.0))?,
                    Names::Settle { through } => self
                        .statements
                        .settle(through, self.tracker.transaction_status),
                    Names::Failed { id } => self.statements.failed(id),
                }
                // What the server let go of (a closed statement, an ended portal) goes back
                // to the shared budget now, not with the client's next message.
                self.kept_share.give_back_kept(self.statements.retained());
            }
            if let Some((seq, returned)) = suspended {
                let outcome = self.outcomes[settled..]
                    .iter_mut()
                    .find(|o| o.statement_seq == seq);
                if let Some(outcome) = outcome {
                    outcome.suspended_after = Some(returned);
                }
            }
            // Bytes counted so far belong to the COPY settled now, not to one settled later
            // in the same read.
            let held = self.tracker.awaiting_commit_mut();
            for outcome in self.outcomes[settled..].iter_mut().chain(held) {
                take_copy_bytes(&mut self.copy_bytes, outcome);
            }
            let refused = self.outcomes[settled..]
                .iter()
                .find(|o| o.status == OutcomeStatus::Refused);
            // A FATAL in the stand-in's place (the backend was ended just then) is the
            // server's last word, and the client is owed it: made into the refusal's ERROR,
            // the client would see no FATAL at all, the proxy taking it as relayed.
            let server_ended_here = self.upstream_said_why;
            if let (Some(outcome), Some(range), false) = (refused, range, server_ended_here) {
                let mut error = BytesMut::new();
                wire::error_response(
                    &mut error,
                    wire::Severity::Error,
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    outcome.message.as_deref().unwrap_or("lockbox: refused"),
                );
                rewrites.push((range, error.to_vec()));
            }
        }
        self.events = buffers::emptied(events);
        // While a stand-in's error is due, an unfinished message is held back until it is
        // whole, so the error can be swapped before any of it reaches the client.
        let held = match self
            .tracker
            .refusal_pending()
            .then(|| self.scanner.unfinished_start())
        {
            Some(Some(start)) => {
                self.scanner.rewind();
                Some(self.ubuf.split_off(start))
            }
            _ => None,
        };
        if self.warnings.has_pending() {
            self.insert_notice(held.is_some(), &mut rewrites);
        }
        // Taken out while it is written, as the write needs the relay whole.
        let ubuf = std::mem::take(&mut self.ubuf);
        let outgoing = splice(&ubuf, rewrites);
        // The bytes at the end of `outgoing` that belong to a message not yet whole: those
        // after the last boundary (rewrites and notices all lie before it), or all of them
        // when the read continues a message begun earlier.
        let continues = !self.scanner.at_boundary() && self.scanner.last_boundary().is_none();
        let unfinished = match self.scanner.last_boundary() {
            _ if self.scanner.at_boundary() => 0,
            Some(start) => ubuf.len() - start,
            None => outgoing.len(),
        };
        let unfinished_total = unfinished + if continues { self.torn.len() } else { 0 };
        // A message already streaming to the client goes on streaming; one that outgrows
        // the limit starts to.
        let hold = unfinished > 0
            && !(continues && self.client_mid_message)
            && unfinished_total <= buffers::HOLD_LIMIT;
        // Still the message held back: nothing to send yet. Otherwise the bytes held so
        // far go first, then these but for what is held back next.
        let sent = if hold && continues {
            Ok(())
        } else {
            let send = &outgoing[..outgoing.len() - if hold { unfinished } else { 0 }];
            // Rewrites and notices all lie past the first boundary: its offset holds.
            let resumes_at = self.scanner.first_boundary();
            self.forward_held_then(send, unfinished > 0 && !hold, resumes_at)
                .await
        };
        // Outcomes gate nothing: they are recorded once the client has its answer, off the
        // path of the reply (sent or not; a session dropped during the write records what
        // is left in `outcomes` as it ends).
        if !self.outcomes.is_empty() {
            // Drained, not taken: the buffer is kept for the next read.
            let mut outcomes = std::mem::take(&mut self.outcomes);
            self.record_outcomes(outcomes.drain(..));
            self.outcomes = buffers::emptied(outcomes);
        }
        if hold {
            self.torn
                .extend_from_slice(&outgoing[outgoing.len() - unfinished..]);
        }
        drop(outgoing);
        self.ubuf = ubuf;
        sent?;
        self.ubuf.clear();
        match held {
            Some(rest) => self.ubuf.unsplit(rest),
            None => shrink_if_oversized(&mut self.ubuf),
        }
        Ok(())
    }
}
