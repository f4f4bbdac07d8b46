//! Client messages around COPY FROM STDIN. While the server reads COPY data it ignores
//! Flush and Sync and fails the COPY on any other message, which it consumes: a query sent
//! then never runs and gets no reply of its own. After the COPY has failed (a bad row, a
//! view, FREEZE) the same message is answered as usual. Which of the two happens is
//! decided inside the server, so a message whose fate depends on it is never forwarded
//! while the proxy cannot tell: the tracker would expect replies the server does not send,
//! and every later reply would land on the wrong statement.

use super::record::Pending;
use super::Relay;

/// Why a Sync among COPY data is refused. No client sends one: COPY data ends with
/// CopyDone or CopyFail.
const SYNC_IN_COPY: &str = "Sync sent inside COPY FROM STDIN data (before CopyDone or CopyFail): \
     whether the server answers it depends on whether the COPY failed first";

/// Why any other message among COPY data is refused.
const MESSAGE_IN_COPY: &str =
    "message sent inside COPY FROM STDIN data (before CopyDone or CopyFail): \
     the server would end the COPY with it, unless the COPY failed first";

/// What becomes of one client message (see `Relay::copy_gate`).
pub(super) enum CopyGate {
    /// Inspect and forward it as usual.
    Pass,
    /// Leave it, and everything after it, at the front of the client buffer until the
    /// server has started or failed the COPY before it.
    Hold,
    /// Consume it without forwarding: the server would have ignored it.
    Drop,
    /// End the session: its fate upstream cannot be known.
    Refuse(&'static str),
}

impl Relay {
    /// The fate of a message with tag `tag`, `batch` being what the batch it is in sends
    /// before it.
    ///
    /// libpq and tokio-postgres send a Sync right behind a COPY's Execute, before its data:
    /// the server reads it inside the COPY and ignores it, unless the COPY fails before
    /// reading anything (a view, FREEZE, a statement trigger fail after asking for data),
    /// when it answers it. So a message sent after a COPY FROM STDIN the server has not
    /// started or failed yet waits until it has. Then a Sync is dropped if the COPY is
    /// reading (the server would ignore it) and forwarded if not, and any other message
    /// is refused if the COPY is reading (no client sends one there) and forwarded if not.
    pub(super) fn copy_gate(&mut self, tag: u8, batch: &[Pending]) -> CopyGate {
        // COPY data, its end, and Flush (no reply, ignored inside a COPY) go as they come;
        // Terminate ends the session either way.
        if matches!(tag, b'd' | b'c' | b'f' | b'H' | b'X') {
            return CopyGate::Pass;
        }
        let awaited = self.copy_start_awaited(batch);
        if awaited && (self.held_for_copy || !self.copy_open) {
            self.held_for_copy = true;
            return CopyGate::Hold;
        }
        // `copy_open`: the server asked for data (or the client sent some) and neither the
        // COPY's end nor the client's CopyDone or CopyFail has come since.
        let was_held = std::mem::take(&mut self.held_for_copy);
        match (self.copy_open, tag) {
            (false, _) => CopyGate::Pass,
            // Sent before the client knew the COPY had started: read inside it.
            (true, b'S') if was_held => CopyGate::Drop,
            (true, b'S') => CopyGate::Refuse(SYNC_IN_COPY),
            (true, _) => CopyGate::Refuse(MESSAGE_IN_COPY),
        }
    }
}

impl Relay {
    /// A COPY FROM STDIN was sent that the server has not started or failed yet, and the
    /// client has not ended it (CopyDone, CopyFail), in this batch or before it.
    fn copy_start_awaited(&self, batch: &[Pending]) -> bool {
        last_copy_mark(batch).unwrap_or_else(|| self.tracker.copy_start_awaited())
    }

    /// A COPY FROM STDIN reads data, or may start to, and the client has not ended it.
    pub(super) fn copy_may_read(&self, batch: &[Pending]) -> bool {
        last_copy_mark(batch)
            .unwrap_or_else(|| self.tracker.copy_start_awaited() || self.tracker.in_copy_in())
    }
}

/// Whether the batch's last word on COPY FROM STDIN is a COPY sent (true) or a CopyDone
/// or CopyFail (false); `None` if it has none.
fn last_copy_mark(batch: &[Pending]) -> Option<bool> {
    batch.iter().rev().find_map(|p| match p {
        Pending::CopyFromStdin => Some(true),
        Pending::CopyEnd => Some(false),
        _ => None,
    })
}
