//! The journal's direct writes (see `direct.rs`) against a real file: a failed one leaves
//! its frames for the next, and nothing writes the journal while one is in flight.

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
