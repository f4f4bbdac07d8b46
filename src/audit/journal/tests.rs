//! The journal against real files: what a crash can leave of the trail, torn frames,
//! frames of another file, garbage.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::frame::MAGIC;
use super::*;
use crate::audit::chain::verify;
use crate::audit::segments::rotated_name;
use crate::audit::{AuditEvent, AuditLog, AuditOptions, RequestEvent, RequestRecord};
use crate::config::Durability;

/// Record lines as the writer makes them, each naming the hash of the one before.
pub(super) struct Chain(pub(super) [u8; 32]);

impl Chain {
    pub(super) fn new() -> Chain {
        Chain(crate::audit::chain::GENESIS)
    }

    /// Continues the chain that `trail`'s last line ends.
    pub(super) fn after(trail: &[u8]) -> Chain {
        let body = trail.strip_suffix(b"\n").unwrap_or(trail);
        let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        match body.is_empty() {
            true => Chain::new(),
            false => Chain(crate::audit::chain::line_hash(&body[start..])),
        }
    }

    /// Appends record `seq` with the JSON object `fields` to `out`.
    pub(super) fn line(&mut self, out: &mut Vec<u8>, seq: u64, fields: &str) {
        self.0 = crate::audit::file::encode_line(out, seq, "t", &self.0, fields.as_bytes());
    }
}

pub(crate) fn event(i: usize) -> AuditEvent {
    AuditEvent::Request(RequestRecord {
        event: RequestEvent::Created,
        request_id: format!("req-{i}"),
        actor: "eve".into(),
        engineer: "eve".into(),
        database: "sales".into(),
        ticket: format!("T-{i}"),
        access: "read".into(),
        reason: Some("x".repeat(i % 97)),
        access_expires_at: None,
        status: None,
        break_glass: false,
    })
}

/// A tiny journal (halves of 4 KiB, reused every few dozen records) and a trail the
/// syncer never syncs on its own: only the journal's half reuse makes the trail durable.
fn small_journal() -> AuditOptions {
    AuditOptions {
        durability: Durability::Fsync,
        sync_interval: Duration::from_secs(3600),
        journal_bytes: 8 * 1024,
        ..AuditOptions::default()
    }
}

/// Where record `seq` ends in `trail`: the end of the last line up to it (0 when none).
pub(in crate::audit) fn end_of_record(trail: &[u8], seq: u64) -> usize {
    let mut at = 0;
    let mut end = 0;
    for line in trail.split_inclusive(|b| *b == b'\n') {
        at += line.len();
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
            break;
        };
        if value["seq"].as_u64().is_some_and(|s| s <= seq) {
            end = at;
        }
    }
    end
}

/// The sequence numbers of the record lines in `trail`.
pub(in crate::audit) fn seqs(trail: &[u8]) -> Vec<u64> {
    trail
        .split_inclusive(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| v["seq"].as_u64())
        .collect()
}

/// What a power cut can leave: the trail as it is on disk up to `trail_durable`, and after
/// that either nothing or garbage where pages were lost (the file's size may have reached
/// the disk before its data); the journal as written. Returns the trail before the cut.
pub(in crate::audit) fn power_cut(
    from: &Path,
    into: &Path,
    trail_durable: u64,
    garbage: bool,
) -> Vec<u8> {
    let trail = std::fs::read(from.join("audit.jsonl")).expect("read trail");
    let keep = end_of_record(&trail, trail_durable);
    let mut left = trail[..keep].to_vec();
    if garbage {
        left.extend((keep..trail.len()).map(|i| b"\0\n{x"[i % 4]));
    }
    std::fs::create_dir_all(into).expect("mkdir");
    std::fs::write(into.join("audit.jsonl"), &left).expect("write trail");
    let journal = path_for(&from.join("audit.jsonl"));
    if journal.exists() {
        std::fs::copy(journal, path_for(&into.join("audit.jsonl"))).expect("copy journal");
    }
    trail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_survives_a_crash_that_loses_what_the_trail_did_not_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let (log, _thread) = AuditLog::open_with(&active, None, small_journal()).expect("open");
    let mut crashes = 0;
    for i in 0..400 {
        log.append_durable(vec![event(i)]).await.expect("append");
        if i % 37 != 36 {
            continue;
        }
        // Every record appended so far was acknowledged as durable.
        crashes += 1;
        let trail_durable = log.trail_durable();
        let copy = dir.path().join(format!("crash-{i}"));
        let whole = power_cut(dir.path(), &copy, trail_durable, i % 2 == 0);
        let copied = copy.join("audit.jsonl");
        let before = unrecovered(&copied).expect("unrecovered");
        let recovered = recover(&copied).expect("recover");
        assert_eq!(
            before, recovered.records,
            "audit verify counts what recovery writes"
        );
        assert_eq!(
            std::fs::read(&copied).expect("read"),
            whole,
            "after {} records (trail durable to {trail_durable}): {recovered:?}",
            i + 1
        );
        // Idempotent: a second recovery (a crash during the first) changes nothing more.
        assert_eq!(recover(&copied).expect("again"), Recovered::default());
        assert_eq!(unrecovered(&copied).expect("unrecovered"), 0);
    }
    assert!(crashes >= 10);
    // The journal was reused many times over, and the trail lagged behind it.
    assert!(
        log.trail_durable() > 0,
        "the trail was never synced for a half's reuse"
    );
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_completed_from_its_journal_is_continued_and_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let copy = dir.path().join("crashed");
    {
        let (log, _thread) = AuditLog::open_with(&active, None, small_journal()).expect("open");
        for i in 0..100 {
            log.append_durable(vec![event(i)]).await.expect("append");
        }
        power_cut(dir.path(), &copy, log.trail_durable(), true);
        log.close().await;
    }
    let copied = copy.join("audit.jsonl");
    let (log, _thread) = AuditLog::open_with(&copied, None, small_journal()).expect("reopen");
    let seq = log.append_durable(vec![event(100)]).await.expect("append");
    assert_eq!(seq, 101, "the chain continues after the recovered records");
    log.close().await;
    let report = verify(&[copied.as_path()], None, false).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.last_seq, Some(report.records));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_empties_the_journal_and_write_mode_removes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let (log, _thread) = AuditLog::open_with(&active, None, small_journal()).expect("open");
    // The syncer's early trail sync, timed by how fast the appends come, could cover every
    // record before the cut below (a loaded CI machine did).
    log.no_early_trail_sync();
    for i in 0..50 {
        log.append_durable(vec![event(i)]).await.expect("append");
    }
    // Before the close the journal holds frames the trail may not have on disk.
    let cut = dir.path().join("cut");
    power_cut(dir.path(), &cut, log.trail_durable(), false);
    assert!(recover(&cut.join("audit.jsonl")).expect("recover").records > 0);
    log.close().await;
    let closed = dir.path().join("closed");
    power_cut(dir.path(), &closed, 0, false);
    assert_eq!(
        recover(&closed.join("audit.jsonl")).expect("recover"),
        Recovered::default(),
        "a closed trail's journal is empty"
    );
    let write_mode = AuditOptions {
        durability: Durability::Write,
        ..small_journal()
    };
    let (log, _thread) = AuditLog::open_with(&active, None, write_mode).expect("reopen");
    assert!(!path_for(&active).exists(), "write mode keeps no journal");
    log.close().await;
}

/// Frames written straight through the journal's API for `trail`, one record per frame.
fn journal_frames(active: &Path, records: usize) -> Vec<u8> {
    let mut journal = Journal::create(active, 64 * 1024, None).expect("create");
    let trail = crate::private_files::open_options()
        .create(true)
        .append(true)
        .open(active)
        .expect("trail");
    let mut written = Vec::new();
    let mut trail_durable = 0;
    let mut chain = Chain::new();
    for seq in 1..=records as u64 {
        let mut line = Vec::new();
        chain.line(
            &mut line,
            seq,
            &format!("{{\"pad\":\"{}\"}}", "p".repeat(seq as usize)),
        );
        let line = String::from_utf8(line).expect("utf-8");
        std::io::Write::write_all(&mut &trail, line.as_bytes()).expect("append");
        let frame = Frame {
            file_first_seq: 1,
            trail_offset: written.len() as u64,
            trail_len: line.len() as u64,
            first_seq: seq,
            last_seq: seq,
        };
        journal
            .record(frame, line.as_bytes(), &trail, &mut trail_durable)
            .expect("record");
        written.extend_from_slice(line.as_bytes());
    }
    journal.write_unwritten().expect("write the frames");
    written
}

#[test]
fn a_torn_last_frame_is_not_written_back_and_what_follows_the_last_whole_one_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let written = journal_frames(&active, 5);
    let last_line = written[..written.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .expect("lines")
        + 1;
    // The last frame's payload reached the journal only in part.
    let journal_path = path_for(&active);
    let mut journal = std::fs::read(&journal_path).expect("journal");
    let frames_end = written
        .split_inclusive(|b| *b == b'\n')
        .map(|line| HEADER_LEN + line.len())
        .sum::<usize>();
    journal[frames_end - 3] ^= 0x55;
    std::fs::write(&journal_path, &journal).expect("tear");
    // The trail lost its last two records.
    let second_last = written[..last_line - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .expect("lines")
        + 1;
    std::fs::write(&active, &written[..second_last]).expect("lose");
    let recovered = recover(&active).expect("recover");
    assert_eq!(recovered.records, 1);
    assert_eq!(std::fs::read(&active).expect("read"), written[..last_line]);
}

#[test]
fn frames_of_a_rotated_file_are_never_written_into_the_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    journal_frames(&active, 3);
    std::fs::rename(&active, rotated_name(&active, 1)).expect("rotate");
    std::fs::write(&active, b"").expect("new active file");
    assert_eq!(recover(&active).expect("recover"), Recovered::default());
    assert_eq!(std::fs::read(&active).expect("read"), b"");
}

#[test]
fn a_rotated_file_planted_under_the_frames_name_does_not_hide_them() {
    // An attack review cut the trail after a crash and put an empty file under the rotated
    // name of the frames' file: recovery then skipped the frames, verify passed, and the
    // next start wiped the journal.
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let written = journal_frames(&active, 3);
    std::fs::write(&active, &written[..written.len() / 2]).expect("cut");
    std::fs::write(rotated_name(&active, 1), b"").expect("plant");
    let refused = recover(&active).expect_err("refused");
    assert!(refused.to_string().contains("does not"), "{refused}");
    assert!(unrecovered(&active).is_err(), "verify --config is told too");
}

#[test]
fn frames_of_another_trail_file_are_not_written_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    journal_frames(&active, 3);
    // The active file was replaced by one that starts elsewhere in the chain.
    let mut other = Vec::new();
    let mut chain = Chain(crate::audit::chain::line_hash(b"elsewhere"));
    chain.line(&mut other, 900, "{}");
    chain.line(&mut other, 901, "{}");
    std::fs::write(&active, &other).expect("replace");
    let refused = recover(&active).expect_err("a journal of another trail is refused");
    assert!(
        refused.to_string().contains("does not continue the trail"),
        "{refused}"
    );
    assert!(unrecovered(&active).is_err(), "audit verify says so too");
    assert_eq!(std::fs::read(&active).expect("read"), other);
}

#[test]
fn garbage_in_the_journal_changes_nothing_and_does_not_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let trail = b"{\"seq\":1}\n{\"seq\":2}\n".to_vec();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for len in [0usize, 1, HEADER_LEN - 1, HEADER_LEN, 100, 4096, 65_536] {
        std::fs::write(&active, &trail).expect("trail");
        let mut junk = Vec::with_capacity(len);
        for i in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Now and then the magic, so headers are parsed past it.
            junk.push(if i % 512 < 4 {
                MAGIC[i % 512]
            } else {
                seed as u8
            });
        }
        std::fs::write(path_for(&active), &junk).expect("junk");
        assert_eq!(recover(&active).expect("recover"), Recovered::default());
        assert_eq!(
            std::fs::read(&active).expect("read"),
            trail,
            "{len} bytes of junk"
        );
    }
}

/// The frames on disk in the journal beside `active`.
pub(super) fn frames_on_disk(active: &Path, half: u64) -> Vec<ReadFrame> {
    let file = File::open(path_for(active)).expect("journal");
    let mut frames = Vec::new();
    read_frames(&file, 0, half, &mut frames).expect("read");
    read_frames(&file, half, 2 * half, &mut frames).expect("read");
    frames
}

/// Appends records of one padded size to a trail and records their frames in a journal,
/// as the writer does (one record per frame).
pub(super) struct Appender {
    trail: File,
    chain: Chain,
    offset: u64,
    seq: u64,
    pub(super) trail_durable: u64,
    pad: usize,
}

impl Appender {
    pub(super) fn new(active: &Path, pad: usize) -> Appender {
        let trail = crate::private_files::open_options()
            .create(true)
            .read(true)
            .append(true)
            .open(active)
            .expect("trail");
        Appender {
            trail,
            chain: Chain::new(),
            offset: 0,
            seq: 0,
            trail_durable: 0,
            pad,
        }
    }

    /// Appends the next record and records its frame; returns its seq.
    pub(super) fn record(&mut self, journal: &mut Journal) -> u64 {
        self.seq += 1;
        let mut line = Vec::new();
        let fields = format!("{{\"pad\":\"{}\"}}", "p".repeat(self.pad));
        self.chain.line(&mut line, self.seq, &fields);
        std::io::Write::write_all(&mut &self.trail, &line).expect("append");
        let frame = Frame {
            file_first_seq: 1,
            trail_offset: self.offset,
            trail_len: line.len() as u64,
            first_seq: self.seq,
            last_seq: self.seq,
        };
        self.offset += line.len() as u64;
        journal
            .record(frame, &line, &self.trail, &mut self.trail_durable)
            .expect("record");
        self.seq
    }
}

/// A record's frame waits in memory for the sync that makes it durable (one write per
/// sync, not one per record), and past a bound the waiting frames are written at once, so
/// what they hold between two syncs stays bounded.
#[test]
fn frames_wait_for_the_next_sync_up_to_a_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let mut journal = Journal::create(&active, 8 << 20, None).expect("create");
    let half = journal.half;
    let mut appender = Appender::new(&active, 4000);
    let mut record = |journal: &mut Journal, seq: u64| {
        assert_eq!(appender.record(journal), seq);
    };

    record(&mut journal, 1);
    record(&mut journal, 2);
    assert!(
        frames_on_disk(&active, half).is_empty(),
        "written per record"
    );
    // What a sync does before its fdatasync.
    journal.write_unwritten().expect("write");
    let seqs = |frames: &[ReadFrame]| frames.iter().map(|f| f.frame.last_seq).collect::<Vec<_>>();
    assert_eq!(seqs(&frames_on_disk(&active, half)), [1, 2]);
    assert_eq!(journal.unwritten.bytes(), 0);

    // No sync for a while: frames past the bound go to the file on their own.
    let mut seq = 3;
    while journal.unwritten.bytes() < MAX_UNWRITTEN_BYTES / 2 {
        record(&mut journal, seq);
        seq += 1;
    }
    assert_eq!(
        frames_on_disk(&active, half).len(),
        2,
        "written before the bound"
    );
    let last = seq + (MAX_UNWRITTEN_BYTES / 4000) as u64;
    while seq <= last {
        record(&mut journal, seq);
        assert!(journal.unwritten.bytes() <= MAX_UNWRITTEN_BYTES);
        seq += 1;
    }
    let on_disk = seqs(&frames_on_disk(&active, half));
    assert!(on_disk.len() > 2, "nothing written past the bound");
    assert_eq!(on_disk, (1..=on_disk.len() as u64).collect::<Vec<_>>());
}

/// Frames written by a sync, then a whole journal's worth of appends (half 0 reused, frames
/// past the bound written by `record`): a power cut after the next sync loses nothing.
#[test]
fn a_sync_then_a_wrap_and_frames_written_past_the_bound_keep_every_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    // Halves of 2 MiB (production: 16 MiB); the bound is 1 MiB either way.
    let mut journal = Journal::create(&active, 4 << 20, None).expect("create");
    let mut appender = Appender::new(&active, 60_000);
    for _ in 0..5 {
        appender.record(&mut journal);
    }
    // S1 (Shared::sync) writes the frames of 1..=5 under the lock, drops it, and is slow
    // in its fdatasync. (The first version wrote them after dropping the lock: that late
    // write landed over the newer frames below.)
    journal.write_unwritten().expect("write");
    let s1_end = journal.head;
    // Meanwhile sessions append a half and more: half 0 fills, half 1 fills, half 0 is
    // reused (the trail is fdatasynced first), and past 1 MiB `record` writes at once.
    let mut last;
    let mut wrapped = false;
    loop {
        last = appender.record(&mut journal);
        wrapped |= journal.current == 1;
        if wrapped
            && journal.current == 0
            && journal.head > s1_end
            && journal.unwritten.bytes() == 0
        {
            break; // frames newer than 1..=5 are in the file over where S1 will write
        }
    }
    // S1's fdatasync ends: it acknowledges 1..=5.
    journal.file().sync_data().expect("fdatasync");
    // S2: writes what is left and fdatasyncs: every record up to `last` is acknowledged.
    journal.write_unwritten().expect("write");
    journal.file().sync_data().expect("fdatasync");
    let acked = last;

    // Power cut: the trail on disk as far as its last fdatasync (record's, at the reuse of
    // half 0), garbage after; the journal as synced.
    let whole = std::fs::read(&active).expect("trail");
    let trail_durable = appender.trail_durable;
    let keep = end_of_record(&whole, trail_durable);
    let mut cut = whole[..keep].to_vec();
    cut.extend((keep..whole.len()).map(|i| b"\0\n{x"[i % 4]));
    let crash = dir.path().join("crash");
    std::fs::create_dir_all(&crash).expect("mkdir");
    let copied = crash.join("audit.jsonl");
    std::fs::write(&copied, &cut).expect("write");
    std::fs::copy(path_for(&active), path_for(&copied)).expect("copy");
    let recovered = recover(&copied);
    let have = seqs(&std::fs::read(&copied).expect("read"));
    let lost: Vec<u64> = (1..=acked).filter(|s| !have.contains(s)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged {lost:?} lost (trail_durable {trail_durable}, acked up to {acked}, {recovered:?})"
    );
}

#[test]
fn a_link_or_fifo_in_the_journals_place_is_replaced_and_its_target_left_alone() {
    // An attack review linked the journal's name to another file (a symbolic link, then a
    // hard link to the signing key): lockbox made it owner-only and overwrote it with
    // 32 MiB of journal. A FIFO there made the start wait forever.
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let decoy = dir.path().join("decoy");
    std::fs::write(&decoy, b"precious").expect("decoy");
    std::fs::set_permissions(&decoy, std::fs::Permissions::from_mode(0o644)).expect("mode");
    let plant: [&dyn Fn(&Path); 3] = [
        &|at| std::os::unix::fs::symlink(&decoy, at).expect("symlink"),
        &|at| std::fs::hard_link(&decoy, at).expect("hard link"),
        &|at| {
            let made = std::process::Command::new("mkfifo")
                .arg(at)
                .status()
                .expect("mkfifo");
            assert!(made.success());
        },
    ];
    for (i, plant) in plant.iter().enumerate() {
        let _ = std::fs::remove_file(path_for(&active));
        plant(&path_for(&active));
        match recover(&active) {
            // A FIFO is refused, not waited on: lockbox says so and does not start.
            Err(e) => assert!(i == 2 && e.to_string().contains("regular file"), "{i}: {e}"),
            Ok(recovered) => assert_eq!(recovered, Recovered::default(), "{i}"),
        }
        Journal::create(&active, 64 * 1024, None).expect("a journal of its own");
        let made = std::fs::symlink_metadata(path_for(&active)).expect("journal");
        assert!(made.file_type().is_file(), "{i}");
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&made), 1, "{i}");
        assert_eq!(std::fs::read(&decoy).expect("decoy"), b"precious", "{i}");
        let mode = std::fs::metadata(&decoy)
            .expect("decoy")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "{i}");
    }
}
