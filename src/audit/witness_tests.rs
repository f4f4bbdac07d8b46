use super::*;
use crate::audit::chain::GENESIS;
use crate::audit::file::encode_line;

/// A trail of `n` records; returns its lines' hashes.
fn trail(path: &Path, n: u64) -> Vec<[u8; 32]> {
    let (mut bytes, mut prev, mut hashes) = (Vec::new(), GENESIS, Vec::new());
    for seq in 1..=n {
        prev = encode_line(&mut bytes, seq, "t", &prev, br#"{"type":"checkpoint"}"#);
        hashes.push(prev);
    }
    std::fs::write(path, bytes).expect("write");
    hashes
}

#[test]
fn a_partial_line_is_a_problem_only_after_a_closed_trail() {
    let path = Path::new("audit.jsonl");
    let kept = |closed| Kept {
        witness: Witness {
            seq: 7,
            hash: [1; 32],
        },
        closed,
    };
    // While lockbox runs (or after a crash) the last line may be one being written.
    assert!(check_closed_end(&kept(false), path, true).is_ok());
    assert!(check_closed_end(&kept(true), path, false).is_ok());
    let error = check_closed_end(&kept(true), path, true).expect_err("closed");
    assert!(error.to_string().contains("seq 7"), "{error}");
}

#[test]
fn a_trail_holding_the_witnessed_checkpoint_passes_and_a_cut_one_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let hashes = trail(&active, 5);
    let check = |seq: u64, hash: [u8; 32]| {
        check_files(
            &[&active],
            &Witness { seq, hash },
            "the state store",
            &active,
        )
    };
    assert!(check(3, hashes[2]).is_ok());
    assert!(check(5, hashes[4]).is_ok());
    let cut = check(7, [1; 32]).expect_err("cut");
    assert!(matches!(
        cut,
        AuditError::Truncated {
            last_seq: 5,
            witnessed_seq: 7,
            ..
        }
    ));
    let text = cut.to_string();
    assert!(
        text.contains("audit.jsonl") && text.contains("seq 5") && text.contains("seq 7"),
        "{text}"
    );
    let other = check(4, hashes[2]).expect_err("rewritten");
    assert!(
        matches!(other, AuditError::Diverged { seq: 4, .. }),
        "{other}"
    );
}

#[test]
fn sequence_numbers_are_read_from_the_line_head_or_parsed() {
    assert_eq!(seq_of(br#"{"seq":42,"time":"t"}"#), Some(42));
    assert_eq!(seq_of(br#"{"time":"t","seq":7}"#), Some(7));
    assert_eq!(seq_of(b"not json"), None);
}

#[tokio::test]
async fn the_keeper_stores_the_last_witness_and_the_check_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let hashes = trail(&active, 3);
    let store = Store::open(&dir.path().join("state.db")).expect("store");
    let (tx, rx) = watch::channel(None);
    let keeper = Keeper::spawn(store.clone(), active.clone(), rx);
    tx.send_replace(Some(Witness {
        seq: 2,
        hash: hashes[1],
    }));
    tx.send_replace(Some(Witness {
        seq: 3,
        hash: hashes[2],
    }));
    keeper.finish().await;
    assert_eq!(
        kept(&store, &active).await.expect("stored"),
        Some(Kept {
            witness: Witness {
                seq: 3,
                hash: hashes[2]
            },
            // The trail ends with it: closed there.
            closed: true,
        })
    );
    check_trail(&active, &store).await.expect("whole trail");
    trail(&active, 2);
    let error = check_trail(&active, &store).await.expect_err("cut trail");
    assert!(
        matches!(error, AuditError::Truncated { last_seq: 2, .. }),
        "{error}"
    );
    // Another record where the checkpoint was: rewritten.
    let mut bytes = Vec::new();
    let first = encode_line(&mut bytes, 1, "t", &GENESIS, br#"{"type":"checkpoint"}"#);
    let second = encode_line(&mut bytes, 2, "t", &first, br#"{"type":"checkpoint"}"#);
    encode_line(&mut bytes, 3, "later", &second, br#"{"type":"checkpoint"}"#);
    std::fs::write(&active, bytes).expect("write");
    let error = check_trail(&active, &store).await.expect_err("rewritten");
    assert!(
        matches!(error, AuditError::Diverged { seq: 3, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn records_after_the_checkpoint_a_clean_stop_ended_with_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let hashes = trail(&active, 3);
    let store = Store::open(&dir.path().join("state.db")).expect("store");
    let stop = |seq: u64| {
        let (tx, rx) = watch::channel(None);
        let keeper = Keeper::spawn(store.clone(), active.clone(), rx);
        tx.send_replace(Some(Witness {
            seq,
            hash: hashes[seq as usize - 1],
        }));
        keeper.finish()
    };
    // The last witness is not the trail's end (a failed final checkpoint): not closed.
    stop(2).await;
    let open = kept(&store, &active).await.expect("read").expect("kept");
    assert!(!open.closed);
    check_trail(&active, &store)
        .await
        .expect("a crash's tail is the writer's own");
    stop(3).await;
    assert!(
        kept(&store, &active)
            .await
            .expect("read")
            .expect("kept")
            .closed
    );
    check_trail(&active, &store)
        .await
        .expect("the trail as it was closed");
    // Someone appends a record, chained correctly, while lockbox is stopped.
    let mut bytes = std::fs::read(&active).expect("read");
    encode_line(
        &mut bytes,
        4,
        "forged",
        &hashes[2],
        br#"{"type":"request"}"#,
    );
    std::fs::write(&active, &bytes).expect("write");
    let error = check_trail(&active, &store)
        .await
        .expect_err("appended while stopped");
    assert!(
        matches!(
            error,
            AuditError::AppendedWhileStopped {
                closed_seq: 3,
                last_seq: 4,
                ..
            }
        ),
        "{error}"
    );
    // Once started on a trail that checked out, a crash's tail is lockbox's own again.
    trail(&active, 3);
    check_trail(&active, &store).await.expect("restored");
    reopen(&store, &active).await.expect("reopen");
    assert!(
        !kept(&store, &active)
            .await
            .expect("read")
            .expect("kept")
            .closed
    );
    std::fs::write(&active, &bytes).expect("write");
    check_trail(&active, &store)
        .await
        .expect("an open trail's tail");
}

#[tokio::test]
async fn a_trail_closed_before_its_first_record_takes_none_while_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    std::fs::write(&active, b"").expect("empty trail");
    let store = Store::open(&dir.path().join("state.db")).expect("store");
    let (_tx, rx) = watch::channel(None);
    Keeper::spawn(store.clone(), active.clone(), rx)
        .finish()
        .await;
    assert_eq!(
        kept(&store, &active).await.expect("read"),
        Some(Kept {
            witness: EMPTY,
            closed: true
        })
    );
    check_trail(&active, &store).await.expect("still empty");
    let mut bytes = Vec::new();
    encode_line(&mut bytes, 1, "forged", &GENESIS, br#"{"type":"request"}"#);
    std::fs::write(&active, &bytes).expect("write");
    let error = check_trail(&active, &store)
        .await
        .expect_err("appended while stopped");
    assert!(
        matches!(
            error,
            AuditError::AppendedWhileStopped {
                closed_seq: 0,
                last_seq: 1,
                ..
            }
        ),
        "{error}"
    );
    reopen(&store, &active).await.expect("reopen");
    check_trail(&active, &store)
        .await
        .expect("an open trail's records are its own");
}

#[tokio::test]
async fn the_witness_is_found_however_the_trails_path_is_spelled() {
    // An attack review reached the deployment through a relative config path and a linked
    // folder: the witness, kept under another spelling, was not found and a cut trail passed.
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("deployment");
    std::fs::create_dir(&real).expect("mkdir");
    let active = real.join("audit.jsonl");
    let hashes = trail(&active, 3);
    let store = Store::open(&dir.path().join("state.db")).expect("store");
    let (tx, rx) = watch::channel(None);
    let keeper = Keeper::spawn(store.clone(), active.clone(), rx);
    tx.send_replace(Some(Witness {
        seq: 3,
        hash: hashes[2],
    }));
    keeper.finish().await;
    let linked = dir.path().join("linked");
    std::os::unix::fs::symlink(&real, &linked).expect("link");
    let dotted = real.join("..").join("deployment").join("audit.jsonl");
    for spelling in [linked.join("audit.jsonl"), dotted] {
        let found = kept(&store, &spelling).await.expect("read");
        assert_eq!(
            found.map(|k| k.witness.seq),
            Some(3),
            "{}",
            spelling.display()
        );
    }
    // One kept by an older version under the path as spelled is still read.
    let older = dir.path().join("older.jsonl");
    store
        .set_setting(
            &setting_key(&older),
            r#"{"seq":7,"hash":"0000000000000000000000000000000000000000000000000000000000000000"}"#,
        )
        .await
        .expect("set");
    let found = kept(&store, &older).await.expect("read");
    assert_eq!(found.map(|k| k.witness.seq), Some(7));
}

#[tokio::test]
async fn the_witness_survives_a_link_in_its_path_being_swapped() {
    // An attack review configured the trail through a link (`conf/audit -> ../data/audit`),
    // cut it, then moved the real folder and linked the old name to it: the canonical path
    // changed, the witness was found under neither key, and a cut trail passed.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("audit")).expect("mkdir");
    std::fs::create_dir(dir.path().join("conf")).expect("mkdir");
    std::os::unix::fs::symlink(data.join("audit"), dir.path().join("conf/audit")).expect("link");
    let spelled = dir.path().join("conf/audit/audit.jsonl");
    let hashes = trail(&spelled, 3);
    let store = Store::open(&dir.path().join("state.db")).expect("store");
    let (tx, rx) = watch::channel(None);
    let keeper = Keeper::spawn(store.clone(), spelled.clone(), rx);
    tx.send_replace(Some(Witness {
        seq: 3,
        hash: hashes[2],
    }));
    keeper.finish().await;
    std::fs::rename(data.join("audit"), data.join("audit2")).expect("move");
    std::fs::remove_file(dir.path().join("conf/audit")).expect("unlink");
    std::os::unix::fs::symlink(data.join("audit2"), dir.path().join("conf/audit")).expect("link");
    trail(&spelled, 2);
    let found = kept(&store, &spelled).await.expect("read");
    assert_eq!(found.map(|k| k.witness.seq), Some(3));
    assert!(
        check_trail(&spelled, &store).await.is_err(),
        "the cut is found"
    );
}
