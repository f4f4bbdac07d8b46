//! Client messages whose fate upstream depends on a reply not yet come: they wait, with
//! everything the client sends after them, until it has. Forwarded blind, the tracker
//! would expect replies the server does not send (or the audit would name what does not
//! run), and every later reply would land on the wrong statement.
//!
//! - **COPY FROM STDIN.** While the server reads COPY data it ignores Flush and Sync and
//!   fails the COPY on any other message, which it consumes: a query sent then never runs
//!   and gets no reply of its own. After the COPY has failed (a bad row, a view, FREEZE)
//!   the same message is answered as usual.
//! - **Names from an earlier group.** A Bind or Execute that finds its statement or portal
//!   through a change still waiting in an earlier group (a Parse before the last Sync,
//!   say) waits for that group's ReadyForQuery: the change may fail (a Parse of a name that
//!   exists) and the server would then run what the name held before.

use super::Relay;
use crate::proxy::statements::{PENDING_HIGH, PENDING_LOW, PENDING_TEXT_HIGH};
use crate::wire;

/// Why a Sync among COPY data is refused. No client sends one: COPY data ends with
/// CopyDone or CopyFail.
const SYNC_IN_COPY: &str = "Sync sent inside COPY FROM STDIN data (before CopyDone or CopyFail): \
     whether the server answers it depends on whether the COPY failed first";

/// Why any other message among COPY data is refused.
const MESSAGE_IN_COPY: &str =
    "message sent inside COPY FROM STDIN data (before CopyDone or CopyFail): \
     the server would end the COPY with it, unless the COPY failed first";

/// What becomes of one client message (see `Relay::verdict`).
pub(super) enum Verdict {
    /// Inspect and forward it as usual.
    Pass,
    /// Leave it, and everything after it, at the front of the client buffer.
    Hold,
    /// Consume it without forwarding: the server would have ignored it.
    Drop,
    /// End the session: its fate upstream cannot be known.
    Refuse(&'static str),
}

impl Relay {
    /// The fate of the whole message `frame`; `more_behind`: the client sent more after it.
    ///
    /// libpq and tokio-postgres send a Sync right behind a COPY's Execute, before its data:
    /// the server reads it inside the COPY and ignores it, unless the COPY fails before
    /// reading anything (a view, FREEZE, a statement trigger fail after asking for data),
    /// when it answers it. So a message sent after a COPY FROM STDIN the server has not
    /// started or failed yet waits until it has; once the server asked for data, it still
    /// waits for the COPY's failure or the client's next bytes (its data, sent once it saw
    /// the request). Then a Sync is dropped if the COPY reads (the server would ignore it)
    /// and forwarded if it failed, and any other message is refused if the COPY reads (no
    /// client sends one there) and forwarded if it failed.
    pub(super) fn verdict(&mut self, frame: &[u8], more_behind: bool) -> Verdict {
        if self.must_wait(frame, more_behind, self.batch) {
            // The server may be sitting on the answers the backlog waits for, its output
            // unflushed until a Sync or Flush the client has yet to send.
            if !self.held && self.backlogged(self.batch) {
                self.flush_upstream = true;
            }
            self.held = true;
            return Verdict::Hold;
        }
        let was_held = std::mem::take(&mut self.held);
        // `copy_open`: the server asked for data (or the client sent some) and neither the
        // COPY's end nor the client's CopyDone or CopyFail has come since.
        match (self.copy_open, frame[0]) {
            (false, _) | (_, b'd' | b'c' | b'f' | b'H' | b'X') => Verdict::Pass,
            // Sent before the client knew the COPY had started: read inside it.
            (true, b'S') if was_held => Verdict::Drop,
            (true, b'S') => Verdict::Refuse(SYNC_IN_COPY),
            (true, _) => Verdict::Refuse(MESSAGE_IN_COPY),
        }
    }

    /// The message held at the front of the client buffer must wait still.
    pub(super) fn still_held(&self) -> bool {
        let Ok(Some(len)) = wire::frame_len(&self.cbuf, self.max_message) else {
            return false;
        };
        self.must_wait(
            &self.cbuf[..len],
            self.cbuf.len() > len,
            BatchSoFar::default(),
        )
    }

    /// `batch`: COPY in the batch the message is in, before it.
    fn must_wait(&self, frame: &[u8], more_behind: bool, batch: BatchSoFar) -> bool {
        let tag = frame[0];
        // COPY data, its end, and Flush (no reply, ignored inside a COPY) go as they come;
        // Terminate ends the session either way.
        if matches!(tag, b'd' | b'c' | b'f' | b'H' | b'X') {
            return false;
        }
        if self.backlogged(batch) {
            return true;
        }
        let copy_unstarted = self.copies_unstarted(batch) > 0;
        if copy_unstarted && (self.held || !self.copy_open) {
            return true;
        }
        if self.held && self.copy_open && !more_behind {
            return true;
        }
        // Refused below if a COPY reads; skipped by the server if it skips to a Sync the
        // client has not sent yet (which then waits behind this message: holding it would
        // wait for ever).
        if self.copy_open || self.server_skips(batch) {
            return false;
        }
        let body = &frame[5..];
        match tag {
            b'B' => {
                wire::cstr_at(body, 1).is_some_and(|name| !self.statements.statement_certain(&name))
            }
            b'E' => {
                wire::cstr_at(body, 0).is_some_and(|name| !self.statements.portal_certain(&name))
            }
            _ => false,
        }
    }

    /// Too many changes to the session's names wait for the server's answer: a client that
    /// sends faster than the server answers (a pipelined `executemany`) is read no further
    /// until the server caught up (backpressure), rather than have its messages pile up in
    /// the proxy. Not while the server skips to a Sync: nothing it skips is answered, and
    /// the Sync that ends the skip may be next.
    fn backlogged(&self, batch: BatchSoFar) -> bool {
        if self.server_skips(batch) {
            return false;
        }
        let (changes, text) = self.statements.pending_load();
        // Messages the server has yet to answer, the batch's too (the tracker learns of them
        // once the batch is recorded): Syncs pipelined behind a long statement change no
        // name, yet each waits for its ReadyForQuery (an attack review queued 1.4 million
        // per session so).
        let unanswered = self.tracker.outstanding() + batch.messages;
        let (max, max_text, max_unanswered) = if self.held {
            (PENDING_LOW, PENDING_TEXT_HIGH / 4, UNANSWERED_LOW)
        } else {
            (PENDING_HIGH, PENDING_TEXT_HIGH, UNANSWERED_HIGH)
        };
        changes >= max || text >= max_text || unanswered >= max_unanswered
    }

    /// The server skips to a Sync (so discards this message) and the changes waiting for
    /// its answer are many: a Parse, Bind or Close is not kept as a change, since it will
    /// never be confirmed. (Kept below that, a skipped Execute's record names the text it
    /// would have run.) A client that pipelines thousands of rows after an early error
    /// (`executemany`) keeps its session.
    pub(super) fn discarded_past_backlog(&self) -> bool {
        self.server_skips(self.batch) && {
            let (changes, text) = self.statements.pending_load();
            changes >= PENDING_HIGH || text >= PENDING_TEXT_HIGH
        }
    }

    /// The server will discard the message being inspected: it skips to a Sync after an
    /// error, and the client sent none since (none in this batch before the message either:
    /// the tracker learns of the batch's Syncs only once it is recorded).
    fn server_skips(&self, batch: BatchSoFar) -> bool {
        self.tracker.skipping_to_sync() && !batch.synced
    }

    /// A COPY FROM STDIN reads data, or may start to, and the client has not ended it.
    pub(super) fn copy_may_read(&self) -> bool {
        let batch = self.batch;
        self.copies_unstarted(batch) > 0 || (self.tracker.in_copy_in() && batch.copies_ended == 0)
    }

    /// COPYs FROM STDIN sent that the server has not started or failed, and the client has
    /// not ended: those the tracker knows of and those of the batch, less the batch's
    /// CopyDone and CopyFail (the first of which ends a COPY running now, if one is).
    fn copies_unstarted(&self, batch: BatchSoFar) -> usize {
        let ending_running = usize::from(self.tracker.in_copy_in() && batch.copies_ended > 0);
        (self.tracker.copies_unstarted() + batch.copies_sent)
            .saturating_sub(batch.copies_ended - ending_running)
    }
}

/// What the batch of client messages being inspected sent so far, which the tracker
/// learns only once the batch is recorded.
#[derive(Clone, Copy, Default)]
pub(crate) struct BatchSoFar {
    /// COPY FROM STDIN statements.
    pub(super) copies_sent: usize,
    /// CopyDone and CopyFail messages.
    pub(super) copies_ended: usize,
    /// A Sync: whatever the server skips ends there.
    pub(super) synced: bool,
    /// Messages passed on that wait for an answer (all but COPY data and its end, Flush
    /// and Terminate).
    pub(super) messages: usize,
}

/// Past this many messages sent and not yet answered, the relay reads no more client
/// messages until the server has answered some (down to [`UNANSWERED_LOW`]). Each costs the
/// tracker a slot, and each reply a look through them.
pub(super) const UNANSWERED_HIGH: usize = 4 * PENDING_HIGH;
pub(super) const UNANSWERED_LOW: usize = 4 * PENDING_LOW;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::AccessLevel;
    use crate::proxy::relay::fuzz::message;
    use crate::proxy::relay::Pending;

    /// Syncs pipelined behind a long statement change no name, yet each waits for its
    /// ReadyForQuery: past [`UNANSWERED_HIGH`] of them the relay reads no further until the
    /// server answers (an attack review queued 1.4 million per session, and replies then
    /// took time quadratic in the queue).
    #[test]
    fn messages_waiting_for_answers_hold_back_the_rest() {
        let fixture = super::super::fuzz::fixture().expect("fixture");
        let _entered = fixture.runtime.enter();
        let mut relay = super::super::fuzz::relay(fixture, AccessLevel::Read, 1 << 20);
        let sync = message(b'S', b"");
        let mut bytes = message(b'Q', b"SELECT pg_sleep(25)\0");
        bytes.extend(sync.repeat(2 * UNANSWERED_HIGH));
        let batch = relay.inspect_batch(&bytes).expect("inspected");
        let query_len = bytes.len() - 2 * UNANSWERED_HIGH * sync.len();
        let syncs_taken = (batch.consumed - query_len) / sync.len();
        assert_eq!(
            syncs_taken + 1,
            UNANSWERED_HIGH,
            "the query and the Syncs up to the bound"
        );
        assert!(relay.held, "the rest waits");
        // COPY data waits for no answer: it is never held back for it.
        let mut relay = super::super::fuzz::relay(fixture, AccessLevel::Read, 1 << 20);
        let data = message(b'd', b"1\n").repeat(2 * UNANSWERED_HIGH);
        let batch = relay.inspect_batch(&data).expect("inspected");
        assert_eq!(batch.consumed, data.len());
    }

    /// CopyDone and CopyFail where no COPY reads are ignored by the server, which answers
    /// nothing: nothing is kept for them (a review sent 100,000, each kept and each costing
    /// a walk of the queue, and past the bound above the session waited for ever), and they
    /// end no COPY sent after them.
    #[test]
    fn copy_ends_outside_a_copy_keep_nothing_and_end_no_later_copy() {
        let fixture = super::super::fuzz::fixture().expect("fixture");
        let _entered = fixture.runtime.enter();
        let mut relay = super::super::fuzz::relay(fixture, AccessLevel::Write, 1 << 20);
        let mut bytes = message(b'c', b"").repeat(UNANSWERED_HIGH);
        bytes.extend(message(b'f', b"gone\0").repeat(UNANSWERED_HIGH));
        bytes.extend(message(b'Q', b"SELECT 1\0"));
        let batch = relay.inspect_batch(&bytes).expect("inspected");
        assert_eq!(batch.consumed, bytes.len(), "nothing held");
        assert!(
            !batch.pending.iter().any(|p| matches!(p, Pending::CopyEnd)),
            "nothing kept for them"
        );
        // A CopyDone before a COPY in the same batch does not end it: what follows the COPY
        // still waits for the server to start or fail it.
        let mut relay = super::super::fuzz::relay(fixture, AccessLevel::Write, 1 << 20);
        let copy = message(b'Q', b"COPY t FROM STDIN\0");
        let bytes = [
            message(b'c', b""),
            copy.clone(),
            message(b'Q', b"SELECT 1\0"),
        ]
        .concat();
        let batch = relay.inspect_batch(&bytes).expect("inspected");
        assert_eq!(
            batch.consumed,
            5 + copy.len(),
            "the query after the COPY waits"
        );
        assert!(relay.held);
    }
}
