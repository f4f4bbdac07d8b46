//! Second attack round on the journal, through the writer: many concurrent appenders on a
//! multi-threaded runtime, a small journal (half switches all the time), the syncer's own
//! trail syncs every few ms, rotation, and injected journal fdatasync failures. Crash images
//! are taken under the writer's lock: the trail cut to what its syncs covered (the writer's
//! `trail_durable`) with its size kept and zeros after, the journal as its last successful
//! fdatasync left it (captured by the sync hook just before that fdatasync).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
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
        reason: Some("line one\nline \"two\"\r\n\u{2028}end".into()),
        access_expires_at: None,
        status: None,
        break_glass: false,
    })
}

struct Snapshot {
    dir: tempfile::TempDir,
    acked: Vec<u64>,
}

fn seq_of(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()?
        .get("seq")?
        .as_u64()
}

/// End of the record `seq` in `bytes` (0 if the file starts after it).
fn end_of(bytes: &[u8], seq: u64) -> usize {
    let mut at = 0;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        match seq_of(&line[..line.len() - 1]) {
            Some(s) if s <= seq => at += line.len(),
            _ => break,
        }
    }
    at
}

fn take_snapshot(
    log: &AuditLog,
    path: &Path,
    journal_image: &Mutex<Vec<u8>>,
    acked: &Mutex<Vec<u64>>,
    zeros: bool,
) -> Snapshot {
    let acked = acked.lock().expect("acked").clone();
    let state = log.shared().lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    for segment in crate::audit::segments::segments(path).expect("segments") {
        let name = segment.path.file_name().expect("name");
        if segment.first_seq.is_some() {
            std::fs::copy(&segment.path, dir.path().join(name)).expect("copy");
        }
    }
    let cache = std::fs::read(path).expect("read");
    let keep = end_of(&cache, state.trail_durable);
    let mut trail = cache[..keep].to_vec();
    if zeros {
        trail.resize(cache.len(), 0);
    }
    std::fs::write(&active, &trail).expect("write");
    let journal = journal_image.lock().expect("image").clone();
    if !journal.is_empty() {
        std::fs::write(crate::audit::journal::path_for(&active), journal).expect("write");
    }
    drop(state);
    Snapshot { dir, acked }
}

fn all_lines(active: &Path) -> (Vec<std::path::PathBuf>, HashMap<u64, Vec<u8>>) {
    let mut files = Vec::new();
    let mut lines = HashMap::new();
    for segment in crate::audit::segments::segments(active).expect("segments") {
        let bytes = std::fs::read(&segment.path).expect("read");
        for line in bytes.split(|b| *b == b'\n') {
            if let Some(seq) = seq_of(line) {
                lines.insert(seq, line.to_vec());
            }
        }
        files.push(segment.path);
    }
    (files, lines)
}

async fn run(fail_every: Option<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let options = AuditOptions {
        durability: Durability::Fsync,
        sync_interval: Duration::from_millis(15),
        rotate_size: Some(150 << 10),
        rotate_interval: None,
        journal_bytes: 48 << 10,
    };
    let (log, thread) = AuditLog::open_with(&path, None, options).expect("open");
    let journal_image = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let image = journal_image.clone();
        let journal_path = crate::audit::journal::path_for(&path);
        let calls = calls.clone();
        *log.shared().sync_hook.lock().expect("hook") = Some(Arc::new(move || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if fail_every.is_some_and(|k| n % k == 0) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            // What this fdatasync will cover at least: the file as it is now.
            *image.lock().expect("image") = std::fs::read(&journal_path)?;
            Ok(())
        }));
    }
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let log = log.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..70usize {
                let n = t * 1000 + i;
                if i % 5 == 0 {
                    log.append(vec![event(n)]);
                }
                let batch = if i % 7 == 0 {
                    vec![event(n), event(n + 1)]
                } else {
                    vec![event(n)]
                };
                let len = batch.len() as u64;
                if let Ok(first) = log.append_durable(batch).await {
                    acked.lock().expect("acked").extend(first..first + len);
                }
                if i % 11 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let mut snapshots = Vec::new();
    let mut k = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(3)).await;
        snapshots.push(take_snapshot(
            &log,
            &path,
            &journal_image,
            &acked,
            k % 2 == 0,
        ));
        k += 1;
    }
    for t in tasks {
        t.await.expect("task");
    }
    snapshots.push(take_snapshot(&log, &path, &journal_image, &acked, true));
    log.close().await;
    drop(log);
    thread.join().expect("join");
    let (files, truth) = all_lines(&path);
    eprintln!(
        "snapshots {}, acked {}, records {}, files {}, journal syncs {}",
        snapshots.len(),
        acked.lock().expect("acked").len(),
        truth.len(),
        files.len(),
        calls.load(std::sync::atomic::Ordering::SeqCst)
    );
    let mut problems = Vec::new();
    let total_acked = acked.lock().expect("acked").len();
    for (i, snapshot) in snapshots.iter().enumerate() {
        let active = snapshot.dir.path().join("audit.jsonl");
        if let Err(e) = crate::audit::journal::recover(&active) {
            problems.push(format!("snapshot {i}: recover failed: {e}"));
            continue;
        }
        let (files, lines) = all_lines(&active);
        let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
        let report = crate::audit::chain::verify(&refs, None, true).expect("verify");
        if !report.ok() {
            problems.push(format!("snapshot {i}: verify: {:?}", report.problems));
        }
        for seq in &snapshot.acked {
            if lines.get(seq) != truth.get(seq) {
                problems.push(format!(
                    "snapshot {i}: acknowledged record {seq} missing or altered after recovery"
                ));
                break;
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} snapshots failed ({} acked, {} syncs):\n{}",
        problems.len(),
        snapshots.len(),
        total_acked,
        calls.load(std::sync::atomic::Ordering::SeqCst),
        problems[..problems.len().min(10)].join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_survive_crash_images() {
    run(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_survive_crash_images_with_failing_journal_syncs() {
    run(Some(5)).await;
}
