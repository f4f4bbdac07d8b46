//! Export and verify against a real trail written by the writer thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::*;
use crate::audit::{AuditEvent, AuditLog, RequestEvent, RequestRecord};

fn event(i: usize) -> AuditEvent {
    AuditEvent::Request(RequestRecord {
        event: RequestEvent::Created,
        request_id: format!("req-{i}"),
        actor: "eve".into(),
        engineer: "eve".into(),
        database: if i % 3 == 0 {
            "sales"
        } else {
            "hr, \"people\""
        }
        .into(),
        ticket: format!("T-{i}"),
        access: "read".into(),
        reason: Some("line one\nline two".into()),
        access_expires_at: None,
        status: None,
        break_glass: false,
    })
}

async fn trail(dir: &Path, pem: &str) -> PathBuf {
    let active = dir.join("audit").join("audit.jsonl");
    let signer = CheckpointSigner::from_pem(pem).expect("signer");
    let (log, thread) = AuditLog::open(&active, Some(signer)).expect("open");
    for i in 0..30 {
        log.append_durable(vec![event(i)]).await.expect("append");
    }
    log.close().await;
    thread.join().expect("writer");
    active
}

fn request(to: &Path, format: ExportFormat) -> ExportRequest {
    ExportRequest {
        to: to.to_owned(),
        format,
        since: None,
        until: None,
        database: None,
        after_seq: None,
        schedule: None,
        created_by: "test".into(),
        witnessing: Witnessing::default(),
    }
}

fn run(active: &Path, request: &ExportRequest, pem: &str) -> ExportOutcome {
    let signer = CheckpointSigner::from_pem(pem).expect("signer");
    export(
        active,
        request,
        Some(&signer),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .expect("export")
    .expect("something exported")
}

fn problems(dir: &Path, public: &str) -> Vec<String> {
    verify_exports(dir, Some(public)).map_or_else(
        |e| vec![e],
        |r| {
            r.runs
                .into_iter()
                .flat_map(|r| r.problems)
                .chain(r.problems)
                .collect()
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_format_verifies_and_every_alteration_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = crate::keys::generate_signing_key_pem().expect("key");
    let public = crate::token::TokenAuthority::from_pem(&pem, "i", "a")
        .expect("authority")
        .public_key_pem()
        .to_owned();
    let active = trail(dir.path(), &pem).await;
    for format in [
        ExportFormat::Jsonl,
        ExportFormat::Csv,
        ExportFormat::Parquet,
    ] {
        let to = dir.path().join(format.as_str());
        let out = run(&active, &request(&to, format), &pem);
        // 30 records and the closing checkpoint (which names no database).
        assert_eq!(out.manifest.records, 31, "{format:?}");
        assert_eq!(out.manifest.first_seq, Some(1));
        assert!(out.manifest.files.iter().any(|f| f.database.is_none()));
        assert!(
            problems(&out.path, &public).is_empty(),
            "{:?}",
            problems(&out.path, &public)
        );

        let part = out.path.join(&out.manifest.files[0].path);
        let mut bytes = std::fs::read(&part).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(&part, &bytes).expect("tamper");
        let found = problems(&out.path, &public);
        assert!(
            found
                .iter()
                .any(|p| p.contains(&out.manifest.files[0].path) && p.contains("SHA-256")),
            "{format:?}: {found:#?}"
        );
        std::fs::remove_file(&part).expect("delete");
        let found = problems(&out.path, &public);
        assert!(found.iter().any(|p| p.contains("deleted")), "{found:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_edits_added_files_and_other_keys_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = crate::keys::generate_signing_key_pem().expect("key");
    let active = trail(dir.path(), &pem).await;
    let public = crate::token::TokenAuthority::from_pem(&pem, "i", "a")
        .expect("authority")
        .public_key_pem()
        .to_owned();
    let mut only_sales = request(&dir.path().join("out"), ExportFormat::Jsonl);
    only_sales.database = Some("sales".into());
    let out = run(&active, &only_sales, &pem);
    assert_eq!(out.manifest.records, 10);
    assert!(problems(&out.path, &public).is_empty());

    let manifest_path = out.path.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).expect("manifest");
    std::fs::write(
        &manifest_path,
        text.replace("\"records\": 10", "\"records\": 9"),
    )
    .expect("edit");
    let found = problems(&out.path, &public);
    assert!(
        found.iter().any(|p| p.contains("signature is not valid")),
        "{found:#?}"
    );
    std::fs::write(&manifest_path, &text).expect("restore");

    std::fs::write(out.path.join("date=2020-01-01.jsonl"), "{}\n").expect("add");
    let found = problems(&out.path, &public);
    assert!(found
        .iter()
        .any(|p| p.contains("date=2020-01-01.jsonl") && p.contains("added")));
    std::fs::remove_file(out.path.join("date=2020-01-01.jsonl")).expect("remove");

    let other = crate::token::TokenAuthority::from_pem(
        &crate::keys::generate_signing_key_pem().expect("key"),
        "i",
        "a",
    )
    .expect("authority")
    .public_key_pem()
    .to_owned();
    assert!(problems(&out.path, &other)
        .iter()
        .any(|p| p.contains("signature")));
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_runs_continue_from_the_watermark_and_gaps_are_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = crate::keys::generate_signing_key_pem().expect("key");
    let active = trail(dir.path(), &pem).await;
    let public = crate::token::TokenAuthority::from_pem(&pem, "i", "a")
        .expect("authority")
        .public_key_pem()
        .to_owned();
    let to = dir.path().join("scheduled");
    let mut first = request(&to, ExportFormat::Jsonl);
    first.schedule = Some("nightly".into());
    first.after_seq = Some(0);
    let a = run(&active, &first, &pem);
    let through = a.manifest.through_seq.expect("through");
    let mut again = first.clone();
    again.after_seq = Some(through);
    let nothing = export(&active, &again, None, &mut |_| {}, &AtomicBool::new(false));
    assert!(
        matches!(nothing, Ok(None)),
        "nothing new means nothing written"
    );
    assert!(problems(&to, &public).is_empty());

    // A run that starts after a later seq than the previous one ended leaves a gap the
    // verifier names: the first run here sees a trail of 3 records only.
    std::fs::remove_dir_all(&a.path).expect("remove");
    let cut = dir.path().join("cut").join("audit.jsonl");
    std::fs::create_dir_all(dir.path().join("cut")).expect("dir");
    let text = std::fs::read_to_string(&active).expect("read");
    let three: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&cut, three.join("\n") + "\n").expect("write");
    run(&cut, &first, &pem);
    let mut late = first.clone();
    late.after_seq = Some(5);
    run(&active, &late, &pem);
    let found = problems(&to, &public);
    assert!(
        found
            .iter()
            .any(|p| p.contains("seq 4..5") && p.contains("gap")),
        "{found:#?}"
    );

    // A cancelled run leaves nothing behind, not even its staging folder.
    let cancelled = export(
        &active,
        &request(&dir.path().join("c"), ExportFormat::Csv),
        None,
        &mut |_| {},
        &AtomicBool::new(true),
    );
    assert!(matches!(cancelled, Err(ExportError::Cancelled)));
    assert_eq!(
        std::fs::read_dir(dir.path().join("c"))
            .expect("dir")
            .count(),
        0
    );
}

/// Rewrites the trail's line of `seq` with `edit`, then the `prev` of every line after it and
/// every checkpoint's `head`, so the hash chain holds again (only a signature can tell).
fn rewrite_and_rechain(active: &Path, seq: u64, edit: impl Fn(&str) -> String) {
    let text = std::fs::read_to_string(active).expect("trail");
    let mut prev: Option<String> = None;
    let mut out = String::new();
    for line in text.lines() {
        let mut value: serde_json::Value = serde_json::from_str(line).expect("json");
        if let Some(prev) = &prev {
            value["prev"] = serde_json::Value::String(prev.clone());
            if value["type"] == "checkpoint" {
                value["head"] = serde_json::Value::String(prev.clone());
            }
        }
        let mut line = serde_json::to_string(&value).expect("json");
        if value["seq"] == seq {
            line = edit(&line);
        }
        prev = Some(hex::encode(line_hash(line.as_bytes())));
        out.push_str(&line);
        out.push('\n');
    }
    std::fs::write(active, out).expect("rewrite");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trail_that_fails_verification_is_not_exported() {
    // An export signs what it copies: an attack review had it sign a trail with records
    // deleted, and one with a record rewritten and the chain computed again.
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = crate::keys::generate_signing_key_pem().expect("key");
    let signer = CheckpointSigner::from_pem(&pem).expect("signer");
    let exported = |active: &Path, to: &str| {
        export(
            active,
            &request(&dir.path().join(to), ExportFormat::Jsonl),
            Some(&signer),
            &mut |_| {},
            &AtomicBool::new(false),
        )
    };
    let active = trail(dir.path(), &pem).await;
    assert!(
        exported(&active, "before").is_ok(),
        "an intact trail exports"
    );

    // Records taken out of the middle.
    let text = std::fs::read_to_string(&active).expect("trail");
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| !(10..14).contains(i))
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&active, kept.join("\n") + "\n").expect("cut");
    let cut = exported(&active, "cut").expect_err("refused");
    assert!(cut.to_string().contains("fails verification"), "{cut}");
    assert!(!dir.path().join("cut").read_dir().expect("dir").any(|e| e
        .expect("entry")
        .file_name()
        .to_string_lossy()
        .starts_with("export-")));

    // A record rewritten, the chain made to hold again: the checkpoints' signatures fail.
    let active = trail(&dir.path().join("second"), &pem).await;
    rewrite_and_rechain(&active, 5, |line| line.replace("T-4", "T-EDITED"));
    let edited = exported(&active, "edited").expect_err("refused");
    assert!(edited.to_string().contains("signature"), "{edited}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_taken_out_of_an_export_of_every_record_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = crate::keys::generate_signing_key_pem().expect("key");
    let active = trail(dir.path(), &pem).await;
    let out = run(
        &active,
        &request(&dir.path().join("out"), ExportFormat::Jsonl),
        &pem,
    );
    let mut all: Vec<(u64, String, String)> = Vec::new();
    for file in &out.manifest.files {
        let text = std::fs::read_to_string(out.path.join(&file.path)).expect("part");
        for line in text.lines() {
            let seq = serde_json::from_str::<serde_json::Value>(line).expect("json")["seq"]
                .as_u64()
                .expect("seq");
            all.push((seq, line.to_owned(), file.path.clone()));
        }
    }
    let mut problems = Vec::new();
    check_chain_for_tests(&out.manifest, &mut all.clone(), &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    all.retain(|r| r.0 != 7);
    let mut manifest = out.manifest.clone();
    manifest.records -= 1;
    check_chain_for_tests(&manifest, &mut all, &mut problems);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("seq 8 follows seq 6") && p.contains("1 record(s) are missing")),
        "{problems:#?}"
    );
    // A database's records are not consecutive: gaps are expected there.
    let mut problems = Vec::new();
    manifest.selection.database = Some("sales".into());
    check_chain_for_tests(&manifest, &mut all, &mut problems);
    assert!(
        !problems.iter().any(|p| p.contains("missing")),
        "{problems:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trail_the_witness_says_was_cut_or_added_to_is_not_exported() {
    // An attack review exported, signed, a trail cut after an older checkpoint than the one
    // the state store witnessed, and one with records appended after the checkpoint a
    // clean stop closed it with: `audit verify --config` failed both, the export did not.
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = crate::keys::generate_signing_key_pem().expect("key");
    let active = trail(dir.path(), &pem).await;
    let text = std::fs::read_to_string(&active).expect("trail");
    let lines: Vec<&str> = text.lines().collect();
    let last = lines.last().expect("a record");
    let seq = serde_json::from_str::<Value>(last).expect("json")["seq"]
        .as_u64()
        .expect("seq");
    let witness = |closed| Kept {
        witness: crate::audit::witness::Witness {
            seq,
            hash: line_hash(last.as_bytes()),
        },
        closed,
    };
    let exported = |to: &str, kept: Kept| {
        let mut request = request(&dir.path().join(to), ExportFormat::Jsonl);
        request.witnessing.witnesses = vec![("the state store".into(), kept)];
        export(
            &active,
            &request,
            None,
            &mut |_| {},
            &AtomicBool::new(false),
        )
    };
    assert!(
        exported("whole", witness(true)).is_ok(),
        "a trail that ends with the checkpoint it was closed at"
    );

    // Records appended after the closing checkpoint, chained onto it.
    let mut appended = text.clone();
    let forged = format!(
        "{{\"seq\":{},\"prev\":\"{}\",\"type\":\"statement\"}}\n",
        seq + 1,
        hex::encode(line_hash(last.as_bytes()))
    );
    appended.push_str(&forged);
    std::fs::write(&active, &appended).expect("append");
    let added = exported("added", witness(true)).expect_err("refused");
    assert!(added.to_string().contains("fails verification"), "{added}");

    // Cut before the witnessed checkpoint: the records left chain, and the unsigned tail
    // of a live trail is no problem of the chain's own.
    std::fs::write(&active, lines[..lines.len() - 3].join("\n") + "\n").expect("cut");
    let cut = exported("cut", witness(false)).expect_err("refused");
    assert!(cut.to_string().contains("witnessed"), "{cut}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_segment_that_is_no_regular_file_is_refused_not_waited_on() {
    // A FIFO in a segment's place made verify and export wait forever for a writer.
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = crate::keys::generate_signing_key_pem().expect("key");
    let active = trail(dir.path(), &pem).await;
    std::fs::remove_file(&active).expect("remove");
    let status = std::process::Command::new("mkfifo")
        .arg(&active)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    let request = request(&dir.path().join("out"), ExportFormat::Jsonl);
    let refused = export(
        &active,
        &request,
        None,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .expect_err("refused");
    assert!(refused.to_string().contains("regular file"), "{refused}");
    let verified =
        crate::audit::chain::verify(&[active.as_path()], None, true).expect_err("refused");
    assert!(verified.contains("regular file"), "{verified}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_export_checks_the_signatures_of_the_checkpoints_it_holds() {
    // Were an export ever made of records rewritten and chained again (an attack review had
    // lockbox sign one), its manifest's signature would hold; its checkpoints' cannot.
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = crate::keys::generate_signing_key_pem().expect("key");
    let public = crate::token::TokenAuthority::from_pem(&pem, "i", "a")
        .expect("authority")
        .public_key_pem()
        .to_owned();
    let key = manifest::public_key(&public).expect("key");
    let active = trail(dir.path(), &pem).await;
    let records = |active: &Path| -> Vec<(u64, String, String)> {
        std::fs::read_to_string(active)
            .expect("trail")
            .lines()
            .map(|l| {
                let seq = serde_json::from_str::<Value>(l).expect("json")["seq"]
                    .as_u64()
                    .expect("seq");
                (seq, l.to_owned(), "part".to_owned())
            })
            .collect()
    };
    let mut found = Vec::new();
    verify::check_checkpoints(&key, &records(&active), &mut found);
    assert!(found.is_empty(), "{found:?}");
    rewrite_and_rechain(&active, 5, |line| line.replace("T-4", "T-EDITED"));
    verify::check_checkpoints(&key, &records(&active), &mut found);
    assert!(
        found.iter().any(|p| p.contains("not signed by this key")),
        "{found:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_export_refuses_fifos_and_does_not_follow_links_around_a_run() {
    // A FIFO in a part's place made it wait forever; links to `.` made its walk of the
    // run's folder take forever (an attack review).
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = crate::keys::generate_signing_key_pem().expect("key");
    let public = crate::token::TokenAuthority::from_pem(&pem, "i", "a")
        .expect("authority")
        .public_key_pem()
        .to_owned();
    let active = trail(dir.path(), &pem).await;
    let out = run(
        &active,
        &request(&dir.path().join("out"), ExportFormat::Jsonl),
        &pem,
    );
    for name in ["a", "b", "c", "d", "e", "f"] {
        std::os::unix::fs::symlink(".", out.path.join(name)).expect("link");
    }
    let part = out.path.join(&out.manifest.files[0].path);
    std::fs::remove_file(&part).expect("remove");
    let made = std::process::Command::new("mkfifo")
        .arg(&part)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let found = problems(&out.path, &public);
    assert!(
        found.iter().any(|p| p.contains("regular file")),
        "{found:#?}"
    );
}

/// Every folder and file of an export is its owner's only, as the trail's are: it holds
/// every statement with its parameters (an attack review found parts and manifests 0644 in
/// folders 0755 under the usual umask).
#[tokio::test(flavor = "multi_thread")]
async fn an_export_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    fn modes(path: &Path, out: &mut Vec<(PathBuf, u32)>) {
        let metadata = std::fs::metadata(path).expect("metadata");
        out.push((path.to_owned(), metadata.permissions().mode() & 0o777));
        if metadata.is_dir() {
            for entry in std::fs::read_dir(path).expect("read_dir") {
                modes(&entry.expect("entry").path(), out);
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = crate::keys::generate_signing_key_pem().expect("key");
    let active = trail(dir.path(), &pem).await;
    let to = dir.path().join("exports").join("nightly");
    for format in [ExportFormat::Jsonl, ExportFormat::Parquet] {
        run(&active, &request(&to, format), &pem);
    }
    let mut found = Vec::new();
    modes(&dir.path().join("exports"), &mut found);
    assert!(found.len() > 6, "{found:?}");
    for (path, mode) in found {
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, expected, "{}: {mode:o}", path.display());
    }
}
