//! Tamper evidence: each alteration of an audit log is found and located.

use std::path::Path;

use lockbox::audit::chain::{verify, CheckpointSigner};
use lockbox::audit::{AuditEvent, AuditLog, RequestEvent, RequestRecord};

pub fn event(i: usize) -> AuditEvent {
    AuditEvent::Request(RequestRecord {
        event: RequestEvent::Created,
        request_id: format!("req-{i}"),
        actor: "eve".into(),
        engineer: "eve".into(),
        database: "sales".into(),
        ticket: format!("T-{i}"),
        access: "read".into(),
        reason: Some("investigate".into()),
        access_expires_at: None,
        status: None,
        break_glass: false,
    })
}

/// Writes `n` records (in two sessions of the writer, so the chain crosses a restart) and
/// returns the log's lines and the public key.
async fn write_log(path: &Path, n: usize) -> (Vec<String>, String) {
    let pem = lockbox::keys::generate_signing_key_pem().expect("key");
    let public = lockbox::token::TokenAuthority::from_pem(&pem, "i", "a")
        .expect("authority")
        .public_key_pem()
        .to_owned();
    for half in [0..n / 2, n / 2..n] {
        let (log, thread) = AuditLog::open(
            path,
            Some(CheckpointSigner::from_pem(&pem).expect("signer")),
        )
        .expect("open");
        for i in half {
            log.append_durable(vec![event(i)]).await.expect("append");
        }
        log.close().await;
        thread.join().expect("writer thread");
    }
    let text = std::fs::read_to_string(path).expect("read");
    (text.lines().map(str::to_owned).collect(), public)
}

/// Problems found in a log made of `lines` and then `torn_tail` (a partial last line).
fn problems_of(dir: &Path, lines: &[String], key: &str, torn_tail: &str) -> Vec<String> {
    let path = dir.join("altered.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n" + torn_tail).expect("write");
    verify(&[&path], Some(key), false).expect("verify").problems
}

#[tokio::test(flavor = "multi_thread")]
async fn every_alteration_is_found_and_located() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (lines, key) = write_log(&dir.path().join("audit.jsonl"), 6).await;
    // 3 records, a checkpoint, 3 records, a checkpoint.
    assert_eq!(lines.len(), 8, "{lines:#?}");
    let clean = verify(&[&dir.path().join("audit.jsonl")], Some(&key), false).expect("verify");
    assert!(clean.ok(), "{:?}", clean.problems);
    assert_eq!(
        (clean.records, clean.checkpoints, clean.checkpoints_verified),
        (8, 2, 2)
    );

    let check = |altered: Vec<String>, says: &str, line: &str| {
        let problems = problems_of(dir.path(), &altered, &key, "");
        assert!(
            problems
                .iter()
                .any(|p| p.contains(says) && p.contains(line)),
            "expected {says:?} at {line:?}, got {problems:#?}"
        );
    };
    let mut flipped = lines.clone();
    flipped[1] = flipped[1].replace("T-1", "T-9");
    check(flipped, "hash chain broken", "line 3 ");

    let mut deleted = lines.clone();
    deleted.remove(1);
    check(deleted, "deleted", "line 2 ");

    let mut inserted = lines.clone();
    inserted.insert(2, lines[1].clone());
    check(inserted, "reordered or inserted", "line 3 ");

    let mut reordered = lines.clone();
    reordered.swap(1, 2);
    check(reordered, "reordered", "line 3 ");

    let mut truncated = lines.clone();
    truncated.truncate(6);
    check(truncated, "not followed by a checkpoint", "2 record(s)");

    let mut head_cut = lines.clone();
    head_cut.remove(0);
    check(head_cut, "does not start at the first record", "line 1 ");

    let torn = problems_of(dir.path(), &lines[..7], &key, &lines[7][..20]);
    assert!(torn.iter().any(|p| p.contains("incomplete")), "{torn:#?}");

    let other_key = lockbox::token::TokenAuthority::from_pem(
        &lockbox::keys::generate_signing_key_pem().expect("k"),
        "i",
        "a",
    )
    .expect("authority")
    .public_key_pem()
    .to_owned();
    let forged =
        verify(&[&dir.path().join("audit.jsonl")], Some(&other_key), false).expect("verify");
    assert!(
        forged
            .problems
            .iter()
            .any(|p| p.contains("signature is not valid")),
        "{:?}",
        forged.problems
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_served_log_verifies_with_the_cli() {
    let mut env = crate::harness::Env::start("audit_verify").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .batch_execute("SELECT 1; SELECT 2")
        .await
        .expect("query");
    drop(client);
    env.stop().await;
    let out = env.verify_trail();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("signature(s) verified") && !stdout.contains("PROBLEM"),
        "{stdout}"
    );
    // One changed byte and the CLI fails, naming the place.
    let text = std::fs::read_to_string(&env.audit_path).expect("audit");
    std::fs::write(&env.audit_path, text.replacen("SELECT 2", "SELECT 3", 1)).expect("tamper");
    let out = env.verify_trail();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("hash chain broken"));
}

/// A log still being written may end in a record the writer is writing right now: live, that
/// is pending, not a problem; otherwise it is a torn file.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_being_written_is_pending_only_for_a_live_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (lines, key) = write_log(&dir.path().join("audit.jsonl"), 4).await;
    let path = dir.path().join("being-written.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n" + &lines[1][..20]).expect("write");
    let live = verify(&[&path], Some(&key), true).expect("verify");
    assert!(live.ok() && live.partial_tail, "{:?}", live.problems);
    let offline = verify(&[&path], Some(&key), false).expect("verify");
    assert!(
        offline.problems.iter().any(|p| p.contains("incomplete")),
        "{:?}",
        offline.problems
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trail_whose_witness_is_gone_with_the_state_store_does_not_verify() {
    // The state store keeps the last checkpoint outside the trail: deleting the active
    // file and the store together passed verification (an attack review).
    let mut env = crate::harness::Env::with(
        "audit_verify_no_store",
        crate::harness::Options {
            state_postgres: false,
            ..Default::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client.batch_execute("SELECT 1").await.expect("query");
    drop(client);
    env.stop().await;
    let whole = env.verify_trail();
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stdout)
    );
    let store = env.config_path.parent().expect("folder").join("state.db");
    std::fs::remove_file(&store).expect("the state store is a file");
    let out = env.verify_trail();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("state store") && stdout.contains("missing"),
        "{stdout}"
    );
}
