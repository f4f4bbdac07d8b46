//! The trail's own fdatasync in `fsync` mode: beside the group commits, not in their way,
//! and early enough that the journal never waits for it under the lock.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::journal_attack_tests::event;
use super::*;
use crate::audit::syncer::CHECKPOINT_AFTER;
use std::sync::atomic::Ordering;

/// A writer on `audit.jsonl` in a new folder, with `options`.
pub(super) fn opened(options: AuditOptions) -> (tempfile::TempDir, PathBuf, AuditLog) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, _thread) = AuditLog::open_with(&path, None, options).expect("open");
    (dir, path, log)
}

/// Waits (at most 10 s) until `done`.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A trail sync held in its fdatasync (a second's worth of records on a slow disk): a
/// statement waiting for its record meanwhile is made durable by the syncer all the same.
/// On a single-threaded runtime, so the appender leaves the sync to the syncer.
#[tokio::test]
async fn a_statement_waits_for_no_trail_sync() {
    let (_dir, _path, log) = opened(AuditOptions {
        sync_interval: Duration::from_millis(20),
        ..AuditOptions::default()
    });
    assert!(
        log.shared().lock().journal.is_some(),
        "fsync mode's journal"
    );
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    *log.shared().trail_sync_hook.lock().expect("hook") = Some(Arc::new(move || {
        let _ = entered_tx.lock().expect("hook").send(());
        let _ = release_rx.lock().expect("hook").recv();
        Ok(())
    }));
    log.append(vec![event(1, 100)]);
    until("a trail sync starts", || entered.try_recv().is_ok()).await;

    let durable = tokio::time::timeout(
        Duration::from_secs(10),
        log.append_durable(vec![event(2, 100)]),
    )
    .await;
    *log.shared().trail_sync_hook.lock().expect("hook") = None;
    let _ = release.send(());
    durable
        .expect("made durable while the trail sync was held")
        .expect("durable");
}

/// Records filling the journal's second half past its middle, while its first half holds
/// frames the trail does not have on disk: the syncer fdatasyncs the trail then, long
/// before its interval, so the append that wraps to the first half need not do it under
/// the lock every session waits on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_is_synced_before_the_journal_needs_its_next_half() {
    let half: u64 = 1 << 20;
    let (_dir, _path, log) = opened(AuditOptions {
        sync_interval: Duration::from_secs(3600),
        journal_bytes: 2 * half,
        ..AuditOptions::default()
    });
    assert!(
        log.shared().lock().journal.is_some(),
        "fsync mode's journal"
    );
    let before = log.shared().lock().trail_durable;
    // About 1.1 halves: through the first half and into the second, not past its middle.
    let mut i = 0;
    let mut write = |bytes: u64| {
        for _ in 0..bytes / 10_000 {
            i += 1;
            log.write([event(i, 10_000)].iter(), Mode::Now { sync: false })
                .expect("written");
        }
    };
    write(half + half / 10);
    let first_half_last = log.shared().lock().file_seq;
    assert_eq!(
        log.shared().lock().trail_durable,
        before,
        "nothing asked for the trail yet"
    );
    // Past the second half's middle.
    write(half / 2);
    until("the trail is synced past the first half's frames", || {
        log.shared().lock().trail_durable >= first_half_last
    })
    .await;
}

/// In `fsync` mode the trail's writeback is started as it grows, in steps, not left for a
/// second's fdatasync to write at once while the statements' journal syncs queue behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trails_writeback_is_started_as_it_grows() {
    let (_dir, _path, log) = opened(AuditOptions {
        sync_interval: Duration::from_secs(3600),
        ..AuditOptions::default()
    });
    assert!(
        log.shared().lock().journal.is_some(),
        "fsync mode's journal"
    );
    for i in 0..100 {
        log.write([event(i, 10_000)].iter(), Mode::Now { sync: false })
            .expect("written");
    }
    let written = log.shared().lock().len;
    until("the writeback of most of it started", || {
        let state = log.shared().lock();
        state.writeback_started + (256 << 10) > written && state.trail_durable < state.file_seq
    })
    .await;
}

/// Holds the trail thread's fdatasync until `release` sends what it is to return.
fn hold_trail_sync(log: &AuditLog) -> (mpsc::Receiver<()>, mpsc::Sender<std::io::Result<()>>) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<std::io::Result<()>>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    *log.shared().trail_sync_hook.lock().expect("hook") = Some(Arc::new(move || {
        let _ = entered_tx.lock().expect("hook").send(());
        release_rx.lock().expect("hook").recv().unwrap_or(Ok(()))
    }));
    (entered, release)
}

/// Waits until the syncer has gone once more through its loop (and to sleep).
async fn syncer_went_round(log: &AuditLog) {
    log.shared().lock().syncer_sleeps_until = None;
    until("the syncer went round its loop", || {
        log.shared().lock().syncer_sleeps_until.is_some()
    })
    .await;
}

fn journal_holds_frames(active: &Path) -> bool {
    let journal = std::fs::read(crate::audit::journal::path_for(active)).expect("journal");
    journal.iter().any(|b| *b != 0)
}

/// Closing while the trail's fdatasync runs: the close waits for it. Had it fdatasynced the
/// trail itself meanwhile and emptied the journal, a failure of that running sync (its
/// error reported to it alone) would leave acknowledged records in neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_waits_for_a_running_trail_sync() {
    let (_dir, active, log) = opened(AuditOptions {
        sync_interval: Duration::from_millis(20),
        ..AuditOptions::default()
    });
    let (entered, release) = hold_trail_sync(&log);
    for i in 0..3 {
        log.append_durable(vec![event(i, 100)])
            .await
            .expect("acknowledged");
    }
    until("a trail sync starts", || entered.try_recv().is_ok()).await;
    let closing = tokio::spawn({
        let log = log.clone();
        async move { log.close().await }
    });
    until("the close is under way", || log.shared().lock().closed).await;
    syncer_went_round(&log).await;
    let closed_meanwhile = closing.is_finished();
    release
        .send(Err(std::io::Error::other("injected EIO")))
        .expect("held");
    closing.await.expect("close");
    assert!(!closed_meanwhile, "closed while the trail sync ran");
    assert!(
        log.shared().lock().refused.is_some(),
        "the failed trail sync refused"
    );
    assert!(
        journal_holds_frames(&active),
        "the journal, the only copy the failed sync leaves, is kept"
    );
}

/// A rotation that falls due while the trail's fdatasync runs waits for it: its own
/// fdatasync of the trail must not overlap another (a writeback error is reported to one of
/// them), nor may the file take a rotated name, which recovery trusts to be on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_waits_for_a_running_trail_sync() {
    let (_dir, active, log) = opened(AuditOptions {
        sync_interval: Duration::from_millis(20),
        rotate_size: Some(64 << 10),
        ..AuditOptions::default()
    });
    let (entered, release) = hold_trail_sync(&log);
    log.append_durable(vec![event(0, 100)])
        .await
        .expect("acknowledged");
    until("a trail sync starts", || entered.try_recv().is_ok()).await;
    log.append_durable(vec![event(1, 100 << 10)])
        .await
        .expect("acknowledged");
    assert!(log.shared().rotation_due(&log.shared().lock()));
    syncer_went_round(&log).await;
    let files = crate::audit::segments::segments(&active)
        .expect("files")
        .len();
    release.send(Ok(())).expect("held");
    assert_eq!(files, 1, "rotated while the trail sync ran");
    until("rotated once the trail sync is over", || {
        crate::audit::segments::segments(&active).map_or(0, |s| s.len()) == 2
    })
    .await;
}

/// The trail's fdatasync is of the file the writer appends to, even once another file
/// bears its name (moved by an operator, say): syncing that one would count records as on
/// disk that are not, and let the journal's halves holding them be reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_sync_is_of_the_file_written_not_of_its_name() {
    let (dir, active, log) = opened(AuditOptions {
        sync_interval: Duration::from_millis(20),
        ..AuditOptions::default()
    });
    let moved = dir.path().join("moved.jsonl");
    std::fs::rename(&active, &moved).expect("move");
    std::fs::write(&active, b"").expect("another file under the name");
    // In the held sync, on its thread: the descriptors open on each file.
    let (seen_tx, seen) = mpsc::channel();
    let seen_tx = Mutex::new(seen_tx);
    let (active_at, moved_at) = (active.clone(), moved.clone());
    *log.shared().trail_sync_hook.lock().expect("hook") = Some(Arc::new(move || {
        let on = |path: &Path| {
            std::fs::read_dir("/proc/self/fd")
                .map(|fds| {
                    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                        .filter(|target| target == path)
                        .count()
                })
                .unwrap_or(0)
        };
        let _ = seen_tx
            .lock()
            .expect("hook")
            .send((on(&active_at), on(&moved_at)));
        Ok(())
    }));
    log.append_durable(vec![event(0, 100)])
        .await
        .expect("acknowledged");
    let on = std::cell::Cell::new(None);
    until("a trail sync runs", || {
        on.set(seen.try_recv().ok());
        on.get().is_some()
    })
    .await;
    let (on_name, on_written) = on.get().expect("seen");
    assert_eq!(on_name, 0, "the file under the trail's name was opened");
    assert!(
        on_written >= 2,
        "the written file has the writer's description and the sync's own"
    );
}

/// While statements keep waiting, every sync ends with another due: a rotation (which
/// appenders leave to the syncer) and checkpoints still come, not only in a lull. Here a
/// waiting append lands during each sync, as under two or more busy sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_group_commit_still_rotates() {
    let (_dir, _active, log) = opened(AuditOptions {
        sync_interval: Duration::from_secs(3600),
        rotate_size: Some(1),
        ..AuditOptions::default()
    });
    let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (counted, writer) = (syncs.clone(), log.clone());
    *log.shared().sync_hook.lock().expect("hook") = Some(Arc::new(move || {
        if counted.fetch_add(1, Ordering::SeqCst) < 40 {
            writer
                .write([event(1000, 100)].iter(), Mode::Now { sync: true })
                .expect("written");
        }
        Ok(())
    }));
    log.append_durable(vec![event(0, 100)])
        .await
        .expect("durable");
    // Starved, the rotation would come only once the 40 syncs with a waiter are over.
    until("a rotation, or 40 syncs", || {
        log.shared().lock().file_first_seq > 1 || syncs.load(Ordering::SeqCst) > 40
    })
    .await;
    let during = syncs.load(Ordering::SeqCst);
    *log.shared().sync_hook.lock().expect("hook") = None;
    assert!(
        during <= 40 && log.shared().lock().file_first_seq > 1,
        "no rotation while each sync found another waiting ({during} syncs)"
    );
}

/// A copy of the trail moved over its name while lockbox writes: appends are refused from
/// then on, rather than acknowledged into a file nobody can read once lockbox stops (an
/// attack review had that happen in `fsync` mode, unnoticed until the next verify).
#[tokio::test(flavor = "multi_thread")]
async fn a_trail_replaced_under_the_writer_refuses_further_appends() {
    for replace in ["copy moved over it", "removed"] {
        let (_dir, path, log) = opened(AuditOptions {
            durability: Durability::Fsync,
            ..AuditOptions::default()
        });
        log.append_durable(vec![event(1, 10)])
            .await
            .expect("before");
        if replace == "removed" {
            std::fs::remove_file(&path).expect("remove");
        } else {
            let copy = path.with_extension("copy");
            std::fs::copy(&path, &copy).expect("copy");
            std::fs::rename(&copy, &path).expect("move over");
        }
        let log = Arc::new(log);
        let refused = || {
            let log = log.clone();
            async move { log.append_durable(vec![event(2, 10)]).await.is_err() }
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !refused().await {
            assert!(
                std::time::Instant::now() < deadline,
                "{replace}: never refused"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!log.healthy(), "{replace}");
    }
}

/// A trail whose last record is no checkpoint (a crash, or a run whose appends were refused)
/// is signed by the next run's close even if that run appends nothing: an attack review
/// found the tail left unsigned by a start and a clean stop, which a later cut then took
/// unnoticed.
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_stop_signs_a_tail_it_found_unsigned() {
    let signer = || {
        crate::audit::chain::CheckpointSigner::from_pem(
            &crate::keys::generate_signing_key_pem().expect("key"),
        )
        .expect("signer")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = AuditLog::open(&path, Some(signer())).expect("open");
    log.append_durable(vec![event(1, 10)])
        .await
        .expect("append");
    log.close().await;
    thread.join().expect("writer");
    // A record after the closing checkpoint, chained to it, as a crashed run leaves one.
    let text = std::fs::read(&path).expect("trail");
    let last = text[..text.len() - 1]
        .split(|b| *b == b'\n')
        .next_back()
        .expect("a line")
        .to_vec();
    let seq = serde_json::from_slice::<serde_json::Value>(&last).expect("json")["seq"]
        .as_u64()
        .expect("seq");
    let mut tail = Vec::new();
    crate::audit::file::encode_line(
        &mut tail,
        seq + 1,
        "2026-01-01T00:00:00Z",
        &crate::audit::chain::line_hash(&last),
        br#"{"type":"statement"}"#,
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    std::io::Write::write_all(&mut file, &tail).expect("append");
    let (log, thread) = AuditLog::open(&path, Some(signer())).expect("reopen");
    log.close().await;
    thread.join().expect("writer");
    let last = std::fs::read_to_string(&path)
        .expect("trail")
        .lines()
        .last()
        .map(str::to_owned)
        .expect("a line");
    assert!(last.contains(r#""type":"checkpoint""#), "{last}");
}

/// The whole audit folder swapped for a copy while lockbox runs: the next statement waiting
/// for its record is told it failed, not that it is durable, and later ones are refused (an
/// attack review had two statements acknowledged in `fsync` mode into files a restart never
/// reads, and a clean verify afterwards).
#[tokio::test(flavor = "multi_thread")]
async fn a_swapped_audit_folder_fails_the_next_durable_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("audit");
    let path = folder.join("audit.jsonl");
    let (log, _thread) = AuditLog::open_with(
        &path,
        None,
        AuditOptions {
            durability: Durability::Fsync,
            ..AuditOptions::default()
        },
    )
    .expect("open");
    log.append_durable(vec![event(1, 10)])
        .await
        .expect("before");
    std::fs::rename(&folder, dir.path().join("audit.old")).expect("move away");
    std::fs::create_dir(&folder).expect("new folder");
    for name in ["audit.jsonl", "audit.jsonl.journal"] {
        std::fs::copy(dir.path().join("audit.old").join(name), folder.join(name)).expect("copy");
    }
    assert!(
        log.append_durable(vec![event(2, 10)]).await.is_err(),
        "not acknowledged"
    );
    assert!(log.append_durable(vec![event(3, 10)]).await.is_err());
    assert!(!log.healthy());
}

/// Once appends are refused the syncer does not keep trying to write a checkpoint (it did at
/// every 1 ms nap, spinning a core; an attack review saw it in `write` mode after the trail
/// was replaced).
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_trail_is_not_checkpointed_again_and_again() {
    let (_dir, path, log) = opened(AuditOptions {
        durability: Durability::Write,
        ..AuditOptions::default()
    });
    log.append_durable(vec![event(1, 10)])
        .await
        .expect("before");
    std::fs::remove_file(&path).expect("remove");
    let log = Arc::new(log);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.append_durable(vec![event(2, 10)]).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = || log.shared().checkpoint_attempts.load(Ordering::Relaxed);
    let before = attempts();
    // Long past the time a checkpoint is due for the records the trail took last.
    tokio::time::sleep(CHECKPOINT_AFTER + Duration::from_millis(500)).await;
    assert!(attempts() - before <= 2, "{} attempts", attempts() - before);
}
