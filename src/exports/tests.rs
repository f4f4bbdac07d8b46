use super::*;
use crate::audit::export::Witnessing;
use crate::audit::{sample_event, AuditLog};

#[tokio::test(flavor = "multi_thread")]
async fn only_a_run_that_verifies_within_the_trail_is_taken_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = crate::keys::generate_signing_key_pem().expect("key");
    let signer = CheckpointSigner::from_pem(&pem).expect("signer");
    let key = signer.public_key_pem().expect("public key");
    let active = dir.path().join("audit").join("audit.jsonl");
    let (log, thread) = AuditLog::open(
        &active,
        Some(CheckpointSigner::from_pem(&pem).expect("signer")),
    )
    .expect("open");
    for i in 0..5 {
        log.append_durable(vec![sample_event(i)])
            .await
            .expect("append");
    }
    log.close().await;
    thread.join().expect("writer");
    let target = dir.path().join("target");
    let request = ExportRequest {
        to: target.clone(),
        format: ExportFormat::Jsonl,
        since: None,
        until: None,
        database: None,
        after_seq: Some(0),
        schedule: Some("nightly".into()),
        created_by: "test".into(),
        witnessing: Witnessing::default(),
    };
    let run = export::export(
        &active,
        &request,
        Some(&signer),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .expect("export")
    .expect("a run");
    let last = run.manifest.through_seq.expect("through");
    assert!(committed_run(&target, "nightly", 0, Some(&key), last).is_some());
    assert!(
        committed_run(&target, "nightly", 0, Some(&key), last - 1).is_none(),
        "a run past the trail's end"
    );
    // The same run with its manifest's claim moved on and its signature gone.
    let mut forged = run.manifest.clone();
    forged.through_seq = Some(999_999);
    forged.signature = None;
    std::fs::write(
        run.path.join(MANIFEST_FILE),
        serde_json::to_vec(&forged).expect("json"),
    )
    .expect("plant");
    assert!(committed_run(&target, "nightly", 0, Some(&key), last).is_none());
}
