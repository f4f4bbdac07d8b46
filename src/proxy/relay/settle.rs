//! The client left while a statement ran. The proxy cancels it, as it would anyway (the
//! backend would otherwise run on, past the grant if need be), and then reads the server's
//! answers for a moment, forwarding nothing, so that the trail says what became of the
//! statement: completed (it may have committed before the cancel landed), failed, or
//! cancelled. Without this every such statement was recorded `interrupted`, which says
//! only that the proxy never saw its answer.
//!
//! Only where one group is open (a query string, or steps ending with their Sync): its
//! ReadyForQuery then settles everything sent. A batch without its Sync gets no
//! ReadyForQuery, and statements sent after another group's end could run on after the
//! cancel; those ends stay as they were (`interrupted`, the backend closed at once).

use tokio::io::AsyncReadExt;

use super::record::take_copy_bytes;
use super::{buffers, Relay};
use crate::proxy::registry::DropReason;
use crate::wire::BackendEvent;

/// How the wait for the answers of a client that left ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Settled {
    /// Everything sent is settled, or cannot be: the session ends as the client's leaving.
    Done,
    /// The grant ended, or the proxy shuts down: the session ends for that reason.
    Dropped(DropReason),
    /// The server ended the connection first, with a FATAL: its backend is gone. A
    /// revocation whose role drop ended the backend before the news reached this session
    /// looks like this too; the session's end asks the state store which it was
    /// (`session::end::whose_end`).
    ServerClosed,
}

impl Relay {
    /// Cancels what runs and reads the server's answers until everything sent is settled
    /// (outcomes in `self.outcomes`), the server closes, or the grant's `settle_within`
    /// passes: a cancel lands within milliseconds, and what the server sent before it (a
    /// COPY's rows in the socket buffers) is read as fast. That bound is half the reaper's
    /// window, which counts from the relay's end, not from this wait's: a statement that
    /// ignores the cancel (a procedure that catches it) lives no longer than without it.
    /// Revocation, expiry or shutdown meanwhile stops the wait at once and is returned:
    /// the session ends for that reason (a grant's role is dropped then, as for any
    /// session its end finds).
    pub(super) async fn settle_after_client_left(&mut self) -> Settled {
        if !self.tracker.one_group_open() {
            return Settled::Done;
        }
        let Some(key) = self.grant.limits.cancel.clone() else {
            return Settled::Done;
        };
        tokio::spawn(async move {
            if let Err(e) =
                crate::proxy::upstream::send_cancel(&key.host, key.port, key.pid, key.secret).await
            {
                tracing::warn!(error = %e, "could not cancel the statement of a client that left");
            }
        });
        let deadline = tokio::time::Instant::now() + self.grant.limits.settle_within;
        // A COPY FROM STDIN started after all (a function's) waits for data: no answer comes.
        while !self.tracker.is_idle() && !self.tracker.in_copy_in() {
            if let Some(reason) = self.term.ended() {
                return Settled::Dropped(reason);
            }
            let read = tokio::select! {
                biased;
                reason = self.term.fired() => return Settled::Dropped(reason),
                read = tokio::time::timeout_at(deadline, self.upstream_r.read_buf(&mut self.ubuf)) => read,
            };
            let Ok(read) = read else {
                // The statement ignores the cancel: the reaper takes over.
                return self.term.ended().map_or(Settled::Done, Settled::Dropped);
            };
            if !matches!(read, Ok(n) if n > 0) {
                // A revocation may close the backend (its role dropped) as it ends the
                // session: the end is the revocation's, not the server's. A connection
                // that ended without the server's FATAL may have been closed by something
                // in between (a load balancer's idle timeout) while the backend runs on:
                // the cancel and the reaper make sure.
                let closed = if self.server_ended_it {
                    Settled::ServerClosed
                } else {
                    Settled::Done
                };
                return self.term.ended().map_or(closed, Settled::Dropped);
            }
            if !self.settle_read() {
                return Settled::Done;
            }
        }
        Settled::Done
    }

    /// Scans what was read for outcomes, as the relay does, and drops the bytes. False if
    /// the replies could no longer be matched to statements.
    fn settle_read(&mut self) -> bool {
        let mut events = std::mem::take(&mut self.events);
        self.scanner.feed_located(&self.ubuf, &mut events);
        let mut on_track = true;
        for (event, _) in events.drain(..) {
            // Rows go to no statement's settling, as in the relay (`on_upstream_bytes`).
            match event {
                BackendEvent::CopyData(n) => {
                    self.copy_bytes += n;
                    continue;
                }
                BackendEvent::DataRow => continue,
                _ => {}
            }
            self.heard(&event);
            let settled = self.outcomes.len();
            if self.tracker.on_event(event, &mut self.outcomes).is_err() {
                on_track = false;
                break;
            }
            let held = self.tracker.awaiting_commit_mut();
            for outcome in self.outcomes[settled..].iter_mut().chain(held) {
                take_copy_bytes(&mut self.copy_bytes, outcome);
            }
        }
        self.events = buffers::emptied(events);
        self.ubuf.clear();
        on_track
    }
}
