//! How encoded records reach the audit file: under the writer's lock, behind the records
//! held for the next write (outcomes), with what a failed write leaves behind undone. The
//! callers — sessions through [`super::writer::AuditLog`], and the syncer — decide when;
//! this decides what a write covers and what its failure costs.

use std::io::Write;
use std::sync::atomic::Ordering;
#[cfg(test)]
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::file::encode_line;
use super::journal::{Frame, JournalError};
use super::syncer::{CHECKPOINT_EVERY, FLUSH_AFTER};
use super::writer::{Shared, State, Written};
use super::AuditError;

impl Shared {
    /// Tests only: see [`Shared::sync_hook`].
    #[cfg(test)]
    pub(super) fn before_sync(&self) -> std::io::Result<()> {
        let hook = self
            .sync_hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        hook.map_or(Ok(()), |hook| hook())
    }

    #[cfg(not(test))]
    pub(super) fn before_sync(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// Tests only: see [`Shared::trail_sync_hook`].
    #[cfg(test)]
    pub(super) fn before_trail_sync(&self) -> std::io::Result<()> {
        let hook = self
            .trail_sync_hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        hook.map_or(Ok(()), |hook| hook())
    }

    #[cfg(not(test))]
    pub(super) fn before_trail_sync(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// The active file is big or old enough to be rotated (see `Syncer::rotate_if_due`).
    pub(super) fn rotation_due(&self, state: &State) -> bool {
        if state
            .rotation_put_off_until
            .is_some_and(|until| Instant::now() < until)
        {
            return false;
        }
        let by_size = self.options.rotate_size.is_some_and(|s| state.len >= s);
        let by_time = self
            .options
            .rotate_interval
            .is_some_and(|t| state.file_opened.elapsed() >= t);
        state.len > 0 && (by_size || by_time)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Not poisoned by a panic under it: that leaves the chain state as the last
        // completed write left it (every field is updated only after a write succeeds).
        self.state.lock()
    }

    /// Writes the records whose fields are `fields[..ends[0]]`, `fields[ends[0]..ends[1]]`,
    /// … (or leaves them pending), in parts of at most about [`WRITE_PART`] bytes, the lock
    /// taken again for each: a query string of thousands of statements is chained and
    /// written while other sessions' records go between its parts, so no session waits
    /// behind another's batch for longer than one part takes. Stops at the first part that
    /// fails; those before it stay written.
    pub(super) fn write_parts(
        &self,
        fields: &[u8],
        ends: &[usize],
        mode: Mode,
    ) -> Result<Landed, Unwritten> {
        let mut landed: Option<Landed> = None;
        let (mut from, mut start) = (0, 0);
        let mut state = self.lock();
        loop {
            // At least one record per part, however large (`clip` bounds a record).
            let mut to = from;
            while to < ends.len() && (to == from || ends[to] - start <= WRITE_PART) {
                to += 1;
            }
            if landed.is_some() {
                // Handed to a session waiting for it, if any (a plain unlock would let this
                // thread take it straight back, and the waiter wait for the whole batch).
                MutexGuard::unlocked_fair(&mut state, || self.between_parts());
            }
            match self.write_lines(&mut state, fields, start, &ends[from..to], mode) {
                Ok(written) => match &mut landed {
                    None => {
                        // One waiting append, however many parts: the count says how many
                        // sessions a sync serves (see `Written::lead`).
                        if mode.syncs() {
                            state.waited_appends += 1;
                        }
                        landed = Some(Landed::new(written));
                    }
                    Some(landed) => landed.rest.push(written),
                },
                Err(error) => {
                    return Err(Unwritten {
                        error,
                        written: landed.map(Box::new),
                    })
                }
            }
            if to >= ends.len() {
                break;
            }
            // `to > from`: every part holds a record.
            (from, start) = (to, ends[to - 1]);
        }
        landed.ok_or(Unwritten {
            error: AuditError::Closed,
            written: None,
        })
    }

    /// Tests only: see [`Shared::between_parts_hook`].
    #[cfg(test)]
    fn between_parts(&self) {
        let hook = self
            .between_parts_hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(hook) = hook {
            hook();
        }
    }

    #[cfg(not(test))]
    fn between_parts(&self) {}

    /// Encodes one line per record (`fields[start..ends[0]]`, `fields[ends[0]..ends[1]]`,
    /// …) behind the pending ones and writes them all, or leaves them pending.
    fn write_lines(
        &self,
        state: &mut State,
        fields: &[u8],
        start: usize,
        ends: &[usize],
        mode: Mode,
    ) -> Result<Written, AuditError> {
        if state.closed {
            return Err(AuditError::Closed);
        }
        if let Some(refused) = &state.refused {
            return Err(refused.clone());
        }
        // Stamped under the lock, so times rise with `seq` along the chain.
        let time = super::encode::TimeStamp::now();
        let first = state.next_seq;
        // Records held from before this append (outcomes) must not be lost with it if the
        // write fails: they are written on their own then.
        let held = (state.pending.len(), state.next_seq, state.last_hash);
        let mut start = start;
        for &end in ends {
            state.encode(time.as_str(), &fields[start..end]);
            start = end;
        }
        let written = Written {
            generation: state.generation,
            first,
            last: state.next_seq - 1,
            lead: mode.syncs()
                && state.waiters_per_sync <= LEAD_WHILE_WAITERS_PER_SYNC
                && state.last_sync_took < LEAD_WHILE_SYNCS_TAKE
                && may_lead_sync_here(),
        };
        match mode {
            Mode::Later if state.pending.len() >= MAX_PENDING => {
                // Backpressure: past the bound the appender writes what is held itself, so
                // held records never grow with the rate of appends (a failing disk drops
                // them here, fail-closed: the writer turns unhealthy and refuses statements).
                if let Err(e) = self.flush(state) {
                    state.drop_failed();
                    return Err(e);
                }
            }
            Mode::Later => {
                let now = Instant::now();
                let due = *state.pending_since.get_or_insert(now) + FLUSH_AFTER;
                if state.syncer_sleeps_until.is_some_and(|until| until > due) {
                    state.syncer_sleeps_until = None;
                    self.woken_for_held.fetch_add(1, Ordering::Relaxed);
                    self.syncer_wake.notify_one();
                }
            }
            Mode::Now { sync } => {
                if let Err(e) = self.flush(state) {
                    self.write_held(state, held);
                    return Err(e);
                }
                if sync {
                    state.sync_wanted = state.sync_wanted.max(written.last);
                    if !written.lead && state.syncer_sleeps_until.take().is_some() {
                        self.syncer_wake.notify_one();
                    }
                }
            }
        }
        Ok(written)
    }

    /// After a failed write of held records and an append's own: the append's records are
    /// given up (its caller refuses the statement) and the held ones written alone, since
    /// they may still fit.
    fn write_held(&self, state: &mut State, (len, next_seq, last_hash): (usize, u64, [u8; 32])) {
        if len == 0 || state.failed_pending.len() < len {
            // Only the append's own records: its caller refuses the statement.
            state.failed_pending.clear();
            return;
        }
        state.failed_pending.truncate(len);
        std::mem::swap(&mut state.pending, &mut state.failed_pending);
        state.next_seq = next_seq;
        state.last_hash = last_hash;
        match state.write_pending() {
            Ok(()) => {
                self.head.send_replace(state.file_seq);
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "held audit records could not be written either");
                state.drop_failed();
            }
        }
    }

    /// Writes the pending records; on failure they are dropped and the chain resumes from
    /// the file's last record.
    pub(super) fn flush(&self, state: &mut State) -> Result<(), AuditError> {
        if let Some(refused) = &state.refused {
            return Err(refused.clone());
        }
        if state.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = state.write_pending() {
            self.healthy.store(false, Ordering::SeqCst);
            tracing::error!(path = %self.path.display(), error = %e, "audit write failed; statements are refused");
            return Err(AuditError::Io {
                path: self.path.display().to_string(),
                message: e.to_string(),
            });
        }
        if !self.healthy.swap(true, Ordering::SeqCst) {
            tracing::info!(path = %self.path.display(), "audit log writable again; service resumes");
        }
        self.head.send_replace(state.file_seq);
        // Housekeeping is due: the syncer may be asleep for a while when appenders sync
        // their records themselves.
        let trail_wanted = !state.trail_syncing
            && state
                .journal
                .as_ref()
                .is_some_and(|journal| journal.trail_wanted_soon(state.trail_durable));
        if (state.uncovered >= CHECKPOINT_EVERY || self.rotation_due(state) || trail_wanted)
            && state.syncer_sleeps_until.take().is_some()
        {
            self.syncer_wake.notify_one();
        }
        Ok(())
    }
}

/// Appenders sync their records themselves while syncs cover at most this many waiting
/// appends on average (in 1/256ths: 1.25), that is while sessions wait one at a time. Any
/// busier, a session's thread held in an fdatasync would hold up other sessions' traffic
/// (pgbench, 8 clients: 7% fewer transactions), and the syncer's group commit is cheaper.
const LEAD_WHILE_WAITERS_PER_SYNC: u64 = 320;

/// …and while an fdatasync takes less than this: on a slow or failing disk a session's
/// thread is not held in one, the syncer waits instead.
const LEAD_WHILE_SYNCS_TAKE: Duration = Duration::from_millis(5);

/// A session's thread is only held in an fdatasync where nothing else waits for it: on a
/// session thread that serves this one connection alone, or on a runtime with another
/// worker. Never on a session thread with other sessions (a slow disk would hold them
/// all), nor on a single-threaded runtime that runs the rest too.
pub(crate) fn may_lead_sync_here() -> bool {
    if let Some(connections) = crate::runtime::session_thread_connections() {
        return connections <= 1;
    }
    tokio::runtime::Handle::try_current().is_ok_and(|h| {
        h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            && h.metrics().num_workers() >= 2
    })
}

/// Most bytes of record fields one part of an append holds (see [`Shared::write_parts`]):
/// chaining and writing 256 KiB take well under a millisecond, and a part this large makes
/// the lock's cost per byte small.
pub(super) const WRITE_PART: usize = 256 << 10;

/// Where an append's records landed: one run of sequence numbers per part it was written in
/// (one part unless the append was large; see [`Shared::write_parts`]).
#[derive(Debug, Clone)]
pub(crate) struct Landed {
    pub(super) head: Written,
    /// Further parts (none for most appends: an empty `Vec` allocates nothing).
    pub(super) rest: Vec<Written>,
}

impl Landed {
    fn new(head: Written) -> Self {
        Landed {
            head,
            rest: Vec::new(),
        }
    }

    pub(super) fn parts(&self) -> impl Iterator<Item = Written> + '_ {
        std::iter::once(self.head).chain(self.rest.iter().copied())
    }

    /// The first record's sequence number.
    pub(crate) fn first(&self) -> u64 {
        self.head.first
    }

    /// Every record's sequence number, in the order the records were given.
    pub(crate) fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.parts().flat_map(|part| part.first..=part.last)
    }
}

/// An append that failed part of the way: `error` is why; the records of the parts before
/// it (`written`) are in the trail, the rest are not.
#[derive(Debug)]
pub(crate) struct Unwritten {
    pub(crate) error: AuditError,
    /// Boxed: an error path, kept small.
    pub(crate) written: Option<Box<Landed>>,
}

/// Most bytes of records held for the next write (outcomes) before an append writes them
/// itself; with one append's own records, the most the writer holds in memory.
pub(super) const MAX_PENDING: usize = 1 << 20;

/// When an append's records reach the file.
#[derive(Debug, Clone, Copy)]
pub(super) enum Mode {
    /// Now, with everything pending before them; `sync`: then fsynced (the caller waits).
    Now { sync: bool },
    /// With the next write, or within [`FLUSH_AFTER`].
    Later,
}

impl Mode {
    pub(super) fn syncs(self) -> bool {
        matches!(self, Mode::Now { sync: true })
    }
}

impl State {
    /// Gives up what the last failed write held, saying how many records were lost (their
    /// sequence numbers are reused, so the chain itself shows no gap).
    pub(super) fn drop_failed(&mut self) {
        let lost = self.failed_pending.iter().filter(|b| **b == b'\n').count();
        self.failed_pending.clear();
        if lost > 0 {
            tracing::error!(records = lost, "audit records lost to a failed write");
        }
    }

    /// Appends one record line to the pending bytes, extending the chain.
    pub(super) fn encode(&mut self, time: &str, fields: &[u8]) {
        let (seq, prev) = (self.next_seq, self.last_hash);
        let fields = match &mut self.node {
            Some(node) => node.stamp(fields),
            None => fields,
        };
        self.last_hash = encode_line(&mut self.pending, seq, time, &prev, fields);
        self.next_seq += 1;
    }

    /// Writes the pending bytes. On failure cuts off whatever part of them got there, so no
    /// half record stays, and drops them.
    pub(super) fn write_pending(&mut self) -> std::io::Result<()> {
        if let Some(refused) = &self.refused {
            return Err(std::io::Error::other(refused.to_string()));
        }
        let result = (&*self.file)
            .write_all(&self.pending)
            .and_then(|()| self.journal_pending());
        self.pending_since = None;
        if let Err(e) = result {
            let _ = self.file.set_len(self.len);
            self.trail_cuts += 1;
            std::mem::swap(&mut self.pending, &mut self.failed_pending);
            self.pending.clear();
            self.next_seq = self.file_seq + 1;
            self.last_hash = self.file_hash;
            return Err(e);
        }
        let now = Instant::now();
        self.len += self.pending.len() as u64;
        self.pending.clear();
        self.uncovered += self.next_seq - 1 - self.file_seq;
        self.uncovered_since.get_or_insert(now);
        self.unsynced_since.get_or_insert(now);
        self.file_seq = self.next_seq - 1;
        self.file_hash = self.last_hash;
        Ok(())
    }

    /// Copies the pending bytes, just appended to the trail, into the journal (`fsync` mode),
    /// where the next sync makes them durable.
    fn journal_pending(&mut self) -> std::io::Result<()> {
        let Some(journal) = &mut self.journal else {
            return Ok(());
        };
        let frame = Frame {
            file_first_seq: self.file_first_seq,
            trail_offset: self.len,
            trail_len: self.pending.len() as u64,
            first_seq: self.file_seq + 1,
            last_seq: self.next_seq - 1,
        };
        match journal.record(frame, &self.pending, &self.file, &mut self.trail_durable) {
            Ok(()) => Ok(()),
            Err(JournalError::TrailSync(e)) => {
                let refusal = journal.refusal(&e);
                tracing::error!(error = %refusal, "audit trail fdatasync failed; statements are refused");
                self.refused = Some(refusal);
                Err(e)
            }
        }
    }
}
