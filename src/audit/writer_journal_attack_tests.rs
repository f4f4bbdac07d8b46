//! Attacks on the journal through the writer (failure paths, rotation). `finding_*` tests
//! FAIL on the commit under review; `held_*` tests are attacks that held.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::*;
use crate::audit::chain::verify;
use crate::audit::journal::tests::{end_of_record, seqs};
use crate::audit::journal::{path_for, recover};
use crate::audit::{RequestEvent, RequestRecord};

/// A request record whose reason is `reason` bytes long (to size records).
pub(super) fn event(i: usize, reason: usize) -> AuditEvent {
    AuditEvent::Request(RequestRecord {
        event: RequestEvent::Created,
        request_id: format!("req-{i}"),
        actor: "eve".into(),
        engineer: "eve".into(),
        database: "sales".into(),
        ticket: format!("T-{i}"),
        access: "read".into(),
        reason: Some("r".repeat(reason)),
        access_expires_at: None,
        status: None,
        break_glass: false,
    })
}

/// (offset, len, first_seq, last_seq) of each whole-looking frame header in the journal
/// (layout: magic, u32 payload length, run id, file_first_seq, trail_offset, trail_len,
/// first_seq, last_seq, 16-byte checksum).
fn frames_in(journal: &[u8]) -> Vec<(usize, usize, u64, u64)> {
    const HEADER: usize = 72;
    let half = journal.len() / 2;
    let mut out = Vec::new();
    for start in [0, half] {
        let mut at = start;
        while at + HEADER <= start + half && &journal[at..at + 4] == b"LBJ2" {
            let len = u32::from_le_bytes(journal[at + 4..at + 8].try_into().expect("4")) as usize;
            let u64_at =
                |i: usize| u64::from_le_bytes(journal[at + i..at + i + 8].try_into().expect("8"));
            out.push((at, HEADER + len, u64_at(40), u64_at(48)));
            at += HEADER + len;
        }
    }
    out
}

/// A failed fdatasync of the journal drops the dirty pages it could not write (Linux marks
/// them clean); the writer carries on in a new generation and acknowledges later records
/// through later frames. `read_frames` stops at the lost frame, so recovery never sees the
/// frames after it: the record acknowledged AFTER the failure is cut from the trail (and
/// had the lost frame been at a half's start, the run would instead start after it and the
/// records acknowledged BEFORE the failure, not yet in the trail on disk, would be gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_journal_fdatasync_a_record_acknowledged_later_survives_a_power_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let active = work.join("audit.jsonl");
    let options = AuditOptions {
        durability: Durability::Fsync,
        sync_interval: Duration::from_secs(3600),
        journal_bytes: 1 << 20,
        ..AuditOptions::default()
    };
    let (log, _thread) = AuditLog::open_with(&active, None, options).expect("open");
    for i in 0..5 {
        log.append_durable(vec![event(i, 50)])
            .await
            .expect("acknowledged");
    }
    // The next fdatasync of the journal fails (EIO on writeback).
    let failed = Arc::new(AtomicBool::new(false));
    let hook: SyncHook = Arc::new({
        let failed = failed.clone();
        move || {
            if failed.swap(true, Ordering::SeqCst) {
                Ok(())
            } else {
                Err(std::io::Error::other("injected EIO"))
            }
        }
    });
    *log.shared().sync_hook.lock().expect("hook") = Some(hook);
    let a = log.append_durable(vec![event(5, 20_000)]).await;
    assert!(
        a.is_err(),
        "precondition: the record whose sync failed is refused"
    );
    *log.shared().sync_hook.lock().expect("hook") = None;
    let b = log
        .append_durable(vec![event(6, 50)])
        .await
        .expect("acknowledged after the failure");
    assert_eq!(b, 7);
    // Power cut now.
    let crash = dir.path().join("crash");
    std::fs::create_dir_all(&crash).expect("mkdir");
    let (whole, trail_durable, mut journal) = {
        let state = log.shared().lock();
        (
            std::fs::read(&active).expect("trail"),
            state.trail_durable,
            std::fs::read(path_for(&active)).expect("journal"),
        )
    };
    // The pages that held only seq 6's frame never reached the journal on disk.
    let (at, len, _, _) = *frames_in(&journal)
        .iter()
        .find(|f| f.2 == 6)
        .expect("seq 6's frame");
    let (from, to) = (at.div_ceil(4096) * 4096, (at + len) / 4096 * 4096);
    assert!(from < to, "seq 6's frame spans a page of its own");
    journal[from..to].fill(0);
    let keep = end_of_record(&whole, trail_durable);
    let mut trail = whole[..keep].to_vec();
    trail.extend((keep..whole.len()).map(|i| b"\0\n{x"[i % 4]));
    let copied = crash.join("audit.jsonl");
    std::fs::write(&copied, &trail).expect("trail");
    std::fs::write(path_for(&copied), &journal).expect("journal");
    log.close().await;
    let recovered = recover(&copied).expect("recover");
    let after = std::fs::read(&copied).expect("read");
    let have = seqs(&after);
    for acked in [1, 2, 3, 4, 5, 7] {
        assert!(
            have.contains(&acked),
            "acknowledged seq {acked} lost (trail_durable {trail_durable}, {recovered:?}); the trail holds {have:?}"
        );
    }
}

/// Rotation under way: power cuts at many points (the rotated files were fdatasynced before
/// their rename; the active file only up to trail_durable), every acknowledged record
/// survives and the whole trail verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_around_rotations_lose_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let active = work.join("audit.jsonl");
    let options = AuditOptions {
        durability: Durability::Fsync,
        sync_interval: Duration::from_secs(3600),
        journal_bytes: 8 * 1024,
        rotate_size: Some(6000),
        ..AuditOptions::default()
    };
    let (log, _thread) = AuditLog::open_with(&active, None, options).expect("open");
    let mut acked = 0;
    let mut crashes = 0;
    for i in 0..300 {
        let seq = log
            .append_durable(vec![event(i, i % 300)])
            .await
            .expect("append");
        acked = acked.max(seq);
        if i % 7 != 6 {
            continue;
        }
        crashes += 1;
        let crash = dir.path().join(format!("crash-{i}"));
        std::fs::create_dir_all(&crash).expect("mkdir");
        {
            // Under the writer's lock: no rotation half way through the copy.
            let state = log.shared().lock();
            for entry in std::fs::read_dir(&work).expect("ls") {
                let path = entry.expect("entry").path();
                let name = path.file_name().expect("name").to_owned();
                if path == active {
                    let whole = std::fs::read(&path).expect("read");
                    let keep = end_of_record(&whole, state.trail_durable);
                    let mut left = whole[..keep].to_vec();
                    left.extend((keep..whole.len()).map(|i| b"\0\n{x"[i % 4]));
                    std::fs::write(crash.join(&name), left).expect("write");
                } else {
                    std::fs::copy(&path, crash.join(&name)).expect("copy");
                }
            }
        }
        let copied = crash.join("audit.jsonl");
        recover(&copied).expect("recover");
        let files: Vec<std::path::PathBuf> = crate::audit::segments::segments(&copied)
            .expect("segments")
            .into_iter()
            .map(|s| s.path)
            .collect();
        let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
        let report = verify(&paths, None, false).expect("verify");
        let problems: Vec<&String> = report
            .problems
            .iter()
            .filter(|p| !p.contains("not followed by a checkpoint"))
            .collect();
        assert!(problems.is_empty(), "after {i}: {problems:?}");
        assert!(
            report.last_seq.is_some_and(|l| l >= acked),
            "after {i}: trail ends at {:?}, {acked} acknowledged",
            report.last_seq
        );
        std::fs::remove_dir_all(&crash).expect("rm");
    }
    assert!(crashes > 30);
    assert!(
        crate::audit::segments::segments(&active)
            .expect("segments")
            .len()
            > 3,
        "rotated several times"
    );
    log.close().await;
}
