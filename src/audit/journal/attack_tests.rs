//! Attacks on the journal's recovery (journal-level; the writer-level ones are in
//! writer_journal_attack_tests.rs). Tests named `finding_*` demonstrate a broken promise
//! and FAIL on the commit under review; tests named `held_*` are attacks that held.

use std::time::Duration;

use super::tests::{end_of_record, event, power_cut, seqs, Chain};
use super::*;
use crate::audit::chain::verify;
use crate::audit::{AuditLog, AuditOptions};
use crate::config::Durability;

fn opts(durability: Durability, journal_bytes: u64) -> AuditOptions {
    AuditOptions {
        durability,
        sync_interval: Duration::from_secs(3600),
        journal_bytes,
        ..AuditOptions::default()
    }
}

/// A process crash (kill -9, OOM, abort): the page cache survives, so the files are
/// exactly as the process left them.
fn process_crash(from: &Path, into: &Path) {
    std::fs::create_dir_all(into).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("ls") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, into.join(path.file_name().expect("name"))).expect("copy");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Finding A: a restart after a process crash empties the journal (durably) although the
// trail it relied on was never fdatasynced; a power cut shortly after loses acknowledged
// records.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_process_crash_syncs_the_trail_before_it_empties_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first");
    let (log, _thread) = AuditLog::open_with(
        &first.join("audit.jsonl"),
        None,
        opts(Durability::Fsync, 1 << 20),
    )
    .expect("open");
    for i in 0..20 {
        log.append_durable(vec![event(i)]).await.expect("append");
    }
    // Acknowledged 1..=20; the trail itself is fdatasynced up to:
    let trail_durable = log.trail_durable();
    assert_eq!(
        trail_durable, 0,
        "precondition: the trail lags behind the journal"
    );
    // kill -9: the page cache keeps everything; systemd restarts lockbox at once.
    let restarted = dir.path().join("restarted");
    process_crash(&first, &restarted);
    let active = restarted.join("audit.jsonl");
    let (log2, _thread2) =
        AuditLog::open_with(&active, None, opts(Durability::Fsync, 1 << 20)).expect("restart");
    // Power is lost a few seconds later (before the kernel's writeback of the trail):
    // nothing fdatasynced the trail since the first run's trail_durable; the restart's
    // recovery found nothing missing (page cache) so it synced nothing, then emptied the
    // journal with a sync_all.
    let lost = dir.path().join("lost");
    // The restart made the trail durable before it emptied the journal.
    assert_eq!(
        log2.trail_durable(),
        20,
        "the restart synced the trail it found"
    );
    let whole = power_cut(&restarted, &lost, log2.trail_durable(), true);
    log2.close().await;
    log.close().await;
    recover(&lost.join("audit.jsonl")).expect("recover");
    let after = std::fs::read(lost.join("audit.jsonl")).expect("read");
    assert_eq!(
        seqs(&after),
        seqs(&whole),
        "acknowledged records 1..=20 lost: the restart emptied the journal before the trail was durable"
    );
}

/// The same root cause across a mode switch: a `write`-mode run killed, restarted in
/// `fsync` mode; its first acknowledged record's frame starts after a trail tail that is
/// not on disk. The old design's fdatasync of the trail would have flushed that tail too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_mode_tail_is_synced_when_fsync_mode_starts_so_no_hole_precedes_its_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first");
    let (log, _thread) = AuditLog::open_with(
        &first.join("audit.jsonl"),
        None,
        opts(Durability::Write, 1 << 20),
    )
    .expect("open");
    for i in 0..10 {
        log.append_durable(vec![event(i)]).await.expect("append");
    }
    let restarted = dir.path().join("restarted");
    process_crash(&first, &restarted);
    let active = restarted.join("audit.jsonl");
    let (log2, _thread2) =
        AuditLog::open_with(&active, None, opts(Durability::Fsync, 1 << 20)).expect("restart");
    let acked = log2
        .append_durable(vec![event(10)])
        .await
        .expect("acknowledged");
    assert_eq!(acked, 11);
    let lost = dir.path().join("lost");
    // The restart in fsync mode synced the write-mode tail before relying on the journal.
    assert_eq!(log2.trail_durable(), 10);
    power_cut(&restarted, &lost, log2.trail_durable(), false);
    log2.close().await;
    log.close().await;
    let copied = lost.join("audit.jsonl");
    let recovered = recover(&copied).expect("recover");
    let after = std::fs::read(&copied).expect("read");
    assert!(
        seqs(&after).contains(&11),
        "acknowledged seq 11 lost ({recovered:?}, trail {} bytes): its frame does not start the file and the trail has no first record, so recovery ignores it",
        after.len()
    );
    // Live: a crashed trail ends without its closing checkpoint.
    let report = verify(&[copied.as_path()], None, true).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

// ---------------------------------------------------------------------------------------
// Finding C: recovery cuts durable trail records whenever the journal's newest frames are
// unreadable (one bad byte, a truncated journal) or the journal is older than the trail.
// ---------------------------------------------------------------------------------------

/// Frames straight through the API, several records per frame now and then; returns the
/// trail bytes and the journal. Every trail byte is on disk (the trail is complete).
fn frames_for(active: &Path, journal_bytes: u64, records: u64) -> (Vec<u8>, Journal) {
    let mut journal = Journal::create(active, journal_bytes, None).expect("create");
    let trail = crate::private_files::open_options()
        .create(true)
        .append(true)
        .open(active)
        .expect("trail");
    let mut written = Vec::new();
    let mut trail_durable = 0;
    let mut seq = 1;
    let mut chain = Chain::new();
    while seq <= records {
        let batch = 1 + seq % 3;
        let mut bytes = Vec::new();
        for s in seq..seq + batch {
            let fields = format!("{{\"pad\":\"{}\"}}", "p".repeat((s % 50) as usize));
            chain.line(&mut bytes, s, &fields);
        }
        std::io::Write::write_all(&mut &trail, &bytes).expect("append");
        let frame = Frame {
            file_first_seq: 1,
            trail_offset: written.len() as u64,
            trail_len: bytes.len() as u64,
            first_seq: seq,
            last_seq: seq + batch - 1,
        };
        journal
            .record(frame, &bytes, &trail, &mut trail_durable)
            .expect("record");
        journal.write_unwritten().expect("write the frame");
        written.extend_from_slice(&bytes);
        seq += batch;
    }
    (written, journal)
}

#[test]
fn one_bad_byte_in_the_newest_half_cuts_no_durable_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let (written, journal) = frames_for(&active, 8 * 1024, 120);
    // The trail is whole and durable (say the syncer fdatasynced it a moment ago).
    let newest_half_start = journal.current as u64 * journal.half;
    let journal_path = path_for(&active);
    let mut bytes = std::fs::read(&journal_path).expect("journal");
    bytes[newest_half_start as usize + 20] ^= 0x01; // bit rot / a media error
    std::fs::write(&journal_path, &bytes).expect("rot");
    let recovered = recover(&active).expect("recover");
    let after = std::fs::read(&active).expect("read");
    assert_eq!(
        after.len(),
        written.len(),
        "{recovered:?}: durable records {:?} were cut",
        seqs(&written[after.len().min(written.len())..])
    );
}

#[test]
fn a_truncated_journal_cuts_no_durable_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let (written, journal) = frames_for(&active, 8 * 1024, 120);
    let journal_path = path_for(&active);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal_path)
        .expect("journal");
    let full = std::fs::read(&journal_path).expect("journal");
    let mut cut_by = Vec::new();
    for len in (0..2 * journal.half).step_by(97) {
        std::fs::write(&journal_path, &full).expect("restore");
        std::fs::write(&active, &written).expect("restore");
        // The journal lost its tail (a copy cut short, a filesystem repair...).
        file.set_len(len).expect("truncate");
        let recovered = recover(&active).expect("recover");
        if std::fs::read(&active).expect("read") != written {
            cut_by.push((len, recovered));
        }
    }
    assert!(
        cut_by.is_empty(),
        "a truncated journal changed a complete, durable trail ({} of {} lengths): {:?}",
        cut_by.len(),
        2 * journal.half / 97,
        &cut_by[..cut_by.len().min(5)]
    );
}

/// A journal left by a run that crashed, then a run that does not use it (a rollback to
/// the release before the journal, or `open_journal` whose `remove` failed) appends more
/// durable records; the next start of this version cuts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_older_than_the_trail_cuts_nothing_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first");
    let (log, _thread) = AuditLog::open_with(
        &first.join("audit.jsonl"),
        None,
        opts(Durability::Fsync, 1 << 20),
    )
    .expect("open");
    for i in 0..20 {
        log.append_durable(vec![event(i)]).await.expect("append");
    }
    let later = dir.path().join("later");
    process_crash(&first, &later);
    log.close().await;
    let active = later.join("audit.jsonl");
    // A run that knows no journal (modelled: the journal is out of its sight).
    let aside = dir.path().join("journal-aside");
    std::fs::rename(path_for(&active), &aside).expect("aside");
    let no_journal = opts(Durability::Fsync, 0);
    let (old, _t) = AuditLog::open_with(&active, None, no_journal).expect("old binary");
    for i in 20..40 {
        old.append_durable(vec![event(i)]).await.expect("append");
    }
    old.close().await;
    std::fs::rename(&aside, path_for(&active)).expect("back");
    let before = std::fs::read(&active).expect("read");
    let recovered = recover(&active).expect("recover");
    let after = std::fs::read(&active).expect("read");
    assert_eq!(
        seqs(&after),
        seqs(&before),
        "{recovered:?}: records fsynced into the trail after the journal's run were destroyed"
    );
}

/// Every first trail file starts at seq 1, so "the frames' file_first_seq is the trail's
/// first seq" does not tell one trail from another.
#[test]
fn a_replaced_trail_that_also_starts_at_seq_1_is_refused_not_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    frames_for(&active, 64 * 1024, 6);
    // The operator put another trail in place (restored from elsewhere); it starts at 1.
    let mut other = Vec::new();
    let mut chain = Chain::new();
    for s in 1..=40 {
        chain.line(&mut other, s, "{\"restored\":true}");
    }
    std::fs::write(&active, &other).expect("replace");
    // Refused (lockbox does not start on it), and nothing changed.
    let recovered = recover(&active).expect_err("refused");
    assert_eq!(
        std::fs::read(&active).expect("read"),
        other,
        "{recovered:?}: the replaced trail was overwritten and cut"
    );
}

// ---------------------------------------------------------------------------------------
// Finding D: hostile journals (the checksum is unkeyed: anyone can forge frames).
// ---------------------------------------------------------------------------------------

fn write_frames(active: &Path, half: u64, frames: &[(Frame, &[u8])]) {
    let mut journal = vec![0u8; 2 * half as usize];
    let mut at = 0;
    let mut buf = Vec::new();
    for (frame, payload) in frames {
        buf.clear();
        encode(&mut buf, 7, frame, payload);
        journal[at..at + buf.len()].copy_from_slice(&buf);
        at += buf.len();
    }
    std::fs::write(path_for(active), journal).expect("journal");
}

#[test]
fn a_forged_frame_with_seq_0_to_max_does_not_panic_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let frame = Frame {
        file_first_seq: 0,
        trail_offset: 0,
        trail_len: 2,
        first_seq: 0,
        last_seq: u64::MAX,
    };
    write_frames(&active, 4096, &[(frame, b"x\n")]);
    let result = std::panic::catch_unwind(|| (unrecovered(&active), recover(&active)));
    assert!(result.is_ok(), "recovery panicked on a forged journal");
}

#[test]
fn a_forged_frame_far_beyond_the_trail_is_not_written_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let trail = b"{\"seq\":1}\n".to_vec();
    std::fs::write(&active, &trail).expect("trail");
    let payload = b"{\"seq\":2}\n";
    let frame = Frame {
        file_first_seq: 1,
        trail_offset: 1 << 40,
        trail_len: payload.len() as u64,
        first_seq: 2,
        last_seq: 2,
    };
    write_frames(&active, 4096, &[(frame, payload)]);
    let result = recover(&active);
    let len = std::fs::metadata(&active).expect("stat").len();
    assert!(
        len < 1 << 20,
        "{result:?}: recovery made the trail a {len}-byte sparse file (a hole of zeros)"
    );
}

// ---------------------------------------------------------------------------------------
// Held: fuzzing, boundaries, oversized batches, restarts, recovery twice / interrupted.
// ---------------------------------------------------------------------------------------

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Random bytes, random frames with valid checksums but random fields, mutations of a
/// real journal: never a panic, and a recovery that succeeds leaves a trail that
/// `recover` then leaves alone (idempotent).
#[test]
fn fuzzed_journals_never_panic_and_recovery_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).expect("mkdir");
    let (written, _journal) = frames_for(&base.join("audit.jsonl"), 8 * 1024, 80);
    let real = std::fs::read(path_for(&base.join("audit.jsonl"))).expect("journal");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for case in 0..400 {
        let case_dir = dir.path().join(format!("case-{case}"));
        std::fs::create_dir_all(&case_dir).expect("mkdir");
        let active = case_dir.join("audit.jsonl");
        let cut = rng.below(written.len() as u64 + 1) as usize;
        std::fs::write(&active, &written[..cut]).expect("trail");
        let journal: Vec<u8> = match case % 4 {
            0 => (0..rng.below(20_000)).map(|_| rng.next() as u8).collect(),
            1 => {
                let mut j = real.clone();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(j.len() as u64) as usize;
                    j[i] ^= 1 << rng.below(8);
                }
                j
            }
            2 => real[..rng.below(real.len() as u64) as usize].to_vec(),
            _ => {
                // Valid checksums, hostile fields.
                let mut j = vec![0u8; 8192];
                let mut at = 0usize;
                let mut buf = Vec::new();
                while at < 8000 {
                    let pick = |rng: &mut Rng| match rng.below(5) {
                        0 => 0,
                        // Near u64::MAX overflows `last_seq + 1` (finding D); kept
                        // below it here to look for anything else.
                        1 => u64::MAX / 4,
                        2 => u64::MAX / 4 - rng.below(3),
                        3 => rng.below(200),
                        _ => rng.next(),
                    };
                    let payload: Vec<u8> = (0..rng.below(300)).map(|_| b'{').collect();
                    let first = pick(&mut rng);
                    let frame = Frame {
                        file_first_seq: if rng.below(2) == 0 { 1 } else { pick(&mut rng) },
                        trail_offset: if rng.below(2) == 0 {
                            rng.below(written.len() as u64)
                        } else {
                            pick(&mut rng) >> 30
                        },
                        trail_len: payload.len() as u64,
                        first_seq: first,
                        last_seq: first.saturating_add(pick(&mut rng) % 4),
                    };
                    buf.clear();
                    encode(&mut buf, 7, &frame, &payload);
                    if at + buf.len() > 8192 {
                        break;
                    }
                    j[at..at + buf.len()].copy_from_slice(&buf);
                    at += buf.len();
                    if rng.below(3) == 0 {
                        at = 4096.max(at);
                    }
                }
                j
            }
        };
        std::fs::write(path_for(&active), &journal).expect("journal");
        let outcome = std::panic::catch_unwind(|| {
            let first = recover(&active);
            let second = recover(&active);
            (first, second)
        });
        let Ok((first, second)) = outcome else {
            panic!("case {case} (kind {}): recover panicked", case % 4);
        };
        if let (Ok(_), Ok(second)) = (&first, &second) {
            assert_eq!(*second, Recovered::default(), "case {case}: not idempotent");
        }
        std::fs::remove_dir_all(&case_dir).expect("rm");
    }
}

/// The half-reuse rule under random batch sizes, including frames that exactly fill a
/// half, frames one byte too big, batches larger than a half, clean restarts (stale frames
/// after the zeroed headers) and crashes whose recovered trail is continued (sequence
/// numbers of cut records reused): at every point a power cut that keeps the trail only up
/// to what was fdatasynced loses no record whose frame was written (and synced).
#[test]
fn random_batches_boundaries_restarts_and_reused_seqs_survive_power_cuts() {
    for seed in 1..=6u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x1234_5678_9abc));
        let mut generation = 0;
        let mut work = dir.path().join(format!("g{generation}"));
        std::fs::create_dir_all(&work).expect("mkdir");
        let journal_bytes = 8 * 1024u64;
        let half = journal_bytes / 2;
        let mut active = work.join("audit.jsonl");
        let mut journal = Journal::create(&active, journal_bytes, None).expect("create");
        let mut trail = crate::private_files::open_options()
            .create(true)
            .read(true)
            .append(true)
            .open(&active)
            .expect("trail");
        let mut written: Vec<u8> = Vec::new();
        let mut trail_durable = 0u64;
        // What the trail really has on disk (record() syncs it with the batch in it).
        let mut synced = 0u64;
        let mut seq = 1u64;
        let mut chain = Chain::new();
        for step in 0..400 {
            // A batch: one record sized to hit a boundary now and then.
            let batch = 1 + rng.below(3);
            let mut bytes = Vec::new();
            for s in seq..seq + batch {
                let target = match rng.below(12) {
                    0 => (half - HEADER_LEN as u64) as usize / batch as usize, // ~fills a half
                    1 => half as usize + 100,                                  // oversized
                    2 => (half - HEADER_LEN as u64).saturating_sub(journal.head % half) as usize, // exactly fills what is left
                    _ => 20 + rng.below(300) as usize,
                };
                let fields =
                    |pad: usize| format!("{{\"g\":{generation},\"pad\":\"{}\"}}", "p".repeat(pad));
                let mut base = Vec::new();
                Chain(chain.0).line(&mut base, s, &fields(0));
                chain.line(
                    &mut bytes,
                    s,
                    &fields(target.saturating_sub(base.len()).max(1)),
                );
            }
            std::io::Write::write_all(&mut &trail, &bytes).expect("append");
            let frame = Frame {
                file_first_seq: 1,
                trail_offset: written.len() as u64,
                trail_len: bytes.len() as u64,
                first_seq: seq,
                last_seq: seq + batch - 1,
            };
            let before = trail_durable;
            journal
                .record(frame, &bytes, &trail, &mut trail_durable)
                .expect("record");
            journal.write_unwritten().expect("write the frame");
            if trail_durable != before || (HEADER_LEN + bytes.len()) as u64 > half {
                // record() fdatasynced the trail, which already held this batch.
                synced = frame.last_seq;
            }
            written.extend_from_slice(&bytes);
            seq += batch;
            // Everything written is "acknowledged" (the journal's fdatasync is implied:
            // the copy below reads the journal as written).
            let crash = work.join(format!("crash-{step}"));
            let whole = power_cut(&work, &crash, synced, rng.below(2) == 0);
            let copied = crash.join("audit.jsonl");
            recover(&copied).unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
            let after = std::fs::read(&copied).expect("read");
            if after != whole {
                let frames = {
                    let j = std::fs::File::open(path_for(&copied)).expect("j");
                    let mut out = Vec::new();
                    read_frames(&j, 0, half, &mut out).expect("read");
                    read_frames(&j, half, 2 * half, &mut out).expect("read");
                    out.iter()
                        .map(|f| (f.frame, f.payload.is_some()))
                        .collect::<Vec<_>>()
                };
                panic!(
                    "seed {seed} step {step} gen {generation}: trail_durable {trail_durable}, whole {} bytes seqs {:?}, after {} bytes seqs {:?}; head {} current {} half_last {:?}; frames {frames:?}",
                    whole.len(), seqs(&whole), after.len(), seqs(&after), journal.head, journal.current, journal.half_last_seq
                );
            }
            assert_eq!(recover(&copied).expect("again"), Recovered::default());
            std::fs::remove_dir_all(&crash).expect("rm");
            match rng.below(40) {
                0 => {
                    // Clean restart: the trail is synced, the journal's headers zeroed.
                    trail.sync_data().expect("sync");
                    drop(journal);
                    journal = Journal::create(&active, journal_bytes, None).expect("create");
                    trail_durable = seq - 1;
                    synced = trail_durable;
                }
                1 => {
                    // A crash whose torn last frame cuts its records: continue from the
                    // recovered copy, reusing their sequence numbers.
                    generation += 1;
                    let next = dir.path().join(format!("g{generation}"));
                    std::fs::create_dir_all(&next).expect("mkdir");
                    let next_active = next.join("audit.jsonl");
                    let keep = end_of_record(&written, synced);
                    std::fs::write(&next_active, &written[..keep]).expect("trail");
                    // The journal as it was, its newest frame torn (bytes zeroed).
                    let mut j = std::fs::read(path_for(&active)).expect("journal");
                    let tear = (journal.head as usize).saturating_sub(5);
                    j[tear..tear + 5].fill(0);
                    std::fs::write(path_for(&next_active), &j).expect("journal");
                    recover(&next_active).expect("recover");
                    written = std::fs::read(&next_active).expect("read");
                    seq = seqs(&written).last().map_or(1, |s| s + 1);
                    chain = Chain::after(&written);
                    drop(journal);
                    work = next;
                    active = next_active;
                    journal = Journal::create(&active, journal_bytes, None).expect("create");
                    trail = crate::private_files::open_options()
                        .read(true)
                        .append(true)
                        .open(&active)
                        .expect("trail");
                    trail.sync_data().expect("sync");
                    trail_durable = seq - 1;
                    synced = trail_durable;
                }
                _ => {}
            }
        }
    }
}

/// Recovery interrupted after writing some frames back (and before the cut and the sync)
/// then run again: the same result.
#[test]
fn a_recovery_interrupted_half_way_is_completed_by_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let (written, _journal) = frames_for(&active, 64 * 1024, 60);
    for cut in [0usize, 1, 100, written.len() / 2, written.len() - 1] {
        let mut trail = written[..cut].to_vec();
        trail.extend(std::iter::repeat_n(b'#', written.len() - cut + 300));
        // As if the first recovery had written back only the first half of what it needed.
        let half_way = cut + (written.len() - cut) / 2;
        trail[cut..half_way].copy_from_slice(&written[cut..half_way]);
        std::fs::write(&active, &trail).expect("trail");
        recover(&active).expect("recover");
        assert_eq!(std::fs::read(&active).expect("read"), written, "cut {cut}");
    }
}

/// A journal made with another size (the default changed between releases): recovery
/// reads it with its own halves, then the writer re-allocates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_of_another_size_is_recovered_then_reallocated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first");
    let (log, _thread) = AuditLog::open_with(
        &first.join("audit.jsonl"),
        None,
        opts(Durability::Fsync, 8 * 1024),
    )
    .expect("open");
    for i in 0..60 {
        log.append_durable(vec![event(i)]).await.expect("append");
    }
    let trail_durable = log.trail_durable();
    let lost = dir.path().join("lost");
    let whole = power_cut(&first, &lost, trail_durable, true);
    log.close().await;
    let active = lost.join("audit.jsonl");
    let (log2, _t) =
        AuditLog::open_with(&active, None, opts(Durability::Fsync, 64 * 1024)).expect("reopen");
    assert_eq!(
        std::fs::metadata(path_for(&active)).expect("stat").len(),
        64 * 1024
    );
    log2.append_durable(vec![event(60)]).await.expect("append");
    log2.close().await;
    let after = std::fs::read(&active).expect("read");
    assert_eq!(&after[..whole.len()], &whole[..]);
    let report = verify(&[active.as_path()], None, false).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
