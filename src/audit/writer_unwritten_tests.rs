//! Frames that wait in memory for the next sync, when writing them fails: every
//! acknowledged record must still survive a power cut (found by an outside attack on the
//! first version, which lost them).

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use super::journal_attack_tests::event;
use super::*;
use crate::audit::journal::tests::{end_of_record, seqs};
use crate::audit::journal::{path_for, recover};

fn options() -> AuditOptions {
    AuditOptions {
        durability: Durability::Fsync,
        sync_interval: Duration::from_secs(3600),
        journal_bytes: 8 << 20,
        ..AuditOptions::default()
    }
}

/// Makes every pwrite to the journal's descriptors fail (EBADF: they now read only), or puts
/// them back. Stands for EIO/ENOSPC/EROFS on the journal's write.
fn break_journal(log: &AuditLog, active: &Path, broken: bool) {
    let (file, direct) = {
        let state = log.shared().lock();
        let journal = state.journal.as_ref().expect("journal");
        (journal.file(), journal.direct_file())
    };
    let replace = |fd: i32, flags: i32| {
        let other = std::fs::OpenOptions::new()
            .read(true)
            .write(!broken)
            .custom_flags(flags)
            .open(path_for(active))
            .expect("open");
        // SAFETY: both descriptors are open; dup2 replaces the journal's descriptor in place
        // (the writer's File keeps the same number) and touches no memory.
        assert!(unsafe { libc::dup2(other.as_raw_fd(), fd) } == fd);
    };
    replace(file.as_raw_fd(), 0);
    if let Some(direct) = direct {
        replace(direct.as_raw_fd(), libc::O_DIRECT | libc::O_DSYNC);
    }
}

/// A trail in a new folder, in `fsync` mode with a journal, with three records
/// acknowledged.
async fn three_acknowledged() -> (tempfile::TempDir, PathBuf, AuditLog, JoinHandle<()>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("work").join("audit.jsonl");
    let (log, thread) = AuditLog::open_with(&active, None, options()).expect("open");
    for i in 0..3 {
        log.append_durable(vec![event(i, 50)])
            .await
            .expect("acknowledged");
    }
    (dir, active, log, thread)
}

/// The records of `acked` that `have` lacks.
fn missing(acked: &[u64], have: &[u64]) -> Vec<u64> {
    acked
        .iter()
        .copied()
        .filter(|s| !have.contains(s))
        .collect()
}

/// Seventeen records of ~60 kB written, their frames waiting for a sync (together just
/// under the 1 MiB bound: the next such record crosses it).
fn seventeen_written(log: &AuditLog, sync: bool) -> Vec<Written> {
    (0..17)
        .map(|i| {
            log.write([event(10 + i, 60_000)].iter(), Mode::Now { sync })
                .expect("written")
                .head
        })
        .collect()
}

/// Power cut now: the trail on disk up to `trail_durable` (size kept, garbage after), the
/// journal with everything written to it (the most recovery could hope for). Returns the
/// seqs the recovered trail holds.
fn crash_and_recover(log: &AuditLog, dir: &Path, active: &Path) -> (u64, Vec<u64>) {
    let crash = dir.join("crash");
    std::fs::create_dir_all(&crash).expect("mkdir");
    let (whole, trail_durable, journal) = {
        let state = log.shared().lock();
        (
            std::fs::read(active).expect("trail"),
            state.trail_durable,
            std::fs::read(path_for(active)).expect("journal"),
        )
    };
    let keep = end_of_record(&whole, trail_durable);
    let mut trail = whole[..keep].to_vec();
    trail.extend((keep..whole.len()).map(|i| b"\0\n{x"[i % 4]));
    let copied = crash.join("audit.jsonl");
    std::fs::write(&copied, &trail).expect("trail");
    std::fs::write(path_for(&copied), &journal).expect("journal");
    recover(&copied).expect("recover");
    (trail_durable, seqs(&std::fs::read(&copied).expect("read")))
}

/// Runs `write` with no sync starting meanwhile, as while one runs elsewhere
/// (`State::syncing`), then lets them start again. A large append is written in parts with
/// the lock let go in between, and its first part already asks for a sync: the syncer's
/// group commit, run between two parts, would otherwise be the first to write the waiting
/// frames, and on a busy machine sometimes is. With the journal broken that sync fails and
/// fails its waiters, the append among them, closed (no record acknowledged that is not
/// durable): acceptable, but not the failure in `Journal::record` these tests are about.
fn with_syncs_held<T>(log: &AuditLog, write: impl FnOnce() -> T) -> T {
    {
        let mut state = log.shared().lock();
        assert!(
            !state.syncing,
            "no sync runs after the appends were acknowledged"
        );
        state.syncing = true;
    }
    let result = write();
    let mut state = log.shared().lock();
    state.syncing = false;
    // What a sync's end does: the syncer may have put a sync off for it.
    state.wake_syncer_after_sync = false;
    state.syncer_sleeps_until = None;
    log.shared().syncer_wake.notify_one();
    result
}

/// A write of the waiting frames that `record` does past the 1 MiB bound fails: the failed
/// frames' slots must not stay a hole that hides every frame written after it (of records
/// acknowledged later) from recovery, which stops at the first frame that is not whole.
async fn hole(fault: bool) {
    let (dir, active, log, _thread) = three_acknowledged().await;
    // One statement's records, over 1 MiB together: its frame is written at once.
    let big: Vec<AuditEvent> = (0..18).map(|i| event(100 + i, 60_000)).collect();
    if fault {
        break_journal(&log, &active, true);
    }
    // With the journal's write failing, the trail is fdatasynced instead: still acknowledged.
    // Written (the part of `append_durable` before its wait) with no other sync meanwhile, so
    // the write that fails is `record`'s past the bound.
    let (_, acknowledged) =
        with_syncs_held(&log, || log.append_durable_later(big.iter())).expect("written");
    acknowledged.await.expect("acknowledged");
    if fault {
        break_journal(&log, &active, false);
    }
    assert_eq!(
        log.shared().lock().trail_durable > 0,
        fault,
        "the trail is synced when, and only when, the journal's write failed"
    );
    let acked = log
        .append_durable(vec![event(7, 50)])
        .await
        .expect("acknowledged");
    let (trail_durable, have) = crash_and_recover(&log, dir.path(), &active);
    log.close().await;
    assert!(
        have.contains(&acked),
        "acknowledged seq {acked} lost (trail_durable {trail_durable}); trail holds {have:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_past_the_bound_without_a_fault_keep_every_record() {
    hole(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_past_the_bound_leaves_no_hole_that_hides_later_records() {
    hole(true).await;
}

/// Records written (their appenders waiting) whose frames wait in memory; the next append
/// crosses 1 MiB and `record`'s write of all waiting frames fails: the earlier records,
/// which the next sync acknowledges, must be on disk anyway (in the trail).
async fn dropped(fault: bool) {
    let (dir, active, log, _thread) = three_acknowledged().await;
    // Written under the lock, not yet synced (as while a group commit's fdatasync runs).
    let waiting = seventeen_written(&log, false);
    if fault {
        break_journal(&log, &active, true);
    }
    let crossing = log.write([event(50, 60_000)].iter(), Mode::Now { sync: false });
    break_journal(&log, &active, false);
    let crossing = crossing.expect("written: the trail is fdatasynced in the journal's place");
    assert_eq!(
        log.shared().lock().trail_durable >= crossing.first(),
        fault,
        "the trail is synced when, and only when, the journal's write failed"
    );
    let later = log
        .append_durable(vec![event(60, 50)])
        .await
        .expect("acknowledged");
    for w in &waiting {
        log.wait_durable(*w).await.expect("acknowledged");
    }
    let (trail_durable, have) = crash_and_recover(&log, dir.path(), &active);
    log.close().await;
    let acked: Vec<u64> = waiting.iter().map(|w| w.first).chain([later]).collect();
    let lost = missing(&acked, &have);
    assert!(
        lost.is_empty(),
        "acknowledged seqs {lost:?} lost (trail_durable {trail_durable}); trail holds {have:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_frames_crossing_the_bound_without_a_fault_keep_every_record() {
    dropped(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_past_the_bound_loses_no_waiting_record() {
    dropped(true).await;
}

// Found by a second outside attack, on ff73874.

/// Points the trail's descriptor at /dev/null (writes vanish, fdatasync fails with EINVAL:
/// stands for EIO on the trail's fdatasync); returns a copy of the real descriptor to put
/// back with `restore_trail`.
fn break_trail(log: &AuditLog) -> (i32, i32) {
    let fd = log.shared().lock().file.as_raw_fd();
    // SAFETY: plain descriptor calls on descriptors open for the whole call; no memory.
    let saved = unsafe { libc::dup(fd) };
    assert!(saved >= 0);
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("null");
    // SAFETY: as above.
    assert!(unsafe { libc::dup2(null.as_raw_fd(), fd) } == fd);
    (fd, saved)
}

fn restore_trail((fd, saved): (i32, i32)) {
    // SAFETY: `saved` is the copy `break_trail` made, closed only here.
    assert!(unsafe { libc::dup2(saved, fd) } == fd);
    // SAFETY: as above.
    unsafe { libc::close(saved) };
}

/// Waiting frames crossing the bound; the journal's write fails AND the trail's fdatasync
/// in its place fails: appends are refused, and the syncer goes on making durable what was
/// written. Its next sync must not acknowledge records whose frames were never written (the
/// first fix dropped them on the failed write, and that sync acknowledged them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_then_a_failed_trail_sync_acknowledge_nothing_unwritten() {
    failed_write_then_failed_trail_sync(false).await;
}

/// The same with direct writes: while S's direct write is in flight nothing else writes the
/// journal (its blocks would be overwritten), so the crossing append writes nothing early
/// and is not refused; every record acknowledged still survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_direct_write_is_in_flight_frames_wait_and_none_is_lost() {
    failed_write_then_failed_trail_sync(true).await;
}

async fn failed_write_then_failed_trail_sync(direct: bool) {
    let (dir, active, log, _thread) = three_acknowledged().await;
    {
        let mut state = log.shared().lock();
        let journal = state.journal.as_mut().expect("journal");
        if direct {
            assert!(
                journal.direct_file().is_some(),
                "no direct I/O on the temporary folder's filesystem"
            );
        } else {
            journal.without_direct_io();
        }
    }
    // S: a sync held in its fdatasync (outside the lock) until released.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = Arc::new(Mutex::new(held));
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let once = std::sync::atomic::AtomicBool::new(false);
    *log.shared().sync_hook.lock().expect("hook") = Some(Arc::new(move || {
        if !once.swap(true, Ordering::SeqCst) {
            let _ = entered_tx.lock().unwrap().send(());
            let _ = held.lock().unwrap().recv();
        }
        Ok(())
    }));
    let s = {
        let log = log.clone();
        tokio::spawn(async move { log.append_durable(vec![event(5, 50)]).await })
    };
    tokio::task::spawn_blocking(move || entered.recv().expect("S in its fdatasync"))
        .await
        .expect("join");
    // Sessions append while S runs (they ask for a sync: it waits for S).
    let waiting = seventeen_written(&log, true);
    // The next append crosses 1 MiB: the journal's write fails, and so does the trail's
    // fdatasync in its place.
    break_journal(&log, &active, true);
    let trail = break_trail(&log);
    let crossing = log.write([event(50, 60_000)].iter(), Mode::Now { sync: false });
    restore_trail(trail);
    break_journal(&log, &active, false);
    if direct {
        assert!(crossing.is_ok(), "nothing written early, nothing to fail");
    } else {
        assert!(crossing.is_err(), "refused after the trail's sync failed");
    }
    release.send(()).expect("release S");
    assert!(
        s.await.expect("join").is_ok(),
        "S acknowledges its own record"
    );
    let mut acked = Vec::new();
    for w in &waiting {
        if tokio::time::timeout(Duration::from_secs(10), log.wait_durable(*w))
            .await
            .expect("settled")
            .is_ok()
        {
            acked.push(w.first);
        }
    }
    assert!(!acked.is_empty(), "none acknowledged");
    let (trail_durable, have) = crash_and_recover(&log, dir.path(), &active);
    let lost = missing(&acked, &have);
    assert!(
        lost.is_empty(),
        "acknowledged seqs {lost:?} lost (trail_durable {trail_durable}); trail holds {have:?}"
    );
    if direct {
        assert_eq!(
            acked.len(),
            waiting.len(),
            "every waiting record acknowledged"
        );
        return;
    }
    // The refused append's statement never ran: a restart must not bring its record back.
    let refused = waiting.last().expect("waiting").first + 1;
    assert!(
        !have.contains(&refused),
        "the refused record {refused} came back at restart; trail holds {have:?}"
    );
}

/// The half-reuse trail sync in `Journal::record` is what these tests break: the syncer's
/// early one would make it rarer.
fn no_early_trail_sync(log: &AuditLog) {
    log.no_early_trail_sync();
}

fn small() -> AuditOptions {
    AuditOptions {
        journal_bytes: 8 * 1024,
        ..options()
    }
}

/// A half-reuse trail fdatasync in `record` fails (on the writer's own description: Linux
/// reports the error there once): appends are refused and "the last records are kept in the
/// journal until lockbox restarts". Closing fdatasyncs the same description, which then
/// succeeds: it must not call the trail durable and empty the journal, the only copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_after_a_failed_trail_sync_keeps_the_journal() {
    // Dry run: which append makes `record` fdatasync the trail first.
    let k = {
        let dir = tempfile::tempdir().expect("tempdir");
        let active = dir.path().join("audit.jsonl");
        let (log, _thread) = AuditLog::open_with(&active, None, small()).expect("open");
        no_early_trail_sync(&log);
        let mut k = 0;
        for i in 0..1000 {
            log.append_durable(vec![event(i, 50)]).await.expect("ok");
            if log.trail_durable() > 0 {
                k = i;
                break;
            }
        }
        log.close().await;
        k
    };
    assert!(k > 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("work").join("audit.jsonl");
    let (log, _thread) = AuditLog::open_with(&active, None, small()).expect("open");
    no_early_trail_sync(&log);
    let mut acked = Vec::new();
    for i in 0..k {
        acked.push(log.append_durable(vec![event(i, 50)]).await.expect("ok"));
    }
    assert_eq!(log.trail_durable(), 0);
    let trail = break_trail(&log);
    let refused = log.append_durable(vec![event(k, 50)]).await;
    restore_trail(trail);
    assert!(
        refused.is_err(),
        "the half-reuse trail sync failed: refused"
    );
    // Before close, a power cut loses nothing (the journal holds them).
    let (_, have) = crash_and_recover(&log, dir.path(), &active);
    let lost = missing(&acked, &have);
    assert!(lost.is_empty(), "before close: lost {lost:?}");
    std::fs::remove_dir_all(dir.path().join("crash")).expect("rm");
    log.close().await;
    let (trail_durable, have) = crash_and_recover(&log, dir.path(), &active);
    let lost = missing(&acked, &have);
    assert!(
        lost.is_empty(),
        "after close: acknowledged {lost:?} lost (trail_durable {trail_durable})"
    );
}
