//! COPY FROM STDIN as the tracker follows it: the server ignores Sync while a COPY reads
//! data, and a COPY may fail after asking for data and before reading any.

use super::{Slot, Tracker};

impl Tracker {
    /// The statement just sent is COPY … FROM STDIN: until the server starts it or fails
    /// it, a Sync sent after it waits (see `copy_start_awaited`).
    pub fn copy_from_stdin(&mut self) {
        if let Some(Slot::Statement { copy_start, .. }) = self.slots.back_mut() {
            *copy_start = true;
            self.copy_starts += 1;
        }
    }

    /// A COPY FROM STDIN is awaited (see `copies_unstarted`).
    #[cfg(test)]
    pub fn copy_start_awaited(&self) -> bool {
        self.copies_unstarted() > 0
    }

    /// How many COPYs FROM STDIN were sent that the server has neither started
    /// (CopyInResponse) nor failed nor will skip (nothing before them failed), and the
    /// client has not ended. A Sync the client sends now is read inside the COPY, and
    /// ignored, if the COPY starts reading; it is answered if the COPY fails first (a
    /// view, FREEZE, a statement trigger fail after asking for data). Which of the two
    /// happens is decided inside the server, so the relay holds such a Sync back until it
    /// knows: then it drops one the COPY would read, and forwards one the server will
    /// answer.
    pub fn copies_unstarted(&self) -> usize {
        if self.copy_starts == 0 || self.skipping_to_sync {
            return 0;
        }
        self.slots
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Slot::Statement {
                        copy_start: true,
                        ..
                    }
                )
            })
            .count()
    }

    /// The server is in COPY FROM STDIN and the client has not ended it yet.
    pub fn in_copy_in(&self) -> bool {
        self.in_copy_in
    }

    /// The client sent CopyDone or CopyFail.
    pub fn copy_end(&mut self) {
        if self.in_copy_in {
            self.in_copy_in = false;
        } else {
            // Sent before the server asked for data: the first COPY not started reads up
            // to it, whenever it starts, and no other message is that COPY's. A second
            // COPY of the same query string still waits for its own end.
            // (No walk where none is counted.)
            let first = (self.copy_starts > 0)
                .then(|| {
                    self.slots.iter_mut().find_map(|slot| match slot {
                        Slot::Statement {
                            copy_start: copy_start @ true,
                            ..
                        } => Some(copy_start),
                        _ => None,
                    })
                })
                .flatten();
            if let Some(copy_start) = first {
                *copy_start = false;
            }
            self.slots.push_back(Slot::CopyEnd);
        }
    }

    /// The server entered COPY FROM STDIN: Syncs the client sent after the COPY and before
    /// ending it will get no ReadyForQuery, if the server reads them during the COPY. (The
    /// client sends none after COPY data: the relay refuses that.) But a COPY may fail
    /// after asking for data and before reading anything (a view, FREEZE, a statement
    /// trigger), and then the server answers them: so if this COPY fails, which of the two
    /// happened cannot be told, and the session must end (see `error`).
    pub(super) fn copy_in_started(&mut self) {
        let Some(copy) = self
            .slots
            .iter()
            .position(|s| matches!(s, Slot::Statement { .. }))
        else {
            return;
        };
        let copy_seq = match &mut self.slots[copy] {
            Slot::Statement {
                seq, copy_start, ..
            } => {
                *copy_start = false;
                Some(*seq)
            }
            _ => None,
        };
        let mut i = copy + 1;
        while i < self.slots.len() {
            match self.slots[i] {
                Slot::GroupEnd { sync: true, .. } => {
                    self.slots.remove(i);
                    self.copy_with_syncs = copy_seq;
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

    /// Counts the COPYs not started again, after a reply that may have settled some.
    pub(super) fn recount_copy_starts(&mut self) {
        if self.copy_starts > 0 {
            self.copy_starts = self
                .slots
                .iter()
                .filter(|s| {
                    matches!(
                        s,
                        Slot::Statement {
                            copy_start: true,
                            ..
                        }
                    )
                })
                .count();
        }
    }
}
