//! The writer against a real file: chain, durability order, group commit, close.

use std::time::{Duration, Instant};

use super::*;
use crate::audit::append::MAX_PENDING;
use crate::audit::chain::verify;
use crate::audit::syncer::{CHECKPOINT_EVERY, FLUSH_AFTER};
use crate::audit::{RequestEvent, RequestRecord};

fn event(i: usize) -> AuditEvent {
    AuditEvent::Request(RequestRecord {
        event: RequestEvent::Created,
        request_id: format!("req-{i}"),
        actor: "eve".into(),
        engineer: "eve".into(),
        database: "sales".into(),
        ticket: format!("T-{i}"),
        access: "read".into(),
        reason: Some("line one\nline \"two\"".into()),
        access_expires_at: None,
        status: None,
        break_glass: false,
    })
}

fn options(durability: Durability, sync_interval: Duration) -> AuditOptions {
    AuditOptions {
        durability,
        sync_interval,
        ..AuditOptions::default()
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn durable(log: &AuditLog) -> u64 {
    log.shared().lock().durable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sessions_share_fsyncs_and_the_chain_stays_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = AuditLog::open(&path, None).expect("open");
    let (tasks, each) = (32, 40);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..each {
                let seq = log
                    .append_durable(vec![event(t * 1000 + i)])
                    .await
                    .expect("append");
                // In fsync mode an append returns only once its record is on disk.
                assert!(durable(&log) >= seq, "returned before its fsync");
                seqs.push(seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for handle in handles {
        seqs.extend(handle.await.expect("task"));
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), tasks * each, "every record has its own seq");
    let syncs = log.sync_count();
    assert!(
        syncs < (tasks * each) as u64,
        "{syncs} fsyncs for {} records: no group commit",
        tasks * each
    );
    log.close().await;
    thread.join().expect("syncer");
    let report = verify(&[&path], None, false).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    let records = lines(&path);
    let statements = records.iter().filter(|r| r["type"] == "request").count();
    assert_eq!(statements, tasks * each);
    assert_eq!(records.last().expect("a record")["type"], "checkpoint");
}

#[tokio::test(flavor = "multi_thread")]
async fn write_mode_returns_once_written_without_an_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = AuditLog::open_with(
        &path,
        None,
        options(Durability::Write, Duration::from_secs(3600)),
    )
    .expect("open");
    let seq = log.append_durable(vec![event(1)]).await.expect("append");
    // Written (readable at once) without waiting for an fsync.
    assert_eq!(lines(&path)[0]["request_id"], "req-1");
    assert_eq!(log.sync_count(), 0);
    assert!(durable(&log) < seq);
    drop(log);
    thread
        .join()
        .expect("the syncer stops when the last handle goes");
    let records = lines(&path);
    assert_eq!(records.last().expect("a record")["type"], "checkpoint");
}

/// Outcome records (nobody waits) in `fsync` mode, everything in `write` mode: on disk
/// within the sync interval, with no append asking for it.
async fn synced_within_the_interval(durability: Durability) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, _thread) =
        AuditLog::open_with(&path, None, options(durability, Duration::from_millis(100)))
            .expect("open");
    log.append(vec![event(1), event(2)]);
    for _ in 0..200 {
        if durable(&log) >= 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("records were never fsynced in {durability:?} mode");
}

#[tokio::test(flavor = "multi_thread")]
async fn records_nobody_waits_for_are_fsynced_within_the_interval() {
    synced_within_the_interval(Durability::Fsync).await;
    synced_within_the_interval(Durability::Write).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_close_appends_fail_and_the_trail_ends_with_a_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = AuditLog::open(&path, None).expect("open");
    log.append(vec![event(1)]);
    log.close().await;
    thread.join().expect("syncer");
    assert!(matches!(
        log.append_durable(vec![event(2)]).await,
        Err(AuditError::Closed)
    ));
    let records = lines(&path);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["type"], "checkpoint");
    assert_eq!(records[1]["covers_seq"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reopened_trail_continues_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    for round in 0..3 {
        let (log, thread) = AuditLog::open(&path, None).expect("open");
        log.append_durable(vec![event(round), event(round + 10)])
            .await
            .expect("append");
        log.close().await;
        thread.join().expect("syncer");
    }
    let report = verify(&[&path], None, false).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    let seqs: Vec<u64> = lines(&path)
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
}

fn written(generation: u64, last: u64) -> Written {
    Written {
        generation,
        first: last,
        last,
        lead: false,
    }
}

#[test]
fn a_failed_fsync_fails_exactly_the_records_it_left_unknown() {
    let path = Path::new("audit.jsonl");
    let after_failure = Progress {
        generation: 1,
        durable: 12,
        previous_durable: 10,
        failure: Some("EIO".into()),
        stopped: false,
    };
    // Synced before the failure: durable.
    assert!(matches!(
        after_failure.settles(written(0, 10), path),
        Some(Ok(()))
    ));
    // Written but not known synced when the fsync failed: never durable.
    match after_failure.settles(written(0, 11), path) {
        Some(Err(AuditError::Io { message, .. })) => assert_eq!(message, "EIO"),
        other => panic!("{other:?}"),
    }
    // The new generation's records wait for their own sync.
    assert!(after_failure.settles(written(1, 13), path).is_none());
    assert!(matches!(
        after_failure.settles(written(1, 12), path),
        Some(Ok(()))
    ));
    // Two failures later nothing of generation 0 is known any more: fail closed.
    let later = Progress {
        generation: 2,
        ..after_failure
    };
    assert!(matches!(later.settles(written(0, 1), path), Some(Err(_))));
    // A stopped syncer answers every waiter.
    let stopped = Progress {
        durable: 5,
        stopped: true,
        ..Progress::default()
    };
    assert!(matches!(stopped.settles(written(0, 6), path), Some(Err(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn records_nobody_waits_for_ride_the_next_write_or_reach_the_file_by_themselves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, _thread) = AuditLog::open(&path, None).expect("open");
    // Held back while nothing else is written (an outcome costs no write of its own)…
    {
        let mut state = log.shared().lock();
        state.encode("t", br#"{"type":"request","request_id":"held"}"#);
        state.pending_since = Some(Instant::now());
    }
    log.append(vec![event(1)]);
    let seq = log.append_durable(vec![event(2)]).await.expect("append");
    // …and written ahead of the next record someone waits for, in chain order.
    let records = lines(&path);
    let ids: Vec<&str> = records
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    assert_eq!(ids, ["held", "req-1", "req-2"]);
    assert_eq!(records[2]["seq"], seq);
    // With no later write, the syncer writes them within its flush delay.
    log.append(vec![event(3)]);
    for _ in 0..200 {
        if lines(&path).len() == 4 {
            let report = verify(&[&path], None, true).expect("verify");
            assert!(report.ok(), "{:?}", report.problems);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a record nobody waits for never reached the file");
}

/// Records nobody waits for are held for the next write only up to a bound: an append that
/// finds the bound reached writes them itself, whatever the rate of appends.
#[tokio::test(flavor = "multi_thread")]
async fn held_records_are_bounded_and_written_by_the_append_that_reaches_the_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = AuditLog::open(&path, None).expect("open");
    let big = |i: usize| {
        let AuditEvent::Request(mut r) = event(i) else {
            unreachable!("event() makes request records")
        };
        r.reason = Some("x".repeat(64 * 1024));
        AuditEvent::Request(r)
    };
    // One append of more than the bound: written in parts (`WRITE_PART`), all but what
    // stays under the bound written by the time it returns.
    let records: Vec<AuditEvent> = (0..(MAX_PENDING / (64 * 1024)) + 4).map(big).collect();
    let bytes = records.len() * 64 * 1024;
    log.append(records);
    let held = log.shared().lock().pending.len();
    assert!(held < MAX_PENDING, "{held} bytes held past the bound");
    // The rest is in the file (written by the append, or by the syncer's flush meanwhile).
    let written = std::fs::metadata(&path).expect("file").len() as usize;
    assert!(
        written + held > bytes,
        "{written} + {held} of {bytes} bytes"
    );
    // Below the bound records are held, as before.
    log.append(vec![event(1)]);
    log.close().await;
    thread.join().expect("writer thread");
    let report = verify(&[&path], None, false).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(
        report.records,
        (MAX_PENDING / (64 * 1024)) as u64 + 4 + 1 + 1
    );
}

/// Each checkpoint is reported for keeping outside the file once it is on disk: after
/// close, the witness is the final checkpoint, the file's last line.
#[tokio::test(flavor = "multi_thread")]
async fn the_last_durable_checkpoint_is_witnessed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = AuditLog::open(&path, None).expect("open");
    let witnessed = log.witnessed();
    log.append_durable(vec![event(1), event(2)])
        .await
        .expect("append");
    assert_eq!(*witnessed.borrow(), None, "no checkpoint yet");
    log.close().await;
    thread.join().expect("writer thread");
    let text = std::fs::read_to_string(&path).expect("read");
    let last = text.lines().last().expect("a checkpoint");
    assert!(last.contains("\"type\":\"checkpoint\""), "{last}");
    assert_eq!(
        *witnessed.borrow(),
        Some(Witness {
            seq: 3,
            hash: crate::audit::chain::line_hash(last.as_bytes())
        })
    );
}

/// Appends until a checkpoint is witnessed, then empties the file under the writer.
async fn witness_a_checkpoint_then_cut(log: &AuditLog, path: &Path) {
    let mut witnessed = log.witnessed();
    let batch: Vec<AuditEvent> = (0..CHECKPOINT_EVERY as usize).map(event).collect();
    log.append_durable(batch).await.expect("append");
    witnessed
        .wait_for(Option::is_some)
        .await
        .expect("a checkpoint witnessed");
    std::fs::write(path, b"").expect("cut the file");
}

/// A file found cut under the writer (when a failed fsync makes it take the file as it
/// really is) ends before the checkpoint it witnessed: it is not continued, every append
/// fails naming the cut, and nothing more reaches the file.
#[tokio::test(flavor = "multi_thread")]
async fn a_trail_cut_under_the_writer_is_not_continued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = AuditLog::open(&path, None).expect("open");
    witness_a_checkpoint_then_cut(&log, &path).await;
    {
        let mut state = log.shared().lock();
        super::syncer::reopen(log.shared(), &mut state);
    }
    let error = log
        .append_durable(vec![event(1)])
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, AuditError::Truncated { last_seq: 0, witnessed_seq, .. } if *witnessed_seq > CHECKPOINT_EVERY),
        "{error}"
    );
    assert!(!log.healthy());
    log.append(vec![event(2)]);
    log.close().await;
    thread.join().expect("writer thread");
    assert_eq!(
        std::fs::read(&path).expect("read").len(),
        0,
        "nothing appended"
    );
}

/// Records held for the next write when the trail is found cut can never be written: they
/// are given up, and the syncer goes back to sleep instead of finding them overdue every
/// millisecond.
#[tokio::test(flavor = "multi_thread")]
async fn records_held_when_the_trail_is_found_cut_are_given_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, _thread) = AuditLog::open(&path, None).expect("open");
    witness_a_checkpoint_then_cut(&log, &path).await;
    {
        let mut state = log.shared().lock();
        state.encode("t", br#"{"type":"request","request_id":"held"}"#);
        state.pending_since = Some(Instant::now());
        super::syncer::reopen(log.shared(), &mut state);
        assert!(state.refused.is_some());
    }
    for _ in 0..200 {
        let until = log.shared().lock().syncer_sleeps_until;
        if until.is_some_and(|u| u > Instant::now() + FLUSH_AFTER) {
            assert!(log.shared().lock().pending.is_empty());
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the syncer keeps waking for records it can never write");
}

fn led_syncs(log: &AuditLog) -> u64 {
    log.shared().led_syncs.load(Ordering::Relaxed)
}

/// One session at a time (one client, psql): the appender syncs its own record instead of
/// handing it to the syncer thread and being woken back, two thread hand-overs per
/// statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_waiting_alone_syncs_its_records_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = AuditLog::open(&path, None).expect("open");
    for i in 0..50 {
        {
            // A sync slowed by a busy disk (over `LEAD_WHILE_SYNCS_TAKE`) rightly leaves
            // the next one to the syncer: not what this test is about.
            let mut state = log.shared().lock();
            state.waiters_per_sync = 0;
            state.last_sync_took = Duration::ZERO;
        }
        let seq = log.append_durable(vec![event(i)]).await.expect("append");
        assert!(
            durable(&log) >= seq,
            "returned before its record was durable"
        );
    }
    let led = led_syncs(&log);
    assert!(
        led >= 40,
        "only {led} of 50 lone appends synced their own records"
    );
    assert!(log.sync_count() >= led);
    log.close().await;
    thread.join().expect("writer thread");
    let report = verify(&[&path], None, false).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
}

/// Where the runtime has no other worker to go on with (a single-threaded runtime), a
/// session's thread is never held in an fdatasync: the syncer does them all.
#[tokio::test]
async fn on_a_single_threaded_runtime_the_syncer_does_every_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, _thread) = AuditLog::open(&path, None).expect("open");
    for i in 0..10 {
        let seq = log.append_durable(vec![event(i)]).await.expect("append");
        assert!(durable(&log) >= seq);
    }
    assert_eq!(led_syncs(&log), 0);
    assert!(log.sync_count() > 0);
}

/// Once syncs cover several waiters each (busy), or a sync is slow (a failing disk), the
/// syncer does them: a session's thread held in an fdatasync would hold up other
/// sessions' traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_batches_and_slow_syncs_leave_the_sync_to_the_syncer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, _thread) = AuditLog::open(&path, None).expect("open");
    log.shared().lock().waiters_per_sync = 8 * 256;
    let seq = log.append_durable(vec![event(1)]).await.expect("append");
    assert!(durable(&log) >= seq);
    assert_eq!(led_syncs(&log), 0, "led a sync while batches were busy");
    {
        let mut state = log.shared().lock();
        state.waiters_per_sync = 0;
        state.last_sync_took = Duration::from_secs(2);
    }
    let seq = log.append_durable(vec![event(2)]).await.expect("append");
    assert!(durable(&log) >= seq);
    assert_eq!(led_syncs(&log), 0, "led a sync on a slow disk");
    // A quick disk and lone waiters again: the appender leads.
    {
        let mut state = log.shared().lock();
        state.waiters_per_sync = 0;
        state.last_sync_took = Duration::ZERO;
    }
    log.append_durable(vec![event(3)]).await.expect("append");
    assert_eq!(led_syncs(&log), 1);
}

/// Holds appenders' fdatasyncs in flight (the syncer's own go through): `entered` once an
/// appender starts one, which then returns what `release` sends.
struct HeldSyncs {
    entered: std::sync::mpsc::Receiver<()>,
    release: std::sync::mpsc::Sender<std::io::Result<()>>,
}

fn hold_appender_syncs(log: &AuditLog) -> HeldSyncs {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    let hook: SyncHook = Arc::new(move || {
        if std::thread::current().name() == Some("lockbox-audit") {
            return Ok(());
        }
        let _ = entered_tx.lock().expect("hook").send(());
        release_rx.lock().expect("hook").recv().unwrap_or(Ok(()))
    });
    *log.shared().sync_hook.lock().expect("hook") = Some(hook);
    HeldSyncs { entered, release }
}

impl HeldSyncs {
    /// Lets the held fdatasync return `result`; later ones are not held.
    fn release(&self, log: &AuditLog, result: std::io::Result<()>) {
        *log.shared().sync_hook.lock().expect("hook") = None;
        self.release.send(result).expect("a held sync");
    }
}

/// Durable appends, until one's appender is held in its own fdatasync (the syncer may sync
/// a record before its appender gets to): that append's task.
async fn append_leading(
    log: &AuditLog,
    held: &HeldSyncs,
) -> tokio::task::JoinHandle<Result<u64, AuditError>> {
    loop {
        let task = tokio::spawn({
            let log = log.clone();
            async move { log.append_durable(vec![event(1)]).await }
        });
        while !task.is_finished() {
            if held.entered.try_recv().is_ok() {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Until the syncer goes to sleep (again): when it sleeps, until when.
async fn syncer_sleeps(log: &AuditLog) -> Instant {
    loop {
        if let Some(until) = log.shared().lock().syncer_sleeps_until {
            return until;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The end of the syncer's sleep, once it is longer than a nap (see [`syncer_sleeps`]).
async fn syncer_sleeps_long(log: &AuditLog) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let until = log.shared().lock().syncer_sleeps_until;
        if let Some(until) = until.filter(|u| *u > Instant::now() + FLUSH_AFTER) {
            return until;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the syncer never went to a long sleep");
}

fn eio() -> std::io::Error {
    std::io::Error::other("injected EIO")
}

/// A rotation while an appender's fdatasync runs: the rotation's own fdatasync on the same
/// file may come back fine because the appender's reports the error (Linux reports a
/// writeback error once per open file), so it must not declare the appender's records
/// durable while that one can still fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_during_an_appenders_failing_fsync_does_not_vouch_for_its_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let options = AuditOptions {
        rotate_size: Some(16 * 1024),
        ..AuditOptions::default()
    };
    let (log, thread) = AuditLog::open_with(&path, None, options).expect("open");
    let held = hold_appender_syncs(&log);
    let leader = append_leading(&log, &held).await;
    // Enough to make rotation due (the syncer is woken for it); nobody waits for them.
    let batch: Vec<AuditEvent> = (0..200).map(event).collect();
    drop(log.append_durable_later(batch.iter()).expect("written"));
    syncer_sleeps(&log).await;
    held.release(&log, Err(eio()));
    let result = leader.await.expect("leader");
    assert!(
        result.is_err(),
        "an append whose own fdatasync failed was reported durable: {result:?}"
    );
    // The trail goes on, rotates, and its chain stays whole.
    log.append_durable(vec![event(2)]).await.expect("append");
    log.close().await;
    thread.join().expect("syncer");
    let files = crate::audit::segments::segments(&path).expect("segments");
    assert!(files.len() >= 2, "not rotated: {files:?}");
    let paths: Vec<&Path> = files.iter().map(|s| s.path.as_path()).collect();
    let report = verify(&paths, None, false).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
}

/// Closing while an appender's fdatasync runs: the final fdatasync must not declare the
/// appender's records durable while its own can still fail, and the close completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_during_an_appenders_failing_fsync_does_not_vouch_for_its_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = AuditLog::open(&path, None).expect("open");
    let held = hold_appender_syncs(&log);
    let leader = append_leading(&log, &held).await;
    // What `close` does, the syncer's sleep taken so that its next one is seen.
    {
        let mut state = log.shared().lock();
        state.closed = true;
        state.syncer_sleeps_until = None;
    }
    log.shared().syncer_wake.notify_one();
    while !thread.is_finished() && log.shared().lock().syncer_sleeps_until.is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    held.release(&log, Err(eio()));
    let result = leader.await.expect("leader");
    assert!(
        result.is_err(),
        "an append whose own fdatasync failed was reported durable: {result:?}"
    );
    log.close().await;
    thread.join().expect("syncer");
    assert!(log.shared().progress.borrow().stopped);
}

/// An append that leaves its sync to the syncer (busy batches) while an appender's
/// fdatasync runs: the syncer cannot sync meanwhile, so the end of that sync must wake it
/// rather than leave the append waiting out the syncer's sleep (up to a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_ending_short_of_what_the_syncer_was_asked_for_wakes_the_syncer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, _thread) = AuditLog::open_with(
        &path,
        None,
        options(Durability::Fsync, Duration::from_secs(3600)),
    )
    .expect("open");
    let held = hold_appender_syncs(&log);
    let leader = append_leading(&log, &held).await;
    log.shared().lock().waiters_per_sync = 8 * 256;
    let batch = [event(2)];
    let (seq, follower) = log.append_durable_later(batch.iter()).expect("written");
    // The syncer, woken for it, finds a sync running and sleeps: a long sleep, once its
    // naps while appends flowed are over, so that only a wake-up ends it before the
    // assertion below (a nap would end by itself on a slow machine, and prove nothing).
    let sleeps_until = syncer_sleeps_long(&log).await;
    held.release(&log, Ok(()));
    leader.await.expect("leader").expect("append");
    assert_ne!(
        log.shared().lock().syncer_sleeps_until,
        Some(sleeps_until),
        "the syncer was left asleep with an append waiting for it"
    );
    follower.await.expect("append");
    assert!(durable(&log) >= seq.first());
}

/// A rotation that is due is not put off by appenders syncing their own records: one that
/// finds it due leaves its record to the rotation's own fsync (a lone client that kept
/// syncing would otherwise hold rotation off for as long as it kept sending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_finding_a_rotation_due_leaves_its_sync_to_the_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let options = AuditOptions {
        rotate_size: Some(1),
        ..AuditOptions::default()
    };
    let (log, thread) = AuditLog::open_with(&path, None, options).expect("open");
    for i in 0..5 {
        log.append_durable(vec![event(i)]).await.expect("append");
    }
    assert_eq!(
        led_syncs(&log),
        0,
        "an append synced itself past a due rotation"
    );
    let files = std::fs::read_dir(dir.path()).expect("dir").count();
    assert!(
        files >= 5,
        "{files} files after five appends each past the rotation size"
    );
    log.close().await;
    thread.join().expect("writer thread");
}

/// While a session's statements and outcomes flow, the syncer naps in flush-delay steps, so
/// the outcomes it must flush by the delay do not each wake it (a futex call and a thread
/// switch per statement); the first one after a quiet spell does.
#[tokio::test(flavor = "multi_thread")]
async fn outcomes_appended_while_records_flow_do_not_each_wake_the_syncer() {
    const STATEMENTS: usize = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, _thread) = AuditLog::open_with(
        &path,
        None,
        options(Durability::Write, Duration::from_secs(3600)),
    )
    .expect("open");
    let woken = || log.shared().woken_for_held.load(Ordering::Relaxed);
    // As a session does: an outcome, held, written with the next statement, which the
    // server then runs a while.
    log.append_durable(vec![event(0)]).await.expect("append");
    let mut last_append = Instant::now();
    // Gaps in the traffic as long as a nap (the test's thread descheduled on a busy
    // machine): after one the syncer may rightly have gone to its long sleep, and the
    // next outcome rightly wakes it.
    let mut stalls = 0;
    for i in 0..STATEMENTS {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if last_append.elapsed() >= FLUSH_AFTER {
            stalls += 1;
        }
        log.append(vec![event(2 * i + 1)]);
        log.append_durable(vec![event(2 * i + 2)])
            .await
            .expect("append");
        last_append = Instant::now();
    }
    // Over 100 ms of traffic: woken once at its start, and once per stall at the most.
    assert!(
        woken() <= 1 + stalls,
        "the syncer was woken {} times for {STATEMENTS} outcomes ({stalls} stalls)",
        woken()
    );
    // After a quiet spell it sleeps long again, and a held record wakes it.
    loop {
        let until = log.shared().lock().syncer_sleeps_until;
        if until.is_some_and(|u| u > Instant::now() + FLUSH_AFTER) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = woken();
    log.append(vec![event(2 * STATEMENTS + 1)]);
    assert_eq!(woken(), before + 1);
    for _ in 0..200 {
        if lines(&path).len() == 2 * STATEMENTS + 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the outcome appended after the quiet spell never reached the file");
}
