//! Second attack round on the journal (crash models at the frame level).
//!
//! A `Sim` drives `Journal::record` exactly as `State::write_pending` does, keeps a model of
//! what each file holds on disk (updated at every fdatasync the code does or claims), and
//! builds crash images from it: the page cache is lost, units of 512 bytes written since the
//! last sync survive or not in any order, and the trail's size may persist without its data.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::audit::chain::{line_hash, GENESIS};
use crate::audit::file::encode_line;

const UNIT: usize = 512;

fn record_line(seq: u64, prev: &[u8; 32], text: &str) -> (Vec<u8>, [u8; 32]) {
    let mut out = Vec::new();
    let fields =
        serde_json::to_vec(&serde_json::json!({"type": "statement", "sql": text})).expect("fields");
    let hash = encode_line(&mut out, seq, "2026-01-01T00:00:00.000000Z", prev, &fields);
    (out, hash)
}

struct Sim {
    _dir: tempfile::TempDir,
    active: PathBuf,
    trail: File,
    journal: Journal,
    trail_durable: u64,
    len: u64,
    seq: u64,
    hash: [u8; 32],
    file_first_seq: u64,
    /// All lines appended, in order (index = seq - 1).
    lines: Vec<Vec<u8>>,
    /// What each file holds on disk for sure.
    trail_disk: Vec<u8>,
    journal_disk: Vec<u8>,
    /// Records acknowledged (covered by a journal fdatasync).
    acked: u64,
    /// Bytes of the trail durable by its own syncs (as the code believes).
    frames: Vec<(u64, u64)>,
}

impl Sim {
    fn new(journal_bytes: u64) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let active = dir.path().join("audit.jsonl");
        let trail = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&active)
            .expect("trail");
        // As the writer does: the journal starts with an anchor for the (empty) trail.
        let anchor = super::anchor(&trail, 1).expect("anchor");
        let journal = Journal::create(&active, journal_bytes, anchor).expect("journal");
        let journal_disk = std::fs::read(path_for(&active)).expect("read");
        Sim {
            _dir: dir,
            active,
            trail,
            journal,
            trail_durable: 0,
            len: 0,
            seq: 0,
            hash: GENESIS,
            file_first_seq: 1,
            lines: Vec::new(),
            trail_disk: Vec::new(),
            journal_disk,
            acked: 0,
            frames: Vec::new(),
        }
    }

    fn append(&mut self, n: usize, text: &str) {
        let mut payload = Vec::new();
        let first = self.seq + 1;
        for _ in 0..n {
            let (line, hash) = record_line(self.seq + 1, &self.hash, text);
            payload.extend_from_slice(&line);
            self.lines.push(line);
            self.seq += 1;
            self.hash = hash;
        }
        self.trail
            .write_all_at(&payload, self.len)
            .expect("trail write");
        let frame = Frame {
            file_first_seq: self.file_first_seq,
            trail_offset: self.len,
            trail_len: payload.len() as u64,
            first_seq: first,
            last_seq: self.seq,
        };
        let before = self.trail_durable;
        let was_big = (HEADER_LEN + payload.len()) as u64 > self.journal.half;
        let would_switch = {
            let len = if was_big {
                HEADER_LEN as u64
            } else {
                (HEADER_LEN + payload.len()) as u64
            };
            self.journal.head + len > (self.journal.current as u64 + 1) * self.journal.half
                && self.journal.half_last_seq[1 - self.journal.current] > self.trail_durable
        };
        self.journal
            .record(frame, &payload, &self.trail, &mut self.trail_durable)
            .expect("record");
        if self.trail_durable != before || was_big || would_switch {
            // `record` fdatasynced the trail (after this payload was written to it).
            self.trail_disk = std::fs::read(&self.active).expect("read");
        }
        self.len += payload.len() as u64;
        self.frames.push((first, self.seq));
    }

    fn sync_journal(&mut self) {
        // A sync writes the frames recorded since the last one, then fdatasyncs.
        self.journal.write_unwritten().expect("write the frames");
        self.journal_disk = std::fs::read(path_for(&self.active)).expect("read");
        self.acked = self.seq;
    }

    fn sync_trail(&mut self) {
        self.trail_disk = std::fs::read(&self.active).expect("read");
        self.trail_durable = self.seq;
    }

    fn expected(&self, upto: u64) -> Vec<u8> {
        self.lines[..upto as usize].concat()
    }

    /// The files as a power loss could leave them; written in place of the real ones.
    fn crash(&self, rng: &mut StdRng) -> (Vec<u8>, Vec<u8>) {
        let trail_cache = std::fs::read(&self.active).expect("read");
        let journal_cache = std::fs::read(path_for(&self.active)).expect("read");
        let p_keep = rng.random_range(0.0..1.0);
        // Journal: each unit from disk or cache.
        let mut journal = self.journal_disk.clone();
        for (i, chunk) in journal_cache.chunks(UNIT).enumerate() {
            if rng.random_bool(p_keep) {
                journal[i * UNIT..i * UNIT + chunk.len()].copy_from_slice(chunk);
            }
        }
        // Trail: durable prefix, then a size somewhere up to the cache's, units from the
        // cache or zeros.
        let durable = self.trail_disk.len();
        let size = if rng.random_bool(0.5) {
            trail_cache.len()
        } else {
            rng.random_range(durable..=trail_cache.len())
        };
        let mut trail = trail_cache[..durable].to_vec();
        trail.resize(size, 0);
        let mut at = durable;
        while at < size {
            let end = ((at / UNIT + 1) * UNIT).min(size);
            if rng.random_bool(p_keep) {
                trail[at..end].copy_from_slice(&trail_cache[at..end]);
            }
            at = end;
        }
        (trail, journal)
    }

    fn install(&self, trail: &[u8], journal: &[u8]) {
        std::fs::write(&self.active, trail).expect("write");
        std::fs::write(path_for(&self.active), journal).expect("write");
    }

    /// The bytes the trail must hold after recovery: every acknowledged record, and every
    /// record the trail's own syncs made durable.
    fn must_hold(&self) -> u64 {
        let durable_records = self
            .lines
            .iter()
            .scan(0usize, |at, l| {
                *at += l.len();
                Some(*at)
            })
            .take_while(|end| *end <= self.trail_disk.len())
            .count() as u64;
        self.acked.max(durable_records)
    }
}

fn check_recovered(sim: &Sim, context: &str) {
    let result = recover(&sim.active);
    let trail = std::fs::read(&sim.active).expect("read");
    let want = sim.expected(sim.must_hold());
    assert!(
        result.is_ok(),
        "{context}: recover failed: {result:?} (acked {}, trail durable bytes {})",
        sim.acked,
        sim.trail_disk.len()
    );
    assert!(
        trail.starts_with(&want),
        "{context}: acknowledged/durable records not in the trail after recovery (acked {}, must hold {} bytes, trail {} bytes, first difference at {:?})",
        sim.acked,
        want.len(),
        trail.len(),
        trail.iter().zip(&want).position(|(a, b)| a != b)
    );
    let report = crate::audit::chain::verify(&[sim.active.as_path()], None, true).expect("verify");
    assert!(report.ok(), "{context}: {:?}", report.problems);
}

/// FINDING: a frame written after the last journal sync survives (it is at the start of
/// the other half) while the one before it does not (pages lost out of order). Recovery
/// starts its run at the newest frame and looks back only while frames are contiguous: the
/// acknowledged frame before the gap is left out of the run, the run's first frame does not
/// follow anything the trail holds, and recovery refuses to start — or, where the trail's
/// page of the lost frame happened to survive, writes the newest frame back and leaves the
/// acknowledged records missing.
#[test]
fn an_unsynced_frame_lost_before_a_surviving_one_in_the_other_half() {
    // half = 1024 bytes; each frame below is ~ 72 + 2 * 180 bytes.
    let mut sim = Sim::new(2048);
    sim.append(1, "x"); // A0 (half 0)
    sim.sync_trail(); // trail durable through A0
    sim.append(1, "y"); // A (half 0)
    sim.sync_journal(); // A acknowledged, trail does not hold it on disk
                        // Fill half 0 with unsynced frames (B…) until the next one (C) goes to half 1.
    loop {
        let current_before = sim.journal.current;
        sim.append(1, "z");
        // In the page cache, not on disk (a sync wrote them and is in its fdatasync).
        sim.journal.write_unwritten().expect("write the frames");
        if sim.journal.current != current_before {
            break;
        }
    }
    // Power loss: the journal keeps C (half 1) but B's bytes never reached the disk.
    let trail_cache = std::fs::read(&sim.active).expect("read");
    let mut journal = std::fs::read(path_for(&sim.active)).expect("read");
    // B: the last frame of half 0; its header is zeroed.
    let mut frames = Vec::new();
    read_frames(
        &File::open(path_for(&sim.active)).expect("open"),
        0,
        sim.journal.half,
        &mut frames,
    )
    .expect("read");
    assert!(frames.len() >= 3, "B must exist");
    let mut at = 0usize;
    let mut starts = Vec::new();
    for f in &frames {
        starts.push(at);
        at += HEADER_LEN + f.payload.as_ref().map_or(0, Vec::len);
    }
    let last = *starts.last().expect("frames");
    journal[last..last + HEADER_LEN].fill(0);

    // Variant 1: the trail holds what its sync covered (A0), with its size kept.
    let mut trail = sim.trail_disk.clone();
    trail.resize(trail_cache.len(), 0);
    sim.install(&trail, &journal);
    check_recovered(&sim, "trail durable through A0, rest zeros");
}

/// Variant where recovery does not even complain: the trail's units of the lost frame B
/// survived, those of the acknowledged A did not.
#[test]
fn an_unsynced_frame_lost_before_a_surviving_one_silently_loses_acknowledged_records() {
    let mut sim = Sim::new(2048);
    sim.append(1, "x");
    sim.sync_trail();
    let a_offset = sim.len as usize;
    sim.append(1, "y"); // A
    let a_end = sim.len as usize;
    sim.sync_journal();
    loop {
        let current_before = sim.journal.current;
        sim.append(1, "z");
        // In the page cache, not on disk (a sync wrote them and is in its fdatasync).
        sim.journal.write_unwritten().expect("write the frames");
        if sim.journal.current != current_before {
            break;
        }
    }
    let trail_cache = std::fs::read(&sim.active).expect("read");
    let mut journal = std::fs::read(path_for(&sim.active)).expect("read");
    let mut frames = Vec::new();
    read_frames(
        &File::open(path_for(&sim.active)).expect("open"),
        0,
        sim.journal.half,
        &mut frames,
    )
    .expect("read");
    let last_start: usize = frames[..frames.len() - 1]
        .iter()
        .map(|f| HEADER_LEN + f.payload.as_ref().map_or(0, Vec::len))
        .sum();
    journal[last_start..last_start + HEADER_LEN].fill(0);
    // Trail: everything in the cache except A's bytes (lost; its page never written).
    let mut trail = trail_cache.clone();
    trail[a_offset..a_end].fill(0);
    sim.install(&trail, &journal);
    check_recovered(&sim, "A's trail bytes lost, B's kept");
}

/// Randomized: appends of 1..6 records (sometimes larger than a half), journal syncs,
/// trail syncs, then a crash image; recovery must keep every acknowledged record.
#[test]
fn random_crashes_keep_every_acknowledged_record() {
    let mut failures = Vec::new();
    let only: Option<u64> = std::env::var("ATTACK_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    for seed in 0..400u64 {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = Sim::new(rng.random_range(1..4) * 4096);
        let steps = rng.random_range(1..80);
        for _ in 0..steps {
            match rng.random_range(0..10) {
                0..=5 => {
                    let n = if rng.random_bool(0.05) {
                        40
                    } else {
                        rng.random_range(1..6)
                    };
                    let text = if rng.random_bool(0.3) {
                        "a\nb\r\n\"c\""
                    } else {
                        "select 1"
                    };
                    sim.append(n, text);
                    if rng.random_bool(0.5) {
                        // Written, not yet synced: a sync between its write and its
                        // fdatasync, or unwritten frames past their memory bound.
                        sim.journal.write_unwritten().expect("write the frames");
                    }
                }
                6..=8 => sim.sync_journal(),
                _ => sim.sync_trail(),
            }
        }
        let (trail, journal) = sim.crash(&mut rng);
        sim.install(&trail, &journal);
        if only.is_some() {
            let mut frames = Vec::new();
            let f = File::open(path_for(&sim.active)).expect("open");
            read_frames(&f, 0, sim.journal.half, &mut frames).expect("read");
            read_frames(&f, sim.journal.half, 2 * sim.journal.half, &mut frames).expect("read");
            eprintln!(
                "half {} acked {} trail_durable {} (bytes {}) trail crash len {} seq {}",
                sim.journal.half,
                sim.acked,
                sim.trail_durable,
                sim.trail_disk.len(),
                trail.len(),
                sim.seq
            );
            for f in &frames {
                eprintln!(
                    "  frame run {:x} seqs {}..={} off {} len {} payload {}",
                    f.run_id,
                    f.frame.first_seq,
                    f.frame.last_seq,
                    f.frame.trail_offset,
                    f.frame.trail_len,
                    f.payload.is_some()
                );
            }
            eprintln!("all frames written: {:?}", sim.frames);
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_recovered(&sim, &format!("seed {seed}"));
        }));
        if let Err(e) = outcome {
            let message = e
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "panic".into());
            failures.push(message);
            continue;
        }
        // A second crash during/after recovery (before the journal is emptied) and a second
        // recovery: nothing changes.
        let once = std::fs::read(&sim.active).expect("read");
        let mixed: Vec<u8> = {
            let mut m = once.clone();
            for (i, chunk) in trail.chunks(UNIT).enumerate() {
                if i * UNIT < m.len() && rng.random_bool(0.5) {
                    let end = (i * UNIT + chunk.len()).min(m.len());
                    m[i * UNIT..end].copy_from_slice(&chunk[..end - i * UNIT]);
                }
            }
            m
        };
        std::fs::write(&sim.active, &mixed).expect("write");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_recovered(&sim, &format!("seed {seed} (crash during recovery)"));
        }));
        if let Err(e) = outcome {
            failures.push(
                e.downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "panic".into()),
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures[..failures.len().min(8)].join("\n")
    );
}

fn forged_frame(run_id: u64, frame: Frame, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, run_id, &frame, payload);
    out
}

fn journal_with(active: &Path, half: u64, frames: &[Vec<u8>]) {
    let mut bytes = vec![0u8; 2 * half as usize];
    let mut at = 0;
    for f in frames {
        bytes[at..at + f.len()].copy_from_slice(f);
        at += f.len();
    }
    std::fs::write(path_for(active), bytes).expect("write");
}

/// FINDING (promise 2): at offset 0 recovery checks the run only against the active file's
/// first line, never against the trail it continues (the newest rotated file). Right after
/// a rotation the active file is empty: a journal of another trail is written into it.
#[test]
fn a_journal_of_another_trail_is_written_into_a_freshly_rotated_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    // This trail: records 1..=3 rotated out, the active file empty.
    let mut ours = Vec::new();
    let mut prev = GENESIS;
    for seq in 1..=3 {
        let (line, hash) = record_line(seq, &prev, "ours");
        ours.extend_from_slice(&line);
        prev = hash;
    }
    std::fs::write(crate::audit::segments::rotated_name(&active, 1), &ours).expect("write");
    std::fs::write(&active, b"").expect("write");
    // Another trail's journal: its active file starts at seq 4 (after its own record 3).
    let (other3, other3_hash) = record_line(3, &[7; 32], "theirs");
    let _ = other3;
    let (line4, _) = record_line(4, &other3_hash, "theirs");
    let frame = Frame {
        file_first_seq: 4,
        trail_offset: 0,
        trail_len: line4.len() as u64,
        first_seq: 4,
        last_seq: 4,
    };
    journal_with(&active, 4096, &[forged_frame(99, frame, &line4)]);
    let result = recover(&active);
    let trail = std::fs::read(&active).expect("read");
    let files = [
        crate::audit::segments::rotated_name(&active, 1),
        active.clone(),
    ];
    let report = crate::audit::chain::verify(&[files[0].as_path(), files[1].as_path()], None, true)
        .expect("verify");
    assert!(
        result.is_err() || trail.is_empty(),
        "another trail's record was written back ({result:?}); verify now says {:?}",
        report.problems
    );
}

/// FINDING (promise 2/3): a journal whose checksums are valid (they are not secret) can
/// name any line boundary of the trail: its frame is written over records the trail held
/// durably, and what followed them is cut as no longer chaining.
#[test]
fn a_forged_frame_overwrites_durable_records_in_the_middle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let mut trail = Vec::new();
    let mut prev = GENESIS;
    let mut ends = Vec::new();
    let mut hashes = Vec::new();
    for seq in 1..=10 {
        let (line, hash) = record_line(seq, &prev, "durable");
        trail.extend_from_slice(&line);
        ends.push(trail.len() as u64);
        hashes.push(hash);
        prev = hash;
    }
    std::fs::write(&active, &trail).expect("write");
    let (forged, _) = record_line(3, &hashes[1], "FORGED");
    let frame = Frame {
        file_first_seq: 1,
        trail_offset: ends[1],
        trail_len: forged.len() as u64,
        first_seq: 3,
        last_seq: 3,
    };
    journal_with(&active, 4096, &[forged_frame(1, frame, &forged)]);
    let result = recover(&active);
    let after = std::fs::read(&active).expect("read");
    assert!(
        after.starts_with(&trail),
        "durable records 3..=10 replaced/cut by a forged journal ({result:?}); trail is now {} bytes instead of {}",
        after.len(),
        trail.len()
    );
}

/// Resource bounds: a sparse journal far larger than any this writer makes, with one frame
/// whose payload is as large as a `u32` allows. Recovery reads the payload whole (no cap
/// on a frame beyond the journal's own size).
#[test]
fn a_huge_sparse_journal_frame_is_read_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    std::fs::write(&active, b"").expect("write");
    let payload_len: u64 = 256 << 20; // kept moderate for the test; u32::MAX works the same
    let zeros = vec![0u8; payload_len as usize];
    let frame = Frame {
        file_first_seq: 1,
        trail_offset: 0,
        trail_len: payload_len,
        first_seq: 1,
        last_seq: 1,
    };
    let mut header = Vec::new();
    encode(&mut header, 5, &frame, &zeros);
    drop(zeros);
    let journal = File::create(path_for(&active)).expect("create");
    journal.set_len(2 * (payload_len + 4096)).expect("sparse");
    journal
        .write_all_at(&header[..HEADER_LEN], 0)
        .expect("header");
    drop(journal);
    let started = std::time::Instant::now();
    let result = recover(&active);
    let len = std::fs::metadata(&active).expect("meta").len();
    // It writes 256 MiB of zeros into the (empty) trail as a "record".
    assert!(
        len < payload_len,
        "recovery wrote a {len}-byte frame of NULs into the trail ({result:?}, {:?})",
        started.elapsed()
    );
}

/// Lines of gigantic length without newlines and NUL regions after the run: no hang, no cut
/// of the run, bounded work.
#[test]
fn a_gigantic_line_without_newline_after_the_run_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let (l1, h1) = record_line(1, &GENESIS, "one");
    let (l2, _) = record_line(2, &h1, "two");
    let mut trail = l1.clone();
    trail.extend_from_slice(&l2);
    trail.extend(std::iter::repeat_n(b'{', 70 << 20));
    std::fs::write(&active, &trail).expect("write");
    let frame = Frame {
        file_first_seq: 1,
        trail_offset: l1.len() as u64,
        trail_len: l2.len() as u64,
        first_seq: 2,
        last_seq: 2,
    };
    journal_with(&active, 4096, &[forged_frame(1, frame, &l2)]);
    let started = std::time::Instant::now();
    recover(&active).expect("recover");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(std::fs::read(&active).expect("read"), [l1, l2].concat());
}

/// The first record of a run at offset 0 where the trail's first line is a NUL region of
/// gigantic length (size kept, data lost): accepted, written back, the rest cut.
#[test]
fn a_nul_region_at_the_start_is_replaced_by_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let (l1, h1) = record_line(1, &GENESIS, "one");
    let (l2, _) = record_line(2, &h1, "two");
    std::fs::write(&active, vec![0u8; 80 << 20]).expect("write");
    let frame = Frame {
        file_first_seq: 1,
        trail_offset: 0,
        trail_len: (l1.len() + l2.len()) as u64,
        first_seq: 1,
        last_seq: 2,
    };
    journal_with(
        &active,
        4096,
        &[forged_frame(1, frame, &[l1.clone(), l2.clone()].concat())],
    );
    recover(&active).expect("recover");
    assert_eq!(std::fs::read(&active).expect("read"), [l1, l2].concat());
    let _ = line_hash(b"");
}

/// FINDING (promise 3): only the run's first record is checked against the trail; later
/// frames need only continue the seq numbers and offsets. A forged marker frame (no bytes,
/// any `trail_len`) moves the next frame's offset anywhere: recovery writes it there,
/// making the trail a huge sparse file with a NUL hole (64 GiB here), and keeps it.
#[test]
fn a_forged_marker_moves_the_next_frame_to_a_huge_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let (l1, h1) = record_line(1, &GENESIS, "one");
    std::fs::write(&active, &l1).expect("write");
    let (l2, _) = record_line(2, &h1, "two");
    let hole: u64 = 64 << 30;
    let f2 = Frame {
        file_first_seq: 1,
        trail_offset: l1.len() as u64,
        trail_len: l2.len() as u64,
        first_seq: 2,
        last_seq: 2,
    };
    let marker = Frame {
        file_first_seq: 1,
        trail_offset: f2.trail_offset + f2.trail_len,
        trail_len: hole,
        first_seq: 3,
        last_seq: 3,
    };
    let (l4, _) = record_line(4, &[9; 32], "anything, not chained");
    let f4 = Frame {
        file_first_seq: 1,
        trail_offset: marker.trail_offset + hole,
        trail_len: l4.len() as u64,
        first_seq: 4,
        last_seq: 4,
    };
    journal_with(
        &active,
        4096,
        &[
            forged_frame(1, f2, &l2),
            forged_frame(1, marker, &[]),
            forged_frame(1, f4, &l4),
        ],
    );
    let result = recover(&active);
    let len = std::fs::metadata(&active).expect("meta").len();
    assert!(
        len < 1 << 20,
        "recovery made the trail {len} bytes long (a NUL hole of {hole}) and {result:?}"
    );
}

/// FINDING (promise 1/2): a frame after the first need not chain to the one before it:
/// recovery writes a second frame whose records do not follow the first (any content with
/// the right seq numbers and length), and `verify` then fails on the trail.
#[test]
fn a_second_frame_that_does_not_chain_is_written_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("audit.jsonl");
    let (l1, h1) = record_line(1, &GENESIS, "one");
    std::fs::write(&active, &l1).expect("write");
    let (l2, _) = record_line(2, &h1, "two");
    let (l3, _) = record_line(3, &[9; 32], "three, not chained");
    let f2 = Frame {
        file_first_seq: 1,
        trail_offset: l1.len() as u64,
        trail_len: l2.len() as u64,
        first_seq: 2,
        last_seq: 2,
    };
    let f3 = Frame {
        file_first_seq: 1,
        trail_offset: f2.trail_offset + f2.trail_len,
        trail_len: l3.len() as u64,
        first_seq: 3,
        last_seq: 3,
    };
    journal_with(
        &active,
        4096,
        &[forged_frame(1, f2, &l2), forged_frame(1, f3, &l3)],
    );
    let result = recover(&active);
    let report = crate::audit::chain::verify(&[active.as_path()], None, true).expect("verify");
    assert!(
        result.is_err() || report.ok(),
        "recovery wrote a record that does not chain ({result:?}): {:?}",
        report.problems
    );
}

/// FINDING (promise 1, no forgery): when no frame of the journal survives (none was synced
/// yet, e.g. the crash came before the first journal fdatasync of a run), recovery does not
/// look at the trail at all: its size may have persisted with the data of its last pages
/// lost out of order, and a NUL/garbage line followed by a complete record stays in the
/// middle of the trail (the writer's `recover_tail` only cuts a torn *last* line), so the
/// chain the writer continues is broken for good.
#[test]
fn with_no_frame_left_a_garbage_line_in_the_trail_is_kept() {
    let mut sim = Sim::new(8192);
    sim.append(2, "a");
    sim.sync_trail();
    let durable = sim.len as usize;
    sim.append(1, "b"); // lost in the trail
    sim.append(1, "c"); // its unit survives
    let mut trail = std::fs::read(&sim.active).expect("read");
    let end_b = durable + sim.lines[2].len();
    trail[durable..end_b].fill(0);
    let journal = sim.journal_disk.clone(); // nothing synced: blank
    sim.install(&trail, &journal);
    check_recovered(&sim, "no frames");
}
