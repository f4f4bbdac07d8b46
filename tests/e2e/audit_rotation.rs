//! Rotation: the trail moves on to a new file by size or age, the chain runs on across
//! files and across restarts, and `verify` and `read_records` see the files as one log.

use std::path::Path;
use std::time::Duration;

use lockbox::audit::chain::{verify, CheckpointSigner};
use lockbox::audit::segments::segments;
use lockbox::audit::{read_records, AuditLog, AuditOptions, AuditQuery};

use crate::audit_chain::event;

fn signer(pem: &str) -> Option<CheckpointSigner> {
    Some(CheckpointSigner::from_pem(pem).expect("signer"))
}

fn public_key(pem: &str) -> String {
    lockbox::token::TokenAuthority::from_pem(pem, "i", "a")
        .expect("authority")
        .public_key_pem()
        .to_owned()
}

async fn append(path: &Path, pem: &str, options: AuditOptions, range: std::ops::Range<usize>) {
    let (log, thread) = AuditLog::open_with(path, signer(pem), options).expect("open");
    for i in range {
        log.append_durable(vec![event(i)]).await.expect("append");
    }
    log.close().await;
    thread.join().expect("writer thread");
}

fn trail(active: &Path) -> Vec<std::path::PathBuf> {
    segments(active)
        .expect("segments")
        .into_iter()
        .map(|s| s.path)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn size_rotation_keeps_one_chain_across_files_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let pem = lockbox::keys::generate_signing_key_pem().expect("key");
    let small = AuditOptions {
        rotate_size: Some(1000),
        ..AuditOptions::default()
    };
    append(&active, &pem, small.clone(), 0..20).await;
    append(&active, &pem, small, 20..40).await;

    let files = trail(&active);
    assert!(files.len() >= 5, "expected several files, got {files:?}");
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let report = verify(&paths, Some(&public_key(&pem)), false).expect("verify");
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!(report.first_seq, Some(1));
    // Every rotated file ends with a signed checkpoint of its own.
    assert!(report.checkpoints_verified as usize >= files.len() - 1);
    for rotated in &files[..files.len() - 1] {
        let text = std::fs::read_to_string(rotated).expect("read");
        let last = text.lines().last().expect("a record");
        assert!(
            last.contains("\"type\":\"checkpoint\""),
            "{rotated:?}: {last}"
        );
    }

    let requests: Vec<String> = read_records(&active, &AuditQuery::default())
        .expect("read")
        .iter()
        .filter_map(|r| {
            r.get("request_id")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("req-{i}")).collect();
    assert_eq!(requests, expected);

    // Paging from the middle skips the files that end before it and loses nothing.
    let middle = read_records(
        &active,
        &AuditQuery {
            after_seq: Some(report.last_seq.expect("last") / 2),
            ..AuditQuery::default()
        },
    )
    .expect("read");
    assert_eq!(
        middle.first().and_then(|r| r["seq"].as_u64()),
        Some(report.last_seq.expect("last") / 2 + 1)
    );

    // A rotated file taken out of the middle is found.
    let mut gap = paths.clone();
    gap.remove(1);
    let broken = verify(&gap, Some(&public_key(&pem)), false).expect("verify");
    assert!(
        broken.problems.iter().any(|p| p.contains("deleted")),
        "{:#?}",
        broken.problems
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn time_rotation_starts_a_new_file_when_the_old_one_is_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let pem = lockbox::keys::generate_signing_key_pem().expect("key");
    let (log, thread) = AuditLog::open_with(
        &active,
        signer(&pem),
        AuditOptions {
            rotate_interval: Some(Duration::from_millis(300)),
            sync_interval: Duration::from_millis(50),
            ..AuditOptions::default()
        },
    )
    .expect("open");
    log.append_durable(vec![event(0)]).await.expect("append");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while trail(&active).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "never rotated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.append_durable(vec![event(1)]).await.expect("append");
    log.close().await;
    thread.join().expect("writer thread");

    let files = trail(&active);
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let report = verify(&paths, Some(&public_key(&pem)), false).expect("verify");
    assert!(report.ok(), "{:#?}", report.problems);
    let active_text = std::fs::read_to_string(&active).expect("read");
    assert!(active_text.contains("req-1") && !active_text.contains("req-0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_reader_follows_across_rotations_and_sees_each_record_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let pem = lockbox::keys::generate_signing_key_pem().expect("key");
    let (log, thread) = AuditLog::open_with(
        &active,
        signer(&pem),
        AuditOptions {
            rotate_size: Some(1500),
            ..AuditOptions::default()
        },
    )
    .expect("open");
    let mut tail = lockbox::audit::tail::Tail::new(&active, None);
    let mut seen = Vec::new();
    for i in 0..60 {
        log.append_durable(vec![event(i)]).await.expect("append");
        if i % 7 == 0 {
            seen.extend(tail.read_new().expect("tail"));
        }
    }
    log.close().await;
    thread.join().expect("writer thread");
    seen.extend(tail.read_new().expect("tail"));
    assert!(trail(&active).len() > 5, "the writer rotated several times");
    let seqs: Vec<u64> = seen.iter().filter_map(|r| r["seq"].as_u64()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every record once, in order");
    let requests = seen.iter().filter(|r| r["type"] == "request").count();
    assert_eq!(requests, 60);
}
