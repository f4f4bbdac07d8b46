//! The redo journal of `fsync` mode: a pre-allocated file beside the trail that holds a
//! copy of the records written last, so that a statement's record is made durable by an
//! fdatasync of the journal instead of the trail.
//!
//! Why: an fdatasync after an append must also write the file's new size (the inode), a
//! second synchronous I/O; on ext4 with a journal it is a journal commit. The journal's size
//! never changes, so its fdatasync writes data only: measured on the bench VM, 150 µs
//! instead of 220 µs per sync and a third less CPU (PostgreSQL pre-allocates and recycles
//! its WAL segments for the same reason). The trail itself is fdatasynced every
//! `sync_interval` by the syncer, and always before the journal overwrites a frame whose
//! records it may not yet hold on disk.
//!
//! The journal is two halves used in turn; a frame (a header, then the exact bytes appended
//! to the trail) goes at the head of the half in use, and when it does not fit the other
//! half is started from its beginning. Before a half is reused, the trail is durable up to
//! the last record of that half's previous frames ([`Journal::record`]): at any moment every
//! record is on disk either in the trail or in a frame that recovery reads.
//!
//! At start ([`recover`]) the newest run of frames is written back to the trail at the
//! offsets they were appended at, once the trail is shown to hold the record the run
//! continues; what follows is kept as far as it continues the chain and cut where it does
//! not (a torn write, pages lost with the size kept), and the trail is fdatasynced. A clean
//! close leaves the journal empty, unless appends were refused (the journal is then kept for
//! the restart).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::file::sync_dir;
use super::AuditError;
use direct::{AlignedBuffer, DirectWrite, Tail};
use frame::{encode, read_frames, ReadFrame, HEADER_LEN};

mod direct;
mod frame;
mod recover;
#[cfg(test)]
use recover::Recovered;
pub(crate) use recover::{anchor, recover, unrecovered};

/// Bytes of the journal (two halves); `[audit]` has no key for it, the default fits every
/// rate this proxy reaches with a trail fdatasync every second.
pub(super) const DEFAULT_JOURNAL_BYTES: u64 = 32 << 20;

/// Where a frame's bytes belong in the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frame {
    /// The first sequence number of the trail file they were appended to (names the file).
    pub(super) file_first_seq: u64,
    /// Where in that file they start, and how many bytes they take there.
    pub(super) trail_offset: u64,
    pub(super) trail_len: u64,
    /// The records they hold.
    pub(super) first_seq: u64,
    pub(super) last_seq: u64,
}

impl Frame {
    /// Where the bytes end (checked when the header is read: no overflow).
    fn trail_end(&self) -> u64 {
        self.trail_offset.saturating_add(self.trail_len)
    }

    fn records(&self) -> u64 {
        (self.last_seq + 1).saturating_sub(self.first_seq)
    }
}

/// Why a frame could not be written.
#[derive(Debug, thiserror::Error)]
pub(super) enum JournalError {
    /// The trail's own fdatasync, before journal space was reused, failed: what the trail
    /// holds on disk is unknown, and the journal's frames are the only record of it.
    #[error("fdatasync of the audit trail failed: {0}")]
    TrailSync(#[source] io::Error),
}

/// The journal's path beside the trail's active file (`audit.jsonl.journal`): not a name
/// [`super::segments`] takes for a file of the trail.
pub(crate) fn path_for(active: &Path) -> PathBuf {
    let mut name = active
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "audit".into());
    name.push(".journal");
    active.with_file_name(name)
}

/// The open journal, owned by the writer's state (under its lock).
pub(super) struct Journal {
    file: Arc<File>,
    /// The journal's name and the file it led to when it was made.
    name: Arc<JournalName>,
    /// The trail's active file (for messages).
    trail: PathBuf,
    /// Written into every frame: frames an earlier run left behind are told apart.
    run_id: u64,
    half: u64,
    current: usize,
    head: u64,
    /// The last record each half holds a frame of.
    half_last_seq: [u64; 2],
    /// Frames recorded since the last sync wrote them, not yet in the file: the sync writes
    /// them (one write per sync instead of one per append). Until then the trail holds
    /// their bytes (the frames only make them durable), so losing these with the process
    /// loses nothing. Every write of them is laid out under the writer's lock, and a direct
    /// one outside it runs alone (`in_flight`), so a late write can never land over newer
    /// frames after a wrap.
    unwritten: Unwritten,
    /// The journal opened for direct synchronous writes, where the filesystem takes them
    /// (see [`direct`]).
    direct: Option<Arc<File>>,
    /// The written bytes of the block the head lies in (for direct writes), and a copy
    /// from before the write in flight, restored if it fails.
    tail: Tail,
    tail_before: Tail,
    /// Memory for direct writes, kept from sync to sync.
    aligned: AlignedBuffer,
    /// The runs a direct write is writing outside the writer's lock: put back if it fails.
    /// While it runs no other write of the journal may start (the blocks overlap).
    in_flight: Option<Vec<(u64, Vec<u8>)>>,
    /// Frames were written through the page cache (a direct write could not be laid out):
    /// the next sync is an fdatasync of `file`, the only call that reports their errors.
    buffered_unsynced: bool,
    /// Writes through the page cache so far: an fdatasync vouches only for those before it
    /// began (an early write may land while it runs).
    buffered_writes: u64,
    /// Tests only: the syncer never syncs the trail early, so the half-reuse sync in
    /// [`Journal::record`] is the one that runs.
    #[cfg(test)]
    pub(in crate::audit) no_early_trail_sync: bool,
}

/// How the frames a sync covers are made durable, outside the writer's lock.
#[derive(Debug)]
pub(in crate::audit) enum JournalSync {
    /// Written through the page cache: an fdatasync of the journal, covering the
    /// `covers` first such writes.
    Buffered { file: Arc<File>, covers: u64 },
    /// Whole blocks for the direct descriptor: written, they are durable.
    Direct(DirectWrite),
}

impl JournalSync {
    /// Makes the frames durable (the sync's slow part, run outside the writer's lock).
    pub(in crate::audit) fn make_durable(&self) -> io::Result<()> {
        match self {
            JournalSync::Buffered { file, .. } => file.sync_data(),
            JournalSync::Direct(write) => write.write(),
        }
    }
}

/// Frames for the journal file, as runs of bytes and where each starts (a new run when the
/// journal moves to its other half).
#[derive(Debug, Default)]
struct Unwritten {
    runs: Vec<(u64, Vec<u8>)>,
    /// A written run's buffer, kept for the next (no allocation per sync).
    spare: Vec<u8>,
}

impl Unwritten {
    fn bytes(&self) -> usize {
        self.runs.iter().map(|(_, run)| run.len()).sum()
    }

    /// Where the frame about to be written at `at` goes: the open run when it ends there.
    fn run_at(&mut self, at: u64) -> &mut Vec<u8> {
        let continues = self
            .runs
            .last()
            .is_some_and(|(start, run)| start + run.len() as u64 == at);
        if !continues {
            self.runs.push((at, std::mem::take(&mut self.spare)));
        }
        let open = self.runs.len() - 1;
        &mut self.runs[open].1
    }

    /// Forgets the runs once written, keeping one buffer.
    fn clear(&mut self) {
        if let Some((_, mut buffer)) = self.runs.drain(..).next() {
            buffer.clear();
            self.spare = buffer;
        }
        self.runs.clear();
    }

    /// Takes back the frame just recorded at journal offset `at`: it ends the last run.
    /// Only that run is cut: after a wrap, runs recorded before it lie at higher offsets
    /// (the other half), and their frames must still be written.
    fn take_back(&mut self, at: u64) {
        if let Some((start, run)) = self.runs.last_mut() {
            if *start < at {
                run.truncate(usize::try_from(at - *start).unwrap_or(usize::MAX));
            } else {
                self.runs.pop();
            }
        }
    }

    /// Writes the runs into the journal file (no sync).
    fn write_to(&self, file: &File) -> io::Result<()> {
        self.runs
            .iter()
            .try_for_each(|(at, run)| file.write_all_at(run, *at))
    }
}

/// Unwritten frames past this are written at once (still without a sync), so the memory they
/// hold stays bounded between syncs.
const MAX_UNWRITTEN_BYTES: usize = 1 << 20;

/// What a sync checks the journal's name against.
pub(super) struct JournalName {
    path: PathBuf,
    identity: (u64, u64),
}

impl JournalName {
    /// Whether the journal's name still leads to the file being written. The audit folder
    /// swapped for a copy while lockbox runs (an attack review did) takes the frames a sync
    /// makes durable to a file no restart reads: checked after each sync, before anyone is
    /// told their record is durable (a path lookup, about a microsecond).
    pub(super) fn still_leads_to_it(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.identity && m.nlink() > 0)
    }
}

impl Journal {
    /// The journal's name, for a check outside the lock.
    pub(super) fn name(&self) -> Arc<JournalName> {
        self.name.clone()
    }

    /// Opens the journal beside `active` empty but for `anchor` (see [`anchor`]), `bytes`
    /// long (allocated now, so the journal's size never changes while it is written).
    pub(super) fn create(active: &Path, bytes: u64, anchor: Option<Frame>) -> io::Result<Journal> {
        let path = path_for(active);
        // Made anew under its name: whatever the name led to (a link to another file,
        // which lockbox would otherwise overwrite) is left alone. Recovery has read it.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = crate::private_files::open_own_file(
            &path,
            crate::private_files::open_options()
                .create_new(true)
                .read(true)
                .write(true),
        )?;
        let half = (bytes / 2).max(HEADER_LEN as u64 * 4);
        // All zeros, every start: frames an earlier run left (with sequence numbers this run
        // may reuse after a crash cut them from the trail) must never be read again behind
        // this run's.
        file.set_len(0)?;
        preallocate(&file, 2 * half)?;
        write_zeros(&file, 2 * half)?;
        let direct = direct::open(&path, &file, half);
        let identity = {
            use std::os::unix::fs::MetadataExt;
            let made = file.metadata()?;
            (made.dev(), made.ino())
        };
        let mut journal = Journal {
            file: Arc::new(file),
            name: Arc::new(JournalName {
                path: path.clone(),
                identity,
            }),
            trail: active.to_owned(),
            run_id: rand::random(),
            half,
            current: 0,
            head: 0,
            half_last_seq: [0; 2],
            unwritten: Unwritten::default(),
            direct,
            tail: Tail::default(),
            tail_before: Tail::default(),
            aligned: AlignedBuffer::default(),
            in_flight: None,
            buffered_unsynced: false,
            buffered_writes: 0,
            #[cfg(test)]
            no_early_trail_sync: false,
        };
        journal.blank_halves()?;
        if let Some(anchor) = anchor {
            let mut frame = Vec::new();
            encode(&mut frame, journal.run_id, &anchor, &[]);
            journal.file.write_all_at(&frame, 0)?;
            journal.tail.advance(0, &frame);
            journal.head = frame.len() as u64;
            journal.half_last_seq[0] = anchor.last_seq;
        }
        journal.file.sync_all()?;
        // A new directory entry each time.
        sync_dir(&path);
        Ok(journal)
    }

    /// No frame at either half's start: recovery finds nothing. Once the trail is durable
    /// (a clean close), so a later start does not write redundant frames back.
    pub(super) fn empty(&mut self) -> io::Result<()> {
        self.unwritten.clear();
        self.tail.forget();
        self.blank_halves()?;
        self.file.sync_all()
    }

    fn blank_halves(&self) -> io::Result<()> {
        let blank = [0u8; HEADER_LEN];
        self.file.write_all_at(&blank, 0)?;
        self.file.write_all_at(&blank, self.half)
    }

    /// Why nothing more is appended after the trail's own fdatasync failed: what the trail
    /// holds on disk is unknown from then on (Linux reports a writeback error once, so a
    /// later fdatasync could succeed without it), and frames must not overwrite what only
    /// the journal holds. A restart writes the journal back.
    pub(super) fn refusal(&self, error: &io::Error) -> AuditError {
        AuditError::Io {
            path: self.trail.display().to_string(),
            message: format!(
                "fdatasync of the trail failed ({error}); its last records are kept in {}: nothing more is appended until lockbox restarts and writes them back",
                path_for(&self.trail).display()
            ),
        }
    }

    /// The file an fdatasync makes the journal durable with (tests: frames written through
    /// the page cache).
    #[cfg(test)]
    pub(super) fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Tests: frames go through the page cache and an fdatasync from now on.
    #[cfg(test)]
    pub(super) fn without_direct_io(&mut self) {
        self.direct = None;
    }

    /// Tests: the descriptor direct writes go through, if any.
    #[cfg(test)]
    pub(super) fn direct_file(&self) -> Option<Arc<File>> {
        self.direct.clone()
    }

    /// Writes the frames recorded so far into the file: a direct write (durable once it
    /// returns), or a write through the page cache (the next sync fdatasyncs it). If it
    /// fails, what reached the file is unknown and a slot may be a hole where recovery would
    /// stop: the caller must treat it as a failed sync of the journal (the trail made
    /// durable, then [`Journal::start_over`]). The frames are let go only once written, so a
    /// later sync (of a writer refusing appends, for its waiters) writes them again before
    /// it vouches for their records.
    pub(super) fn write_unwritten(&mut self) -> io::Result<()> {
        match self.begin_sync()? {
            JournalSync::Direct(write) => {
                let result = write.write();
                self.end_sync(JournalSync::Direct(write), result.is_ok());
                result
            }
            JournalSync::Buffered { .. } => Ok(()),
        }
    }

    /// A sync's start, under the writer's lock: the frames recorded so far laid out for a
    /// direct write (taken out of `unwritten`, put back by [`Journal::end_sync`] if it fails),
    /// or written through the page cache now, for an fdatasync. Either way the caller runs
    /// [`JournalSync::make_durable`] outside the lock, then `end_sync` under it, one sync
    /// at a time (`State::syncing`): no other write of the journal overlaps a direct one.
    pub(in crate::audit) fn begin_sync(&mut self) -> io::Result<JournalSync> {
        if let (Some(file), false, None) = (&self.direct, self.buffered_unsynced, &self.in_flight) {
            let buffer = std::mem::take(&mut self.aligned);
            self.tail_before.clone_from(&self.tail);
            match DirectWrite::build(file, buffer, &self.unwritten.runs, &mut self.tail) {
                Ok(write) => {
                    self.in_flight = Some(std::mem::take(&mut self.unwritten.runs));
                    return Ok(JournalSync::Direct(write));
                }
                Err(buffer) => self.aligned = buffer,
            }
        }
        let written = self.unwritten.write_to(&self.file);
        match &written {
            Ok(()) => self
                .unwritten
                .runs
                .iter()
                .for_each(|(at, run)| self.tail.advance(*at, run)),
            Err(_) => self.tail.forget(),
        }
        written?;
        self.unwritten.clear();
        self.buffered_unsynced = self.direct.is_some();
        self.buffered_writes += 1;
        Ok(JournalSync::Buffered {
            file: self.file.clone(),
            covers: self.buffered_writes,
        })
    }

    /// A sync's end, under the writer's lock: `durable` says whether `sync` made its frames
    /// durable. A direct write that failed has its frames recorded again, before any
    /// recorded since, and the head block's bytes as they were.
    pub(in crate::audit) fn end_sync(&mut self, sync: JournalSync, durable: bool) {
        match sync {
            JournalSync::Buffered { covers, .. } => {
                if durable && covers == self.buffered_writes {
                    self.buffered_unsynced = false;
                }
            }
            JournalSync::Direct(write) => {
                self.aligned = write.into_buffer();
                let Some(mut runs) = self.in_flight.take() else {
                    return;
                };
                if durable {
                    if let Some((_, mut buffer)) = runs.pop() {
                        if self.unwritten.spare.capacity() < buffer.capacity() {
                            buffer.clear();
                            self.unwritten.spare = buffer;
                        }
                    }
                } else {
                    runs.append(&mut self.unwritten.runs);
                    self.unwritten.runs = runs;
                    std::mem::swap(&mut self.tail, &mut self.tail_before);
                }
            }
        }
    }

    /// Whether the trail should be fdatasynced now, ahead of its `sync_interval`: the
    /// current half is over half full, and the next still holds frames of records the trail
    /// does not have on disk (up to `trail_durable`). The syncer then syncs it outside the
    /// lock, so that a burst of appends (a query string of thousands of statements) does not
    /// find the next half unusable and sync the trail in [`Journal::record`], under the lock
    /// every session waits on.
    pub(super) fn trail_wanted_soon(&self, trail_durable: u64) -> bool {
        #[cfg(test)]
        if self.no_early_trail_sync {
            return false;
        }
        let used = self.head - self.current as u64 * self.half;
        self.half_last_seq[1 - self.current] > trail_durable && used > self.half / 2
    }

    /// Records the frame of `payload`, the bytes just appended to the trail (`frame` says
    /// where), for the next sync to write. `trail_durable` is how far the trail itself is on
    /// disk; when a half must be reused before the trail covers its old frames, or the bytes
    /// are larger than a half, `trail` is fdatasynced first (rare: the syncer syncs it every
    /// `sync_interval`).
    pub(super) fn record(
        &mut self,
        frame: Frame,
        payload: &[u8],
        trail: &File,
        trail_durable: &mut u64,
    ) -> Result<(), JournalError> {
        let mut payload = payload;
        if (HEADER_LEN + payload.len()) as u64 > self.half {
            // Too big for the journal: the trail holds it on disk, a frame without bytes
            // keeps the run of frames continuous for recovery.
            sync_trail(trail, &frame, trail_durable)?;
            payload = &[];
        }
        let len = (HEADER_LEN + payload.len()) as u64;
        if self.head + len > (self.current as u64 + 1) * self.half {
            let next = 1 - self.current;
            if self.half_last_seq[next] > *trail_durable {
                sync_trail(trail, &frame, trail_durable)?;
            }
            self.current = next;
            self.head = next as u64 * self.half;
        }
        let (start, last_seq_before) = (self.head, self.half_last_seq[self.current]);
        encode(
            self.unwritten.run_at(self.head),
            self.run_id,
            &frame,
            payload,
        );
        self.head += len;
        self.half_last_seq[self.current] = frame.last_seq;
        // Not while a direct write runs: its blocks would be written over (the frames wait
        // for it; each session waits for its own record first, so they stay few).
        if self.unwritten.bytes() > MAX_UNWRITTEN_BYTES && self.in_flight.is_none() {
            if let Err(e) = self.write_unwritten() {
                // Those frames (of records whose appenders may be waiting) are not on disk,
                // and a slot may be a hole recovery stops at. Every one of their records is
                // in the trail (this frame's too: it was appended before): made durable
                // there, the journal starts over behind it. A failed trail sync refuses
                // appends; the frames before this one stay for the refused writer's syncs.
                tracing::warn!(path = %self.trail.display(), error = %e, "writing the audit journal failed; the trail is fdatasynced instead");
                if let Err(e) = trail.sync_data() {
                    // This append is refused and cut from the trail: its frame must not be
                    // written by a later sync (for the waiters before it), or a restart
                    // would bring back the record of a statement that never ran.
                    self.unwritten.take_back(start);
                    self.head = start;
                    self.half_last_seq[self.current] = last_seq_before;
                    return Err(JournalError::TrailSync(e));
                }
                *trail_durable = (*trail_durable).max(frame.last_seq);
                self.start_over();
            }
        }
        Ok(())
    }

    /// After the journal's own fdatasync failed, its frames from the last good sync on may
    /// be gone from the disk, and recovery stops at the first bad one: with the trail made
    /// durable up to every record written (by the caller), the journal starts over in
    /// its other half, so later frames are found again (the old frames of both halves are then
    /// all in the trail on disk).
    pub(super) fn start_over(&mut self) {
        // Their records are all in the trail on disk now (the caller synced it).
        self.unwritten.clear();
        self.tail.forget();
        self.current = 1 - self.current;
        self.head = self.current as u64 * self.half;
    }
}

/// Only what precedes `frame` is durable for sure after a sync here: if writing the frame
/// fails, its records are cut from the trail and their numbers reused.
fn sync_trail(trail: &File, frame: &Frame, trail_durable: &mut u64) -> Result<(), JournalError> {
    trail.sync_data().map_err(JournalError::TrailSync)?;
    *trail_durable = (*trail_durable).max(frame.first_seq.saturating_sub(1));
    Ok(())
}

fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(bytes).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: the descriptor is open for the whole call; posix_fallocate touches no memory.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // Not a sparse file instead: on a full disk its writes would fail where the trail's
        // still fit (the writer then goes without a journal).
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Writes zeros over the first `bytes` of `file` (synced with the journal's creation).
/// Allocated blocks a filesystem marks unwritten (ext4 after `posix_fallocate`) would
/// otherwise make the first sync into each block a metadata change too: on the bench VM
/// 126 µs instead of 82 per direct sync, for the journal's whole first lap, which at a
/// support session's rate is every statement. 32 MiB take about 20 ms at start.
fn write_zeros(file: &File, bytes: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    let mut at = 0;
    while at < bytes {
        let len = (bytes - at).min(CHUNK) as usize;
        file.write_all_at(&zeros[..len], at)?;
        at += len as u64;
    }
    Ok(())
}

/// Removes the journal beside `active` (in `write` mode, once [`recover`] has run).
pub(super) fn remove(active: &Path) -> io::Result<()> {
    match std::fs::remove_file(path_for(active)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod attack_tests;

#[cfg(test)]
mod direct_tests;

#[cfg(test)]
mod attack2_tests;

#[cfg(test)]
mod attack3_tests;
