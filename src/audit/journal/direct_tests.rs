//! The journal's direct writes (see `direct.rs`) against a real file: a failed one leaves
//! its frames for the next, and nothing writes the journal while one is in flight.

use std::os::fd::AsRawFd;

use super::tests::{frames_on_disk, Appender};
use super::*;

fn seqs(frames: &[ReadFrame]) -> Vec<u64> {
    frames.iter().map(|f| f.frame.last_seq).collect()
}

/// A journal on the temporary folder's filesystem, written direct (its halves are whole
/// blocks). Fails loudly where that filesystem takes no direct I/O: the path under test
/// would not run.
fn direct_journal(active: &Path, bytes: u64) -> Journal {
    let journal = Journal::create(active, bytes, None).expect("create");
    assert!(
        journal.direct_file().is_some(),
        "no direct I/O on the temporary folder's filesystem"
    );
    journal
}

/// A direct write that fails (EIO, a full disk) may have written nothing: its frames are
/// recorded again, so the next sync writes them before any recorded since, and recovery
/// finds every one in order.
#[test]
fn a_failed_direct_write_leaves_its_frames_to_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let mut journal = direct_journal(&active, 1 << 20);
    let half = journal.half;
    // Frames of ~1.6 kB: the failed write's spans blocks, more than the head block holds.
    let mut appender = Appender::new(&active, 1500);
    for _ in 0..3 {
        appender.record(&mut journal);
    }
    journal.write_unwritten().expect("write");
    for _ in 0..5 {
        appender.record(&mut journal);
    }
    let sync = journal.begin_sync().expect("laid out");
    assert!(matches!(sync, JournalSync::Direct(_)), "{sync:?}");
    // It failed without writing a byte.
    journal.end_sync(sync, false);
    for _ in 0..2 {
        appender.record(&mut journal);
    }
    assert_eq!(seqs(&frames_on_disk(&active, half)), [1, 2, 3]);
    journal.write_unwritten().expect("write");
    assert_eq!(
        seqs(&frames_on_disk(&active, half)),
        (1..=10).collect::<Vec<_>>()
    );
}

/// While a direct write runs outside the writer's lock, frames recorded meanwhile are not
/// written early, even past the bound: that write would land in the block the direct one
/// ends in, and the direct one's zeros after its last frame would then wipe its start.
#[test]
fn frames_recorded_while_a_direct_write_runs_wait_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let mut journal = direct_journal(&active, 8 << 20);
    let half = journal.half;
    let mut appender = Appender::new(&active, 1000);
    appender.record(&mut journal);
    let sync = journal.begin_sync().expect("laid out");
    // Past the bound while it runs.
    let mut last = 1;
    for _ in 0..MAX_UNWRITTEN_BYTES / 1000 + 10 {
        last = appender.record(&mut journal);
    }
    assert!(journal.unwritten.bytes() > MAX_UNWRITTEN_BYTES);
    assert!(
        frames_on_disk(&active, half).is_empty(),
        "nothing written while the direct write is in flight"
    );
    sync.make_durable().expect("direct write");
    journal.end_sync(sync, true);
    assert_eq!(seqs(&frames_on_disk(&active, half)), [1]);
    // The next frame crosses the bound again: now written at once, behind frame 1.
    last = last.max(appender.record(&mut journal));
    assert_eq!(
        seqs(&frames_on_disk(&active, half)),
        (1..=last).collect::<Vec<_>>()
    );
}

/// Frames written by direct syncs, several to a block and across blocks, then a power cut:
/// recovery writes every record back.
#[test]
fn direct_syncs_that_share_blocks_keep_every_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let mut journal = direct_journal(&active, 1 << 20);
    let half = journal.half;
    let mut appender = Appender::new(&active, 150);
    let mut last = 0;
    for round in 0..40 {
        for _ in 0..(round % 4) {
            last = appender.record(&mut journal);
        }
        let sync = journal.begin_sync().expect("laid out");
        sync.make_durable().expect("direct write");
        journal.end_sync(sync, true);
    }
    assert!(last > 40, "frames spread over several blocks");
    assert_eq!(
        seqs(&frames_on_disk(&active, half)),
        (1..=last).collect::<Vec<_>>()
    );
}

/// The extents of `file` the filesystem marks unwritten (allocated, never written), by
/// FIEMAP: the first direct write into one is a metadata change too, as slow as an append.
fn unwritten_extents(file: &File) -> usize {
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const HEADER: usize = 32;
    const EXTENT: usize = 56;
    const EXTENTS: usize = 512;
    // u64s, so the struct's fields are aligned.
    let mut buf = vec![0u64; (HEADER + EXTENT * EXTENTS) / 8];
    buf[1] = u64::MAX; // fm_length
                       // fm_flags (low half of word 2), fm_extent_count (low half of word 3).
    buf[2] = u64::from(FIEMAP_FLAG_SYNC);
    buf[3] = EXTENTS as u64;
    // SAFETY: the buffer holds the header and EXTENTS extents, as fm_extent_count says;
    // the descriptor is open for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) };
    assert_eq!(rc, 0, "FIEMAP: {}", io::Error::last_os_error());
    let mapped = (buf[2] >> 32) as usize;
    assert!(mapped < EXTENTS, "more extents than asked for");
    (0..mapped)
        .filter(|i| {
            // fe_flags: the u32 at byte 40 of each extent.
            let word = (HEADER + i * EXTENT + 40) / 8;
            (buf[word] as u32) & FIEMAP_EXTENT_UNWRITTEN != 0
        })
        .count()
}

/// The journal is written through at creation, not only allocated: no block of it is left
/// for a statement's sync to convert.
#[test]
fn a_new_journal_has_no_unwritten_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let journal = direct_journal(&active, 4 << 20);
    assert_eq!(unwritten_extents(&journal.file()), 0);
    // The check itself sees what `posix_fallocate` leaves.
    let other = File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.path().join("allocated"))
        .expect("file");
    preallocate(&other, 4 << 20).expect("allocate");
    assert!(
        unwritten_extents(&other) > 0,
        "an allocated file shows no unwritten extent"
    );
}

/// A frame whose early write (past the 1 MiB bound) fails, and the trail's fdatasync in its
/// place too, is taken back, and only it: when it wrapped into the other half, the frames
/// recorded before it lie at higher offsets and still wait to be written (dropping them
/// let a later sync acknowledge records that were on disk nowhere; found by an attack).
#[test]
fn a_refused_frame_after_a_wrap_takes_back_only_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let mut journal = direct_journal(&active, 128 << 10);
    let direct = journal.direct_file().expect("direct");
    let trail = File::create(dir.path().join("trail")).expect("trail");
    let failing_trail = File::options()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    assert!(
        failing_trail.sync_data().is_err(),
        "fdatasync of /dev/null fails"
    );
    // Trail syncs ran: no half is held back by the trail.
    let mut trail_durable = u64::MAX / 4;
    let frame = |seq: u64, offset: u64, len: u64| Frame {
        file_first_seq: 1,
        trail_offset: offset,
        trail_len: len,
        first_seq: seq,
        last_seq: seq,
    };
    let (mut seq, mut offset) = (1u64, 0u64);
    for _ in 0..10_000 {
        let waiting = journal.unwritten.bytes();
        if journal.current == 1 && waiting + 60_000 > MAX_UNWRITTEN_BYTES {
            // One frame that both wraps into half 0 and crosses the bound.
            let to_wrap = 2 * journal.half - journal.head + 1;
            let to_cross = (MAX_UNWRITTEN_BYTES - waiting + 1) as u64;
            let len = to_wrap.max(to_cross) - HEADER_LEN as u64;
            assert!(len + (HEADER_LEN as u64) < journal.half);
            // Its write fails (EBADF: the direct descriptor now reads only).
            let read_only = File::open(path_for(&active)).expect("open");
            // SAFETY: both descriptors are open; dup2 replaces the direct one in place.
            assert!(unsafe { libc::dup2(read_only.as_raw_fd(), direct.as_raw_fd()) } >= 0);
            let refused = journal.record(
                frame(seq, offset, len),
                &vec![b'z'; len as usize],
                &failing_trail,
                &mut trail_durable,
            );
            assert!(
                matches!(refused, Err(JournalError::TrailSync(_))),
                "{refused:?}"
            );
            assert_eq!(
                journal.unwritten.bytes(),
                waiting,
                "the frames recorded before the refused one still wait"
            );
            return;
        }
        let len = 3000 + seq * 37 % 2000;
        journal
            .record(
                frame(seq, offset, len),
                &vec![b'a'; len as usize],
                &trail,
                &mut trail_durable,
            )
            .expect("record");
        seq += 1;
        offset += len;
    }
    panic!("the journal never filled half 1 with a megabyte waiting");
}

/// Frames written through the page cache while an fdatasync of them runs (an early write
/// past the bound) are not covered by it: the next sync is an fdatasync again, not a direct
/// write that would vouch for them unsynced (found by an attack, by reading the code).
#[test]
fn an_fdatasync_vouches_only_for_the_writes_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let mut journal = direct_journal(&active, 1 << 20);
    let mut appender = Appender::new(&active, 100);
    appender.record(&mut journal);
    journal.write_unwritten().expect("written direct");
    // The head block's bytes unknown, and the next run not on a block boundary: written
    // through the page cache.
    journal.tail.forget();
    appender.record(&mut journal);
    let first = journal.begin_sync().expect("written");
    assert!(matches!(first, JournalSync::Buffered { .. }), "{first:?}");
    // While its fdatasync runs, more frames are written through the page cache.
    appender.record(&mut journal);
    journal.write_unwritten().expect("written");
    first.make_durable().expect("fdatasync");
    journal.end_sync(first, true);
    let next = journal.begin_sync().expect("laid out");
    assert!(
        matches!(next, JournalSync::Buffered { .. }),
        "the frames written during the last fdatasync get one of their own: {next:?}"
    );
    next.make_durable().expect("fdatasync");
    journal.end_sync(next, true);
    assert!(
        matches!(
            journal.begin_sync().expect("laid out"),
            JournalSync::Direct(_)
        ),
        "direct again once every page-cache write is fdatasynced"
    );
}
