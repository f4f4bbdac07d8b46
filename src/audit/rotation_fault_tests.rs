//! Rotations that fail half-way: where the trail's names could not be made to hold (the
//! folder's fsync failed after the new file was started, or neither a new file nor the old
//! name could be had), every later statement is refused until a restart, and nothing
//! acknowledged is lost; where the old name could be put back, the trail goes on.

use super::*;
use crate::audit::chain::verify;
use crate::audit::journal::tests::event;
use crate::audit::rotation::RotationStep;

/// A log that rotates after every append, with `faults` injected into its rotations.
fn rotating_log(path: &Path, faults: &[RotationStep]) -> (AuditLog, std::thread::JoinHandle<()>) {
    let options = AuditOptions {
        rotate_size: Some(1),
        ..AuditOptions::default()
    };
    let (log, thread) = AuditLog::open_with(path, None, options).expect("open");
    *log.shared().rotation_faults.lock().expect("faults") = faults.to_vec();
    (log, thread)
}

/// Appends one record at a time until one is refused; returns the request ids of those
/// acknowledged and the refusal.
async fn append_until_refused(log: &AuditLog) -> (Vec<String>, AuditError) {
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        match log.append_durable(vec![event(i)]).await {
            Ok(_) => acknowledged.push(format!("req-{i}")),
            Err(e) => return (acknowledged, e),
        }
    }
    panic!("20 appends after a failed rotation were all acknowledged");
}

/// Every request id in the trail's files, and whether their chain verifies.
fn trail(path: &Path) -> (Vec<String>, bool) {
    let files = crate::audit::segments::segments(path).expect("segments");
    let paths: Vec<&Path> = files.iter().map(|s| s.path.as_path()).collect();
    let report = verify(&paths, None, false).expect("verify");
    let mut ids = Vec::new();
    for file in &paths {
        for line in std::fs::read_to_string(file).expect("read").lines() {
            let record: serde_json::Value = serde_json::from_str(line).expect("json");
            if let Some(id) = record["request_id"].as_str() {
                ids.push(id.to_owned());
            }
        }
    }
    (ids, report.ok())
}

async fn refused_then_restarted(faults: &[RotationStep], why: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = rotating_log(&path, faults);
    let (acknowledged, refusal) = append_until_refused(&log).await;
    assert!(
        refusal.to_string().contains(why),
        "the refusal says why: {refusal}"
    );
    assert!(!log.healthy(), "the writer reports itself unhealthy");
    assert!(
        log.append_durable(vec![event(99)]).await.is_err(),
        "refused until a restart"
    );
    log.close().await;
    thread.join().expect("syncer");

    // A restart reads the folder as it is: every acknowledged record is there, the chain
    // holds, and the trail takes records again.
    let (log, thread) = AuditLog::open(&path, None).expect("reopen");
    log.append_durable(vec![event(100)])
        .await
        .expect("appends after a restart");
    log.close().await;
    thread.join().expect("syncer");
    let (ids, ok) = trail(&path);
    assert!(ok, "the chain verifies across the files");
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged {id} lost: {ids:?}");
    }
    assert!(
        !ids.contains(&"req-99".to_owned()),
        "a refused record was written"
    );
    assert!(ids.contains(&"req-100".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_that_cannot_be_fsynced_after_a_rotation_refuses_every_later_statement() {
    refused_then_restarted(&[RotationStep::SyncFolder], "folder could not be fsynced").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_that_can_neither_start_a_file_nor_rename_back_refuses_every_later_statement() {
    refused_then_restarted(
        &[RotationStep::OpenNew, RotationStep::RenameBack],
        "could not be renamed back",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_put_back_that_cannot_be_made_durable_refuses_every_later_statement() {
    refused_then_restarted(
        &[
            RotationStep::OpenNew,
            RotationStep::SyncFolderAfterRenameBack,
        ],
        "after putting the active file's name back",
    )
    .await;
}

/// Where only the new file could not be started, the old name is put back and the trail
/// goes on (no refusal), its chain whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_that_cannot_start_a_file_puts_the_name_back_and_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (log, thread) = rotating_log(&path, &[RotationStep::OpenNew]);
    for i in 0..5 {
        log.append_durable(vec![event(i)])
            .await
            .expect("appends go on");
    }
    assert!(log.healthy());
    assert!(
        log.shared()
            .rotation_faults
            .lock()
            .expect("faults")
            .is_empty(),
        "the injected failure was met"
    );
    log.close().await;
    thread.join().expect("syncer");
    assert!(path.exists(), "the active file has its name");
    let (ids, ok) = trail(&path);
    assert!(ok, "the chain verifies across the files");
    for i in 0..5 {
        assert!(ids.contains(&format!("req-{i}")), "req-{i}: {ids:?}");
    }
}
