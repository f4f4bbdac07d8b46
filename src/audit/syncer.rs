//! The syncer thread: fdatasyncs what sessions wrote (group commit: one sync covers every
//! record written while the previous one ran), publishes "durable up to seq", and does the
//! trail's housekeeping — signed checkpoints, rotation, the final checkpoint on close.
//! It never encodes or writes statement records; sessions do that themselves.

use std::fs::OpenOptions;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::MutexGuard;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};

use super::chain::{checkpoint_message, CheckpointSigner};
use super::file::{chain_tail, start_writeback};
use super::journal::{Journal, JournalSync};
use super::witness::Witness;
use super::writer::{Progress, Shared, State};
use super::AuditError;

/// A signed checkpoint is written after this many records…
pub(super) const CHECKPOINT_EVERY: u64 = 1000;
/// …or this long after the first record it does not yet cover.
pub(super) const CHECKPOINT_AFTER: Duration = Duration::from_secs(10);
/// With a journal, the writeback of the trail is started each time it grew by this much
/// (see `Syncer::start_writeback`).
const WRITEBACK_STEP: u64 = 256 << 10;
/// Longest the syncer sleeps: housekeeping (checkpoints, rotation by time) runs this often.
const TICK: Duration = Duration::from_secs(1);
/// Records nobody waits for (outcomes) reach the file with the next write, or by then.
pub(super) const FLUSH_AFTER: Duration = Duration::from_millis(5);

pub(super) fn run(shared: &Arc<Shared>, signer: Option<CheckpointSigner>) {
    let syncer = Syncer { shared, signer };
    let mut state = shared.lock();
    // Where the chain stood when the syncer last went to sleep: records appended since
    // mean appends are flowing.
    let mut seq_at_sleep = state.next_seq;
    let mut identity_checked = Instant::now();
    loop {
        // Not while an appender's fdatasync runs, nor the trail's own: the final one must
        // not overlap them (see `rotate_if_due`); their end wakes the syncer.
        if state.closed && !state.syncing && !state.trail_syncing {
            syncer.finish(state);
            return;
        }
        if state
            .pending_since
            .is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
            && shared.flush(&mut state).is_err()
        {
            state.drop_failed();
        }
        // Housekeeping before the group commit: while statements keep waiting, one sync
        // follows another, and what comes after it would wait for a lull that may not come
        // (a checkpoint, a rotation that `lead_sync` leaves to the syncer, the trail's
        // sync). A rotation first: its own fdatasync of the trail does the trail sync's work.
        if identity_checked.elapsed() >= IDENTITY_EVERY {
            identity_checked = Instant::now();
            syncer.check_trail_identity(&mut state);
        }
        syncer.checkpoint_if_due(&mut state);
        syncer.rotate_if_due(&mut state);
        state = syncer.sync_trail_if_due(state);
        state = syncer.start_writeback(state);
        if state.refused.is_some() && state.journal.is_none() && state.sync_wanted > state.durable {
            // Nothing will make them durable now: their waiters are failed, not left waiting.
            let refused = std::io::Error::other("appends are refused; nothing more is synced");
            shared.sync_failed(&mut state, &refused);
        }
        if syncer.sync_due(&state) {
            state = syncer.sync(state);
            continue;
        }
        let appending = state.next_seq != seq_at_sleep;
        seq_at_sleep = state.next_seq;
        let timeout = syncer.sleep_for(&state, appending);
        // A sync that could not start, a rotation or a close put off because an appender's
        // fdatasync runs is taken up as soon as it ends, not after a whole sleep (nobody
        // else wakes the syncer for it: the waiting appender may have asked before).
        // Only then: a syncer woken after every appender's sync would cost the thread
        // wake-up per statement that appenders syncing themselves save.
        state.wake_syncer_after_sync = state.syncing && syncer.put_off(&state);
        state.syncer_sleeps_until = Some(Instant::now() + timeout);
        shared.syncer_wake.wait_for(&mut state, timeout);
        state.syncer_sleeps_until = None;
    }
}

/// How often the syncer makes sure the trail's name still leads to the file it writes.
const IDENTITY_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Syncer<'a> {
    pub(super) shared: &'a Arc<Shared>,
    signer: Option<CheckpointSigner>,
}

impl<'a> Syncer<'a> {
    /// The trail's name must still lead to the file the writer appends to. One replaced (a
    /// copy moved over it) or removed while lockbox runs takes every later record into a
    /// file nobody can read once lockbox stops: an attack review had statements
    /// acknowledged in `fsync` mode whose records a clean stop then lost. Appends are
    /// refused from then on (the records written since the swap are in the file lockbox
    /// still holds open, `/proc/<pid>/fd`, until it stops).
    pub(super) fn check_trail_identity(&self, state: &mut State) {
        use std::os::unix::fs::MetadataExt;
        if state.refused.is_some() {
            return;
        }
        let Ok(open) = state.file.metadata() else {
            return;
        };
        let named = std::fs::symlink_metadata(&self.shared.path);
        let same = named
            .as_ref()
            .is_ok_and(|n| (n.dev(), n.ino()) == (open.dev(), open.ino()))
            && open.nlink() > 0;
        if !same {
            let refusal = AuditError::Io {
                path: self.shared.path.display().to_string(),
                message: "the audit trail's file was replaced or removed while lockbox wrote it (its name now leads to another file, or to none); statements are refused until lockbox is restarted".into(),
            };
            tracing::error!(error = %refusal, "audit trail replaced; statements are refused");
            self.shared.healthy.store(false, Ordering::SeqCst);
            state.refused = Some(refusal);
        }
    }

    /// Someone waits for a record to be durable, or the oldest unsynced record has waited
    /// `sync_interval` (records nobody waits for, and all of them in `write` mode).
    fn sync_due(&self, state: &State) -> bool {
        // Refused without a journal, a sync has nothing it may make durable (see
        // `Syncer::sync`); found due, it was tried again at once, for ever, spinning a core
        // and starving appenders of the lock (an attack review, `write` mode).
        let nothing_to_sync = state.refused.is_some() && state.journal.is_none();
        !nothing_to_sync
            && !state.syncing
            && (state.sync_wanted > state.durable
                || state
                    .unsynced_since
                    .is_some_and(|t| t.elapsed() >= self.shared.options.sync_interval))
    }

    /// While an appender's fdatasync runs: whether the syncer has work that waits for its
    /// end (a sync for records it does not cover, a rotation, the close).
    fn put_off(&self, state: &State) -> bool {
        state.closed
            || state.sync_wanted > state.syncing_up_to
            || self.shared.rotation_due(state)
            || state
                .unsynced_since
                .is_some_and(|t| t.elapsed() >= self.shared.options.sync_interval)
    }

    /// While records are being appended the syncer naps [`FLUSH_AFTER`] at a time, so a
    /// record left for it (an outcome) is flushed in time without its appender waking it:
    /// that wake-up, a futex call and a thread switch, would otherwise come with nearly
    /// every statement. Once a nap passes with no append it sleeps long again, and the
    /// first record left for it after that wakes it.
    fn sleep_for(&self, state: &State, appending: bool) -> Duration {
        let interval = self.shared.options.sync_interval;
        let mut sleep = if appending { FLUSH_AFTER } else { TICK };
        if let Some(t) = state.unsynced_since {
            sleep = sleep.min(interval.saturating_sub(t.elapsed()));
        }
        if let Some(t) = state.pending_since {
            sleep = sleep.min(FLUSH_AFTER.saturating_sub(t.elapsed()));
        }
        if state.journal.is_some() && !state.trail_syncing && state.trail_durable < state.file_seq {
            sleep = sleep.min(interval.saturating_sub(state.trail_synced_at.elapsed()));
        }
        sleep.max(Duration::from_millis(1))
    }

    /// A sync nobody else is doing: records past `sync_interval`, a checkpoint, or records
    /// whose appender gave up waiting. Pending records go first (nobody is held up by them
    /// here).
    fn sync(&self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if self.shared.flush(&mut state).is_err() {
            state.drop_failed();
            // Refused after the trail's own fdatasync failed: what was written is still
            // made durable in the journal (its waiters go on); only nothing new is written.
            if state.refused.is_none() || state.journal.is_none() {
                return state;
            }
        }
        self.shared.sync(state)
    }

    /// With a journal, the trail itself is fdatasynced every `sync_interval` (outside the
    /// lock), so a half of the journal can be reused without a sync in a session's path
    /// (see [`super::journal::Journal::record`]) — sooner when the journal fills fast
    /// ([`Journal::trail_wanted_soon`]). On a thread of its own: a second's worth of the
    /// trail takes milliseconds to reach the disk, and the syncer's group commits, which
    /// every waiting statement needs, go on meanwhile.
    fn sync_trail_if_due(&self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let due = !state.trail_syncing
            && state.trail_durable < state.file_seq
            && state.journal.as_ref().is_some_and(|journal| {
                let since = state.trail_synced_at.elapsed();
                since >= self.shared.options.sync_interval
                    || (journal.trail_wanted_soon(state.trail_durable) && since >= FLUSH_AFTER)
            });
        if !due {
            return state;
        }
        // An open file description of its own, of the very file the writer appends to (not
        // whatever now bears its name): Linux reports a writeback error to each description
        // that has not seen it, so neither this sync nor one running meanwhile on the
        // writer's (`Journal::record`, a rotation's) can take the other's error.
        let Some(file) = reopen_same_file(&state.file) else {
            // None to be had (no descriptor free): not on the writer's own either, where an
            // appender's half-reuse sync in `Journal::record` may run at the same time and
            // one of the two miss an error. Tried again after `sync_interval`; meanwhile
            // that half-reuse sync, a rotation and the close sync the trail when they need it.
            state.trail_synced_at = Instant::now();
            return state;
        };
        let (target, cuts) = (state.file_seq, state.trail_cuts);
        state.trail_syncing = true;
        drop(state);
        let (shared, file) = (self.shared.clone(), Arc::new(file));
        let sync = move || sync_trail(&shared, &file, target, cuts);
        let spawned = std::thread::Builder::new()
            .name("lockbox-audit-trail".into())
            .spawn(sync.clone());
        if spawned.is_err() {
            // No thread to be had: the syncer does it.
            sync();
        }
        self.shared.lock()
    }

    /// With a journal, starts the writeback of what the trail gained since the last start
    /// once that is [`WRITEBACK_STEP`] or more, so the disk takes the trail in steps as it
    /// grows, not a second's worth at the trail's fdatasync, during which every statement's
    /// journal sync would queue behind it (pgbench, 8 clients: a stall of about 6 ms every
    /// second).
    fn start_writeback(&self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        // A new file (rotated), or a failed write cut back.
        state.writeback_started = state.writeback_started.min(state.len);
        let from = state.writeback_started;
        if state.journal.is_none() || state.len - from < WRITEBACK_STEP {
            return state;
        }
        state.writeback_started = state.len;
        let (file, len) = (state.file.clone(), state.len - from);
        drop(state);
        start_writeback(&file, from, len);
        self.shared.lock()
    }

    /// Closing: a last checkpoint, a last fsync, and every waiter answered.
    fn finish(&self, mut state: MutexGuard<'a, State>) {
        if self.shared.flush(&mut state).is_err() {
            state.drop_failed();
        }
        self.checkpoint(&mut state);
        if state.refused.is_some() {
            // Appends were refused after a failed sync of the trail (or a rotation that
            // could not hold): a sync of the trail now can succeed without its records on
            // disk (Linux reports a writeback error once). The journal, the only copy of what
            // the trail may have lost, is left for the restart to write back; through it the
            // last waiters are answered, as while running.
            if state.journal.is_some() {
                state = self.shared.sync(state);
            }
            self.shared.publish(&state, Some(true));
            return;
        }
        match state.file.sync_data() {
            Ok(()) => {
                state.durable = state.file_seq;
                self.shared.witness_if_durable(&mut state);
                // Everything is in the trail on disk: the journal's frames are redundant.
                if let Some(Err(e)) = state.journal.as_mut().map(Journal::empty) {
                    tracing::warn!(path = %self.shared.path.display(), error = %e, "could not empty the audit journal");
                }
            }
            Err(e) => {
                tracing::error!(path = %self.shared.path.display(), error = %e, "final audit fsync failed")
            }
        }
        self.shared.publish(&state, Some(true));
    }

    fn checkpoint_if_due(&self, state: &mut State) {
        // Refused appends refuse the checkpoint too: tried again at every nap, it made the
        // syncer spin, logging a failure a millisecond (an attack review saw 86% of a core).
        if state.refused.is_some() {
            return;
        }
        let due_by_time = state
            .uncovered_since
            .is_some_and(|t| t.elapsed() >= CHECKPOINT_AFTER);
        if state.uncovered >= CHECKPOINT_EVERY || (state.uncovered > 0 && due_by_time) {
            self.checkpoint(state);
        }
    }

    /// Writes a signed checkpoint covering everything so far; the next sync makes it durable.
    pub(super) fn checkpoint(&self, state: &mut State) {
        #[cfg(test)]
        self.shared
            .checkpoint_attempts
            .fetch_add(1, Ordering::Relaxed);
        if self.shared.flush(state).is_err() {
            state.drop_failed();
            return;
        }
        if state.uncovered == 0 {
            return;
        }
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let covers_seq = state.file_seq;
        let head = hex::encode(state.file_hash);
        let signature = self
            .signer
            .as_ref()
            .map(|s| s.sign(&checkpoint_message(covers_seq, &head, &time)));
        let body = serde_json::json!({
            "type": "checkpoint",
            "covers_seq": covers_seq,
            "head": head,
            "signature": signature,
        });
        let fields = serde_json::to_vec(&body).unwrap_or_default();
        state.encode(&time, &fields);
        match self.shared.flush(state) {
            Ok(()) => {
                state.unwitnessed = Some(Witness {
                    seq: state.file_seq,
                    hash: state.file_hash,
                });
                state.uncovered = 0;
                state.uncovered_since = None;
                state.sync_wanted = state.sync_wanted.max(state.file_seq);
            }
            Err(e) => {
                // Only the checkpoint itself was pending.
                state.failed_pending.clear();
                tracing::error!(error = %e, "audit checkpoint failed");
            }
        }
    }
}

/// A new open file description of `file` itself, through `/proc/self/fd` (which reopens the
/// file the descriptor refers to even once renamed or replaced under its name).
fn reopen_same_file(file: &std::fs::File) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// One fdatasync of the trail up to `target` (see `Syncer::sync_trail_if_due`); its end
/// wakes the syncer, whose rotation or close may wait for it.
fn sync_trail(shared: &Shared, file: &std::fs::File, target: u64, cuts: u64) {
    let result = shared.before_trail_sync().and_then(|()| file.sync_data());
    let mut state = shared.lock();
    state.trail_syncing = false;
    state.trail_synced_at = Instant::now();
    match result {
        Ok(()) if state.trail_cuts == cuts => {
            state.trail_durable = state.trail_durable.max(target);
        }
        Ok(()) => {}
        Err(e) => shared.refuse_after_trail_sync(&mut state, &e),
    }
    state.syncer_sleeps_until = None;
    shared.syncer_wake.notify_one();
}

impl Shared {
    /// One fdatasync of everything written so far, outside the lock so sessions keep
    /// writing (their records ride the next sync); then wakes every waiter it made durable.
    /// Done by the syncer thread or by an appender waiting for its own records, one at a
    /// time (`State::syncing`).
    pub(super) fn sync<'s>(&'s self, mut state: MutexGuard<'s, State>) -> MutexGuard<'s, State> {
        if state.syncing {
            return state;
        }
        let target = state.file_seq;
        state.syncing = true;
        state.syncing_up_to = target;
        let waiters = state.waited_appends - state.waited_at_last_sync;
        state.waited_at_last_sync = state.waited_appends;
        // A moving average over about the last eight syncs, so one lone waiter among busy
        // batches does not hand a session's thread a sync.
        state.waiters_per_sync =
            (state.waiters_per_sync * 7 + waiters.saturating_mul(256).min(1 << 40)) / 8;
        let generation = state.generation;
        // With a journal, everything written is in it once its waiting frames are: laid out
        // (or written through the page cache) here, under the lock, so no later write of
        // frames can be overtaken by this one; made durable outside it. A failed write fails
        // the sync.
        let journal_sync = state.journal.as_mut().map(Journal::begin_sync);
        let journal_name = state.journal.as_ref().map(Journal::name);
        let trail = state.file.clone();
        drop(state);
        let started = Instant::now();
        // The tests' hook sees the file as the sync leaves it on disk: before an fdatasync,
        // after a direct write.
        let result = match &journal_sync {
            Some(Ok(sync @ JournalSync::Direct(_))) => {
                sync.make_durable().and_then(|()| self.before_sync())
            }
            Some(Ok(sync)) => self.before_sync().and_then(|()| sync.make_durable()),
            Some(Err(e)) => Err(std::io::Error::new(e.kind(), e.to_string())),
            None => self.before_sync().and_then(|()| trail.sync_data()),
        };
        let replaced = result.is_ok() && journal_name.is_some_and(|n| !n.still_leads_to_it());
        let result = if replaced {
            Err(std::io::Error::other(
                "the audit journal's name no longer leads to the file lockbox writes (the audit folder was replaced or the journal removed)",
            ))
        } else {
            result
        };
        let mut state = self.lock();
        if let (Some(Ok(sync)), Some(journal)) = (journal_sync, state.journal.as_mut()) {
            journal.end_sync(sync, result.is_ok());
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        state.syncing = false;
        state.last_sync_took = started.elapsed();
        self.metrics.observe_fsync(state.last_sync_took);
        if std::mem::take(&mut state.wake_syncer_after_sync) {
            state.syncer_sleeps_until = None;
            self.syncer_wake.notify_one();
        }
        match result {
            // A generation that ended meanwhile says nothing this sync could vouch for
            // (defensive: no other fsync runs while `syncing`).
            Ok(()) if state.generation != generation => {}
            Ok(()) => {
                if target > state.durable {
                    self.metrics.fsync_batch.observe(target - state.durable);
                    state.durable = target;
                    state.unsynced_since = (state.file_seq > target).then(Instant::now);
                }
                self.publish(&state, None);
                self.witness_if_durable(&mut state);
            }
            Err(e) => {
                self.sync_failed(&mut state, &e);
                if replaced {
                    // Nothing written from here on would be where a restart looks.
                    let refusal = AuditError::Io {
                        path: self.path.display().to_string(),
                        message: format!("{e}; statements are refused until lockbox is restarted"),
                    };
                    tracing::error!(error = %refusal, "audit journal replaced; statements are refused");
                    self.healthy.store(false, Ordering::SeqCst);
                    state.refused = Some(refusal);
                } else {
                    self.after_journal_sync_failed(&mut state);
                }
            }
        }
        state
    }

    /// After the journal's fdatasync failed, its frames from the last good sync on may be
    /// gone from the disk, and recovery stops at the first bad one, so frames written after
    /// it would not be found: the trail is made durable itself and the journal starts over
    /// in its other half. If the trail's sync fails too, nothing more is appended.
    fn after_journal_sync_failed(&self, state: &mut State) {
        let Some(journal) = &mut state.journal else {
            return;
        };
        match state.file.sync_data() {
            Ok(()) => {
                state.trail_durable = state.file_seq;
                journal.start_over();
            }
            Err(e) => self.refuse_after_trail_sync(state, &e),
        }
    }

    /// The trail's own fdatasync failed while a journal is kept: see
    /// [`super::journal::Journal::refusal`]. Records held for the next write can never be
    /// written now: given up (and counted in the log).
    pub(super) fn refuse_after_trail_sync(&self, state: &mut State, error: &std::io::Error) {
        let Some(refusal) = state.journal.as_ref().map(|j| j.refusal(error)) else {
            return self.sync_failed(state, error);
        };
        tracing::error!(error = %refusal, "audit trail fdatasync failed; statements are refused");
        self.healthy.store(false, Ordering::SeqCst);
        state.refused = Some(refusal);
        std::mem::swap(&mut state.pending, &mut state.failed_pending);
        state.pending.clear();
        state.pending_since = None;
        state.drop_failed();
    }

    /// After a failed fsync nothing is known about what reached the disk: do not retry on
    /// this file handle as if it had worked. Reopen, take sequence and chain from what the
    /// file really holds, and fail every waiter not yet durable (a new generation).
    pub(super) fn sync_failed(&self, state: &mut State, error: &std::io::Error) {
        self.healthy.store(false, Ordering::SeqCst);
        tracing::error!(path = %self.path.display(), error = %error, "audit fsync failed; statements are refused");
        self.reopen(state);
        // Whether the last checkpoint reached the disk is unknown now; a later one is
        // witnessed instead (its sequence number may even be reused).
        state.unwitnessed = None;
        state.generation += 1;
        state.unsynced_since = None;
        let previous_durable = state.durable;
        // The new generation starts with what the file holds.
        state.durable = state.file_seq;
        state.sync_wanted = state.durable;
        let progress = Progress {
            generation: state.generation,
            durable: state.durable,
            previous_durable,
            failure: Some(error.to_string().into()),
            stopped: false,
        };
        self.progress.send_replace(progress);
    }

    pub(super) fn publish(&self, state: &State, stopped: Option<bool>) {
        self.progress.send_modify(|p| {
            p.generation = state.generation;
            p.durable = state.durable;
            if let Some(stopped) = stopped {
                p.stopped = stopped;
            }
        });
    }

    fn reopen(&self, state: &mut State) {
        reopen(self, state);
    }

    /// Hands the last checkpoint on to be kept outside the file, once it is on disk (never
    /// before: a crash could still take it, and the trail would look cut).
    pub(super) fn witness_if_durable(&self, state: &mut State) {
        if let Some(witness) = state.unwitnessed.filter(|w| w.seq <= state.durable) {
            state.unwitnessed = None;
            state.witnessed_seq = witness.seq;
            self.witness.send_replace(Some(witness));
        }
    }
}

/// Takes the file as it really is after a failed fsync. A file that now ends before the
/// last checkpoint witnessed was cut under the writer: it is not continued (every append
/// fails from here on, fail-closed), or new records would hide the cut.
pub(super) fn reopen(shared: &Shared, state: &mut State) {
    let path = &shared.path;
    let reopened = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .and_then(|mut f| {
            let (seq, hash) = chain_tail(path, &mut f)?;
            let len = f.metadata()?.len();
            Ok((f, seq, hash, len))
        });
    match reopened {
        Ok((_, seq, _, _)) if seq < state.witnessed_seq => {
            let error = AuditError::Truncated {
                path: path.display().to_string(),
                last_seq: seq,
                witnessed_seq: state.witnessed_seq,
                witnessed_by: "the writer".into(),
            };
            tracing::error!(error = %error, "audit trail cut under the writer; nothing more is appended");
            shared.healthy.store(false, Ordering::SeqCst);
            state.refused = Some(error);
            // Records held for the next write (outcomes) can never be written now: given up
            // (and counted in the log), or the syncer would find them overdue every 1 ms.
            std::mem::swap(&mut state.pending, &mut state.failed_pending);
            state.pending.clear();
            state.pending_since = None;
            state.drop_failed();
        }
        Ok((file, seq, hash, len)) => {
            state.file = Arc::new(file);
            // A trail sync running across this vouches for nothing: the file may now end
            // before records it would have covered, whose numbers are then reused.
            state.trail_cuts += 1;
            if (seq, hash) != (state.file_seq, state.file_hash) {
                // The held records were chained to a tail the file no longer ends
                // with: they cannot follow it.
                std::mem::swap(&mut state.pending, &mut state.failed_pending);
                state.pending.clear();
                state.pending_since = None;
                state.drop_failed();
                state.next_seq = seq + 1;
                state.last_hash = hash;
            }
            state.file_seq = seq;
            state.file_hash = hash;
            state.len = len;
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "audit log could not be reopened")
        }
    }
}
