//! Appending to the audit trail. A session encodes its records on its own task and writes
//! them to the file itself, under one lock: no thread hop, no channel per record. In
//! `fsync` mode it then waits for them to be durable. While sessions wait one at a time the
//! waiter does the fdatasync itself; once several wait together the syncer thread
//! ([`super::syncer`]) does it, one fdatasync covering everything written while the previous
//! one ran (group commit). Either way one broadcast of "durable up to seq" wakes the whole
//! batch. The syncer also syncs what nobody waits for and does the trail's housekeeping.

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
#[cfg(test)]
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::append::{Landed, Mode, Unwritten};
use super::chain::CheckpointSigner;
use super::file::{chain_tail, first_seq_of};
use super::journal::{Frame, Journal};
use super::syncer;
use super::witness::Witness;
use super::{AuditError, AuditEvent};
use crate::config::Durability;

/// How the writer makes records durable and when it starts a new file.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub durability: Durability,
    /// Records nobody waits for (and, in `Write` mode, all records) are fsynced this often.
    pub sync_interval: Duration,
    /// Rotate once the active file holds this many bytes.
    pub rotate_size: Option<u64>,
    /// Rotate once the active file is this old.
    pub rotate_interval: Option<Duration>,
    /// `fsync` mode: bytes of the journal records are made durable in ([`super::journal`]);
    /// 0 fdatasyncs the trail itself instead.
    pub journal_bytes: u64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            durability: Durability::Fsync,
            sync_interval: Duration::from_secs(1),
            rotate_size: None,
            rotate_interval: None,
            journal_bytes: super::journal::DEFAULT_JOURNAL_BYTES,
        }
    }
}

/// Handle to the audit trail; cheap to clone. When the last handle is dropped the syncer
/// writes a final checkpoint and stops.
#[derive(Clone)]
pub struct AuditLog {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.syncer_wake.notify_one();
    }
}

/// What appenders and the syncer share.
pub(super) struct Shared {
    pub(super) state: parking_lot::Mutex<State>,
    /// Wakes the syncer: a durable append is waiting, a checkpoint is due, or closing.
    pub(super) syncer_wake: parking_lot::Condvar,
    pub(super) healthy: AtomicBool,
    /// "Durable up to seq", for appenders waiting in `fsync` mode.
    pub(super) progress: watch::Sender<Progress>,
    /// The sequence number of the last record written (for live readers).
    pub(super) head: watch::Sender<u64>,
    pub(super) path: PathBuf,
    pub(super) options: AuditOptions,
    /// fdatasyncs done so far (records per sync shows how well group commit batches).
    pub(super) syncs: AtomicU64,
    /// …of which appenders did themselves (see [`AuditLog::wait_durable`]).
    pub(super) led_syncs: AtomicU64,
    /// Times an append woke the syncer to write the records it left held (outcomes).
    pub(super) woken_for_held: AtomicU64,
    /// Counted as records are written (`GET /metrics`).
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    /// The last checkpoint known durable, for keeping outside the file ([`super::witness`]).
    pub(super) witness: watch::Sender<Option<Witness>>,
    /// Per-record size limits (`[audit] max_field_bytes`/`max_record_bytes`).
    pub(super) clip: std::sync::OnceLock<super::ClipLimits>,
    /// Tests only: runs just before the fdatasync of [`Shared::sync`] (outside the lock), on
    /// the thread doing it; an error stands for the fdatasync failing.
    #[cfg(test)]
    pub(super) sync_hook: Mutex<Option<SyncHook>>,
    /// Tests only: rotation steps made to fail, each once (see [`Shared::rotation_step`]).
    #[cfg(test)]
    pub(super) rotation_faults: Mutex<Vec<super::rotation::RotationStep>>,
    /// Tests only: checkpoints the syncer set out to write.
    #[cfg(test)]
    pub(super) checkpoint_attempts: AtomicU64,
    /// Tests only: runs just before the trail's own fdatasync of `fsync` mode (see
    /// `syncer::sync_trail`), outside the lock, on the thread doing it.
    #[cfg(test)]
    pub(super) trail_sync_hook: Mutex<Option<SyncHook>>,
    /// Tests only: runs between the parts of a large append (see [`Shared::write_parts`]),
    /// with the lock not held.
    #[cfg(test)]
    pub(super) between_parts_hook: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

#[cfg(test)]
pub(super) type SyncHook = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// The file and the chain, guarded by [`Shared::state`].
pub(super) struct State {
    /// Shared so the syncer can fdatasync without holding the lock.
    pub(super) file: Arc<File>,
    /// The chain's head, counting records encoded but still pending.
    pub(super) next_seq: u64,
    pub(super) last_hash: [u8; 32],
    /// The last record in the file, and its hash (where the chain resumes if a write of
    /// pending records fails).
    pub(super) file_seq: u64,
    pub(super) file_hash: [u8; 32],
    /// Bytes of complete records in the file.
    pub(super) len: u64,
    /// Encoded records not yet written: records nobody waits for ride the next write.
    pub(super) pending: Vec<u8>,
    /// `[node] id`, stamped on every record once set.
    pub(super) node: Option<super::node::NodeStamp>,
    /// What the last failed write tried to write (so held records can be retried alone).
    pub(super) failed_pending: Vec<u8>,
    pub(super) pending_since: Option<Instant>,
    /// Records written since the last checkpoint, and since when.
    pub(super) uncovered: u64,
    pub(super) uncovered_since: Option<Instant>,
    /// When the oldest record not yet fsynced was written.
    pub(super) unsynced_since: Option<Instant>,
    /// Highest sequence number an appender waits to see durable.
    pub(super) sync_wanted: u64,
    /// Everything up to here is on disk (in the current generation).
    pub(super) durable: u64,
    /// An fdatasync is running (the syncer's or a waiting appender's); one at a time.
    /// Not two (a second journal write started while one runs, its frames on blocks of
    /// their own, the durable mark advanced over a contiguous run): measured on the 2-core
    /// bench VM it gained nothing at 8 clients and lost about a tenth at 64, where a
    /// durable write's cost is CPU (the device's doorbell exit, the completion interrupt,
    /// two thread switches) and more, smaller writes cost more of it. Nor on a session
    /// thread with other sessions (tried: no faster at 8 clients, slower at 64, its other
    /// sessions held in the write).
    pub(super) syncing: bool,
    /// What the running fdatasync covers.
    pub(super) syncing_up_to: u64,
    /// The syncer went to sleep while an appender's fdatasync ran, with what it may not
    /// do meanwhile (sync, rotate, close) possibly put off: the end of that sync wakes it.
    pub(super) wake_syncer_after_sync: bool,
    /// Appends that wait for durability, counted (`waited_at_last_sync`: the count when
    /// the last sync started), and how many a sync covers, on average over the last few
    /// (in 1/256ths): see [`Written::lead`].
    pub(super) waited_appends: u64,
    pub(super) waited_at_last_sync: u64,
    pub(super) waiters_per_sync: u64,
    /// How long the last fdatasync took.
    pub(super) last_sync_took: Duration,
    /// Bumped when a failed fsync leaves unknown what reached the disk.
    pub(super) generation: u64,
    /// While the syncer sleeps: until when. Appenders wake it only when it would sleep
    /// past what they need.
    pub(super) syncer_sleeps_until: Option<Instant>,
    pub(super) closed: bool,
    /// Sequence number of the active file's first record (names the file when it rotates).
    pub(super) file_first_seq: u64,
    /// When the active file was started (for rotation by time).
    pub(super) file_opened: Instant,
    /// A rotation failed (a new file could not be had): not tried again before this, so a
    /// size past `rotate_size` does not retry it after every append.
    pub(super) rotation_put_off_until: Option<Instant>,
    /// The last checkpoint written, until a sync makes it durable and it is witnessed.
    pub(super) unwitnessed: Option<Witness>,
    /// The last checkpoint witnessed: the file must never end before it.
    pub(super) witnessed_seq: u64,
    /// Set once the file was found cut under the writer: every write fails with it.
    pub(super) refused: Option<AuditError>,
    /// `fsync` mode: where records are made durable (a sync of the journal covers
    /// everything written; the trail itself is synced every `sync_interval`).
    pub(super) journal: Option<Journal>,
    /// The trail file itself is on disk up to here (with a journal; without one, `durable`).
    pub(super) trail_durable: u64,
    pub(super) trail_synced_at: Instant,
    /// The syncer is fdatasyncing the trail (outside the lock).
    pub(super) trail_syncing: bool,
    /// Bytes of the active file whose writeback was started (see `Syncer::start_writeback`).
    pub(super) writeback_started: u64,
    /// Failed writes cut back from the trail so far (their sequence numbers are reused: a
    /// trail sync that ran across one vouches for nothing).
    pub(super) trail_cuts: u64,
}

/// What the syncer last made durable; see [`Progress::settles`].
#[derive(Debug, Clone, Default)]
pub(super) struct Progress {
    pub(super) generation: u64,
    pub(super) durable: u64,
    /// `durable` when the previous generation ended (records up to it did reach the disk).
    pub(super) previous_durable: u64,
    /// Why the previous generation ended.
    pub(super) failure: Option<Arc<str>>,
    /// The syncer has stopped: nothing more becomes durable.
    pub(super) stopped: bool,
}

/// Where an append's records landed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    pub(super) generation: u64,
    pub(super) first: u64,
    pub(super) last: u64,
    /// The appender syncs them itself when it waits (see [`AuditLog::wait_durable`]);
    /// otherwise the syncer was asked to.
    pub(super) lead: bool,
}

impl Progress {
    /// `Some(Ok)` once `written` is durable, `Some(Err)` once it never will be.
    fn settles(&self, written: Written, path: &Path) -> Option<Result<(), AuditError>> {
        let failed = || {
            Err(match &self.failure {
                Some(message) => AuditError::Io {
                    path: path.display().to_string(),
                    message: message.to_string(),
                },
                None => AuditError::Closed,
            })
        };
        if self.generation == written.generation {
            if self.durable >= written.last {
                Some(Ok(()))
            } else if self.stopped {
                Some(failed())
            } else {
                None
            }
        } else if self.generation == written.generation + 1 && written.last <= self.previous_durable
        {
            Some(Ok(()))
        } else {
            Some(failed())
        }
    }
}

/// The journal of `fsync` mode, or, where it cannot be allocated (a small or full disk), none:
/// records are then made durable by fdatasyncs of the trail itself, as correct, only slower.
fn open_journal(path: &Path, bytes: u64, anchor: Option<Frame>) -> Option<Journal> {
    match Journal::create(path, bytes, anchor) {
        Ok(journal) => Some(journal),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, bytes, "no audit journal: each fsync of the trail also writes its new size");
            if let Err(e) = super::journal::remove(path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove the unusable audit journal");
            }
            None
        }
    }
}

thread_local! {
    /// Each record's JSON fields, serialized before the lock is taken, and where each ends
    /// (reused, so an append allocates nothing once they have grown).
    static FIELDS: RefCell<(Vec<u8>, Vec<usize>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl AuditLog {
    /// Opens the file at `path` (recovering a torn last line) and starts the syncer thread.
    pub fn open(
        path: &Path,
        signer: Option<CheckpointSigner>,
    ) -> Result<(AuditLog, JoinHandle<()>), AuditError> {
        Self::open_with(path, signer, AuditOptions::default())
    }

    /// Opens with explicit durability and rotation settings.
    pub fn open_with(
        path: &Path,
        signer: Option<CheckpointSigner>,
        options: AuditOptions,
    ) -> Result<(AuditLog, JoinHandle<()>), AuditError> {
        let io = |e: std::io::Error| AuditError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private_files::create_dir_all(dir).map_err(io)?;
        }
        // Records made durable in the journal before a crash go back into the trail first.
        super::journal::recover(path).map_err(io)?;
        // A trail created by an older version with the umask's mode is tightened too.
        let mut file = crate::private_files::open_own_file(
            path,
            crate::private_files::open_options()
                .create(true)
                .read(true)
                .append(true),
        )
        .map_err(io)?;
        let (last_seq, last_hash) = chain_tail(path, &mut file).map_err(io)?;
        // Everything the trail holds now is on disk before anything relies on it: the
        // journal below starts empty, and the trail may hold records a killed process wrote
        // (in the page cache only) or a `write`-mode run never synced.
        file.sync_all().map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let file_first_seq = first_seq_of(&mut file).map_err(io)?.unwrap_or(last_seq + 1);
        let journal = if options.durability == Durability::Fsync && options.journal_bytes > 0 {
            let anchor = super::journal::anchor(&file, file_first_seq).map_err(io)?;
            open_journal(path, options.journal_bytes, anchor)
        } else {
            super::journal::remove(path).map_err(io)?;
            None
        };
        // Records after the trail's last checkpoint (a crash, a run whose appends were refused)
        // are signed by this run's first checkpoint, at the latest its closing one: a clean
        // stop must end the trail with a checkpoint even if nothing is appended meanwhile (an
        // attack review found a tail left unsigned by a start and a stop, which a cut then
        // took unnoticed).
        let inherited_unsigned = last_seq > 0 && !ends_with_checkpoint(path);
        let state = State {
            file: Arc::new(file),
            next_seq: last_seq + 1,
            last_hash,
            file_seq: last_seq,
            file_hash: last_hash,
            len,
            pending: Vec::with_capacity(4096),
            node: None,
            failed_pending: Vec::new(),
            pending_since: None,
            uncovered: u64::from(inherited_unsigned),
            uncovered_since: inherited_unsigned.then(Instant::now),
            unsynced_since: None,
            sync_wanted: last_seq,
            durable: last_seq,
            syncing: false,
            syncing_up_to: last_seq,
            wake_syncer_after_sync: false,
            waited_appends: 0,
            waited_at_last_sync: 0,
            waiters_per_sync: 0,
            last_sync_took: Duration::ZERO,
            generation: 0,
            syncer_sleeps_until: None,
            closed: false,
            file_first_seq,
            file_opened: Instant::now(),
            rotation_put_off_until: None,
            unwitnessed: None,
            witnessed_seq: 0,
            refused: None,
            journal,
            trail_durable: last_seq,
            trail_synced_at: Instant::now(),
            trail_syncing: false,
            trail_cuts: 0,
            writeback_started: 0,
        };
        let shared = Arc::new(Shared {
            state: parking_lot::Mutex::new(state),
            syncer_wake: parking_lot::Condvar::new(),
            healthy: AtomicBool::new(true),
            progress: watch::Sender::new(Progress {
                durable: last_seq,
                ..Progress::default()
            }),
            head: watch::Sender::new(last_seq),
            path: path.to_owned(),
            options,
            syncs: AtomicU64::new(0),
            led_syncs: AtomicU64::new(0),
            woken_for_held: AtomicU64::new(0),
            metrics: Arc::default(),
            witness: watch::Sender::new(None),
            clip: std::sync::OnceLock::new(),
            #[cfg(test)]
            sync_hook: Mutex::new(None),
            #[cfg(test)]
            rotation_faults: Mutex::new(Vec::new()),
            #[cfg(test)]
            checkpoint_attempts: AtomicU64::new(0),
            #[cfg(test)]
            between_parts_hook: Mutex::new(None),
            #[cfg(test)]
            trail_sync_hook: Mutex::new(None),
        });
        let for_syncer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lockbox-audit".into())
            .spawn(move || syncer::run(&for_syncer, signer))
            .map_err(io)?;
        let log = AuditLog {
            handle: Arc::new(Handle { shared }),
        };
        Ok((log, thread))
    }

    /// Sets the per-record size limits, once, before records are written (unset: the
    /// defaults of `audit::clip`).
    pub fn set_clip_limits(&self, limits: super::ClipLimits) {
        let _ = self.shared().clip.set(limits);
    }

    /// Whether a statement of `text` may be clipped in its record (`audit::clip`): only
    /// such a record carries what the statement names (`StatementRecord::mentions`).
    pub fn may_clip(&self, text: &str) -> bool {
        let limits = self.shared().clip.get().copied().unwrap_or_default();
        super::clip::may_clip(text, limits)
    }

    /// Whether a statement's names fit in its record should its text be clipped
    /// (`audit::clip::names_fit`).
    pub fn names_fit(&self, names: &super::StatementNames) -> bool {
        let limits = self.shared().clip.get().copied().unwrap_or_default();
        super::clip::names_fit(names, limits)
    }

    /// Whether a statement's skeleton fits in its record beside its names should its text be
    /// clipped (`audit::clip::skeleton_fits`).
    pub fn skeleton_fits(&self, names: &super::StatementNames) -> bool {
        let limits = self.shared().clip.get().copied().unwrap_or_default();
        super::clip::skeleton_fits(names, limits)
    }

    /// Names this node on every record from now on (`[node] id`).
    pub fn set_node(&self, id: &str) {
        self.shared().lock().node = Some(super::node::NodeStamp::new(id));
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    pub fn path(&self) -> &Path {
        &self.shared().path
    }

    /// Changes whenever records were written; holds the last one's sequence number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared().head.subscribe()
    }

    /// Holds each checkpoint once it is durable (`None` until the first): what
    /// [`super::witness::Keeper`] keeps outside the file.
    pub(crate) fn witnessed(&self) -> watch::Receiver<Option<Witness>> {
        self.shared().witness.subscribe()
    }

    /// How far the trail file itself is on disk (with a journal, behind `durable`).
    #[cfg(test)]
    pub(super) fn trail_durable(&self) -> u64 {
        let state = self.shared().lock();
        match state.journal {
            Some(_) => state.trail_durable,
            None => state.durable,
        }
    }

    /// How many fdatasyncs the trail has cost so far.
    pub fn sync_count(&self) -> u64 {
        self.shared().syncs.load(Ordering::Relaxed)
    }

    /// This log's counters, and the server's (`GET /metrics`).
    pub(crate) fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.shared().metrics
    }

    /// False while the last write or sync failed (statements and new sessions are refused).
    pub fn healthy(&self) -> bool {
        self.shared().healthy.load(Ordering::SeqCst)
    }

    /// Appends `events`; returns the first one's sequence number once they are durable (in
    /// `fsync` mode: on disk; in `write` mode: written to the file). An error means the
    /// records are not durable and the caller must not act.
    pub async fn append_durable(&self, events: Vec<AuditEvent>) -> Result<u64, AuditError> {
        self.append_durable_all(events.iter()).await
    }

    /// [`Self::append_durable`] for records the caller keeps (no clone needed).
    pub(crate) async fn append_durable_all<'a>(
        &self,
        events: impl Iterator<Item = &'a AuditEvent>,
    ) -> Result<u64, AuditError> {
        let (_, durable) = self.append_durable_later(events).map_err(|u| u.error)?;
        durable.await
    }

    /// [`Self::append_durable_all`] in two steps: the records are written now, and where
    /// they landed comes back with the wait for them to be durable. A caller that gives the
    /// wait up (its session ended meanwhile), or whose append failed part of the way, still
    /// knows which records are in the trail, and can settle them.
    pub(crate) fn append_durable_later<'a>(
        &self,
        events: impl Iterator<Item = &'a AuditEvent>,
    ) -> Result<
        (
            Landed,
            impl std::future::Future<Output = Result<u64, AuditError>> + '_,
        ),
        Unwritten,
    > {
        let fsync = self.shared().options.durability == Durability::Fsync;
        let started = Instant::now();
        let landed = self.write(events, Mode::Now { sync: fsync })?;
        let parts = landed.clone();
        let durable = async move {
            if fsync {
                for part in parts.parts() {
                    self.wait_durable(part).await?;
                }
            }
            self.shared().metrics.observe_append(started.elapsed());
            Ok(parts.first())
        };
        Ok((landed, durable))
    }

    /// Writes `events` to the file now, behind everything appended before, and returns
    /// without waiting for an fsync: they are durable with the next sync someone waits for
    /// (or within `sync_interval`). An error means they are not in the file.
    pub(crate) fn append_written(&self, events: &[AuditEvent]) -> Result<u64, AuditError> {
        self.write(events.iter(), Mode::Now { sync: false })
            .map(|landed| landed.first())
            .map_err(|unwritten| unwritten.error)
    }

    /// Chains `events` behind everything appended before and returns at once. For records
    /// that follow an action already taken (outcomes, disconnects): they ride the next
    /// append's write (or the syncer writes them within [`FLUSH_AFTER`]) and are fsynced
    /// with what follows, never costing a write or an fsync of their own.
    pub fn append(&self, events: Vec<AuditEvent>) {
        self.append_slice(&events);
    }

    /// [`AuditLog::append`] of records the caller keeps (a session reuses its buffer).
    pub fn append_slice(&self, events: &[AuditEvent]) {
        if let Err(e) = self.write(events.iter(), Mode::Later) {
            tracing::error!(error = %e.error, "audit record dropped");
        }
    }

    /// Writes a final checkpoint, fsyncs and stops the syncer; later appends fail.
    pub async fn close(&self) {
        let mut progress = self.shared().progress.subscribe();
        self.shared().lock().closed = true;
        self.shared().syncer_wake.notify_one();
        let _ = progress.wait_for(|p| p.stopped).await;
    }

    /// Encodes `events` and writes them to the file (with whatever is pending before them),
    /// or leaves them pending.
    fn write<'a>(
        &self,
        events: impl Iterator<Item = &'a AuditEvent>,
        mode: Mode,
    ) -> Result<Landed, Unwritten> {
        FIELDS.with_borrow_mut(|(fields, ends)| {
            fields.clear();
            ends.clear();
            let clip = self.shared().clip.get().copied().unwrap_or_default();
            for event in events {
                self.shared().metrics.count(event);
                if !super::clip::write_if_oversized(fields, event, clip) {
                    super::encode::write_event(fields, event);
                }
                ends.push(fields.len());
            }
            self.shared().write_parts(fields, ends, mode)
        })
    }

    /// Waits until `written` is durable, or known never to be.
    ///
    /// While appends wait one at a time (syncs cover about one each), the waiter
    /// does the fdatasync itself, on its own thread, once none is running: no hand-over to
    /// the syncer thread and back, which costs two thread wake-ups per statement. Once
    /// several wait together the syncer does it (group commit: one sync covers every record
    /// written while the previous one ran), so a session's thread is not held in an
    /// fdatasync while other sessions' traffic waits behind it.
    async fn wait_durable(&self, written: Written) -> Result<(), AuditError> {
        let mut progress = self.shared().progress.subscribe();
        loop {
            if let Some(result) = progress.borrow_and_update().settles(written, self.path()) {
                return result;
            }
            if written.lead && self.lead_sync(written) {
                continue;
            }
            if progress.changed().await.is_err() {
                return Err(AuditError::Closed);
            }
        }
    }

    /// Tests only: the syncer never syncs the trail early (see `Journal::no_early_trail_sync`).
    #[cfg(test)]
    pub(in crate::audit) fn no_early_trail_sync(&self) {
        if let Some(journal) = self.shared().lock().journal.as_mut() {
            journal.no_early_trail_sync = true;
        }
    }

    /// Syncs if `written` still needs it and no sync is running; true if it did.
    fn lead_sync(&self, written: Written) -> bool {
        let shared = self.shared();
        let mut state = shared.lock();
        let needed = state.generation == written.generation && state.durable < written.last;
        if !needed || state.syncing || state.closed || state.refused.is_some() {
            return false;
        }
        if shared.rotation_due(&state) {
            // The syncer rotates only while no sync runs: an appender that kept syncing
            // would put it off for as long as its session kept sending. The rotation's own
            // fsync covers this record.
            if state.syncer_sleeps_until.take().is_some() {
                shared.syncer_wake.notify_one();
            }
            return false;
        }
        drop(shared.sync(state));
        shared.led_syncs.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "writer_journal_attack_tests.rs"]
mod journal_attack_tests;

#[cfg(test)]
#[path = "writer_attack2_tests.rs"]
mod attack2_tests;

#[cfg(test)]
#[path = "rotation_fault_tests.rs"]
mod rotation_fault_tests;

#[cfg(test)]
#[path = "rotation_attack_tests.rs"]
mod rotation_attack_tests;

#[cfg(test)]
#[path = "writer_unwritten_tests.rs"]
mod unwritten_tests;

#[cfg(test)]
#[path = "writer_parts_tests.rs"]
mod parts_tests;

#[cfg(test)]
#[path = "writer_trail_tests.rs"]
mod trail_tests;

/// Whether the active file's last record is a checkpoint (an empty file is taken as ending
/// with the checkpoint its rotation wrote into the segment before it).
fn ends_with_checkpoint(path: &Path) -> bool {
    match super::witness::last_line(path) {
        Ok(Some(line)) => serde_json::from_slice::<serde_json::Value>(&line)
            .is_ok_and(|v| v.get("type").and_then(|t| t.as_str()) == Some("checkpoint")),
        Ok(None) => true,
        Err(_) => false,
    }
}
