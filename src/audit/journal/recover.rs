//! Recovery at start: the journal's newest run of frames written back into the trail.
//!
//! The run is trusted only where it continues the trail: its first record must follow a
//! record the trail holds (by its hash), or start the file. Frames are written back even
//! where the page cache shows their bytes already (after a failed writeback the cache can
//! hold what the disk does not). What follows the run stays as far as each line continues
//! the chain, and is cut from the first that does not (a torn write, or pages lost while
//! the file's new size reached the disk): never a record that chains.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{path_for, read_frames, Frame, ReadFrame};
use crate::audit::chain::line_hash;
use crate::audit::segments::{rotated_name, segments};
use crate::audit::witness::last_line;

/// Longest line recovery reads (a record is at most `audit.max_record_bytes` plus its
/// header and escapes); past it, bytes are not a record.
const MAX_LINE: u64 = 64 << 20;

/// Largest journal recovery reads: frames are read into memory whole, and lockbox never
/// writes one this big (its default is 32 MiB).
const MAX_JOURNAL_BYTES: u64 = 256 << 20;

/// What [`recover`] wrote back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Records whose bytes the trail did not hold as written.
    pub(crate) records: u64,
    /// Bytes cut after the last record that continues the chain.
    pub(crate) cut_bytes: u64,
}

/// Writes the journal's frames back into the trail's active file, as far as each continues
/// the chain (see [`plan`]), cuts what follows the last record that continues it, and
/// fdatasyncs: the trail then holds every record that was made durable through the journal.
/// Idempotent; a missing or empty journal changes nothing. A journal that does not continue
/// the trail, or would replace records the trail holds, is an error (it is not written back,
/// and lockbox does not start on it).
pub(crate) fn recover(active: &Path) -> io::Result<Recovered> {
    let frames = frames_of(active)?;
    if frames.is_empty() {
        return Ok(Recovered::default());
    }
    let trail = crate::private_files::open_own_file(
        active,
        crate::private_files::open_options()
            .create(true)
            .read(true)
            .write(true),
    )?;
    let plan = plan(active, &trail, &frames)?;
    let mut recovered = Recovered::default();
    let mut on_disk = Vec::new();
    for read in &plan.writes {
        let Some(payload) = &read.payload else {
            continue;
        };
        if !holds(&trail, read.frame.trail_offset, payload, &mut on_disk) {
            recovered.records += read.frame.records();
        }
        trail.write_all_at(payload, read.frame.trail_offset)?;
    }
    let (kept, _, _) = chained(&trail, plan.end, plan.seq, plan.hash, None)?;
    let len = trail.metadata()?.len();
    if len > kept {
        trail.set_len(kept)?;
        recovered.cut_bytes = len - kept;
    }
    trail.sync_all()?;
    if recovered != Recovered::default() {
        tracing::warn!(path = %active.display(), records = recovered.records, cut_bytes = recovered.cut_bytes, "audit trail completed from its journal after a crash");
    }
    Ok(recovered)
}

/// Records the journal holds that the trail does not (yet): what [`recover`] would write
/// back (`audit verify` says so rather than only calling the trail cut).
pub(crate) fn unrecovered(active: &Path) -> io::Result<u64> {
    let frames = frames_of(active)?;
    if frames.is_empty() {
        return Ok(0);
    }
    let trail = match crate::audit::chain::open_regular_file(active) {
        Ok(trail) => trail,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(frames
                .iter()
                .filter(|f| f.payload.is_some())
                .map(|f| f.frame.records())
                .sum())
        }
        Err(e) => return Err(e),
    };
    let plan = plan(active, &trail, &frames)?;
    let mut on_disk = Vec::new();
    Ok(plan
        .writes
        .iter()
        .filter(|read| {
            read.payload
                .as_ref()
                .is_some_and(|p| !holds(&trail, read.frame.trail_offset, p, &mut on_disk))
        })
        .map(|read| read.frame.records())
        .sum())
}

/// A marker frame for the trail's last record, written first into an empty journal: a
/// point recovery knows is on disk (the trail was just fdatasynced), so the trail's lines
/// after it are checked and cut even if no other frame survives a crash.
/// An empty trail gets a frame of no record (`last_seq` one before `first_seq`): the file
/// starts there.
pub(crate) fn anchor(trail: &File, file_first_seq: u64) -> io::Result<Option<Frame>> {
    let len = trail.metadata()?.len();
    if len == 0 {
        return Ok(Some(Frame {
            file_first_seq,
            trail_offset: 0,
            trail_len: 0,
            first_seq: file_first_seq,
            last_seq: file_first_seq - 1,
        }));
    }
    let Some(line) = line_ending_at(trail, len)? else {
        return Ok(None);
    };
    let Some((seq, _)) = seq_and_hash(&line) else {
        return Ok(None);
    };
    let trail_len = line.len() as u64 + 1;
    Ok((seq >= file_first_seq).then_some(Frame {
        file_first_seq,
        trail_offset: len - trail_len,
        trail_len,
        first_seq: seq,
        last_seq: seq,
    }))
}

/// The frames of the journal's newest run (the writer run and trail file of its newest
/// frame), in the order they were written.
fn frames_of(active: &Path) -> io::Result<Vec<ReadFrame>> {
    let journal = match crate::audit::chain::open_regular_file(&path_for(active)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = journal.metadata()?.len();
    if len > MAX_JOURNAL_BYTES {
        return Err(io::Error::other(format!(
            "{} is {len} bytes, larger than any audit journal lockbox writes: not read; keep a copy of it and move it aside to start",
            path_for(active).display()
        )));
    }
    let half = len / 2;
    let mut frames = Vec::new();
    read_frames(&journal, 0, half, &mut frames)?;
    read_frames(&journal, half, 2 * half, &mut frames)?;
    let Some(newest) = frames.iter().max_by_key(|f| f.frame.first_seq) else {
        return Ok(frames);
    };
    let (run_id, file) = (newest.run_id, newest.frame.file_first_seq);
    frames.retain(|f| f.run_id == run_id && f.frame.file_first_seq == file);
    frames.sort_by_key(|f| f.frame.first_seq);
    let rotated = rotated_name(active, file);
    if rotated.exists() {
        // The frames are of a file since rotated, which was made durable before its rename:
        // it holds their bytes. One that does not was put there (an attack review planted an
        // empty file under that name, and the next start wiped the journal's records).
        let segment = crate::audit::chain::open_regular_file(&rotated)?;
        let mut buf = Vec::new();
        let missing = frames.iter().find(|f| {
            f.payload
                .as_ref()
                .is_some_and(|p| !holds(&segment, f.frame.trail_offset, p, &mut buf))
        });
        if let Some(missing) = missing {
            return Err(io::Error::other(format!(
                "{} holds records (seq {}..={}) of {} that it does not: that file was replaced or cut; keep copies of both and move the journal aside to start",
                path_for(active).display(),
                missing.frame.first_seq,
                missing.frame.last_seq,
                rotated.display()
            )));
        }
        return Ok(Vec::new());
    }
    Ok(frames)
}

/// What recovery writes back, and where the chain then stands.
struct Plan<'f> {
    writes: Vec<&'f ReadFrame>,
    end: u64,
    seq: u64,
    hash: [u8; 32],
}

/// Walks the frames in the order they were written, each checked to continue the chain:
/// the first must follow a record the trail holds (or start the file after the newest
/// rotated file's last record); a frame's records must chain; a frame without bytes must
/// stand for chained records the trail holds; past a gap (frames lost in the crash, or
/// overwritten) the trail's own lines must lead to the next frame. The walk stops where a
/// check fails: a journal fdatasync that covered a later frame covered everything before
/// it, so nothing past a gap the trail does not bridge was acknowledged. The first frame not
/// continuing the trail, or a frame whose bytes differ from chained records the trail
/// already holds, is an error: the journal is not this trail's.
fn plan<'f>(active: &Path, trail: &File, frames: &'f [ReadFrame]) -> io::Result<Plan<'f>> {
    let not_this_trails = |why: &str, frame: &Frame| {
        io::Error::other(format!(
            "the audit journal {} does not continue the trail {} ({why}, at byte {}, seq {}). It is not written back; keep a copy of it and move it aside to start",
            path_for(active).display(),
            active.display(),
            frame.trail_offset,
            frame.first_seq,
        ))
    };
    let mut plan = Plan {
        writes: Vec::new(),
        end: 0,
        seq: 0,
        hash: crate::audit::chain::GENESIS,
    };
    let Some(first) = frames.first() else {
        return Ok(plan);
    };
    (plan.seq, plan.hash) = predecessor(active, trail, frames)?.ok_or_else(|| {
        not_this_trails(
            "its first record follows no record the trail holds",
            &first.frame,
        )
    })?;
    plan.end = first.frame.trail_offset;
    for (i, read) in frames.iter().enumerate() {
        let frame = &read.frame;
        if frame.last_seq <= plan.seq {
            continue; // covered already (a frame left from earlier in this run)
        }
        if frame.trail_offset != plan.end || frame.first_seq != plan.seq + 1 {
            let bridged = chained(
                trail,
                plan.end,
                plan.seq,
                plan.hash,
                Some(frame.trail_offset),
            )?;
            if bridged.0 != frame.trail_offset || bridged.1 + 1 != frame.first_seq {
                break;
            }
            (plan.end, plan.seq, plan.hash) = bridged;
        }
        let next = match &read.payload {
            Some(payload) => chain_through(payload, plan.seq, plan.hash),
            None => {
                let end = frame.trail_end();
                let (reached, seq, hash) =
                    chained(trail, plan.end, plan.seq, plan.hash, Some(end))?;
                (reached == end).then_some((seq, hash))
            }
        };
        let Some((seq, hash)) = next.filter(|(seq, _)| *seq == frame.last_seq) else {
            if i == 0 {
                return Err(not_this_trails(
                    "its records do not chain onto the trail",
                    frame,
                ));
            }
            break;
        };
        if let Some(payload) = &read.payload {
            if replaces_a_record(trail, plan.end, payload)? {
                return Err(not_this_trails(
                    "its records differ from records the trail holds",
                    frame,
                ));
            }
            plan.writes.push(read);
        }
        (plan.end, plan.seq, plan.hash) = (frame.trail_end(), seq, hash);
    }
    Ok(plan)
}

/// The record the first frame's first record follows: the trail's line ending where the
/// frame starts, or at the start of the file the newest rotated file's last record (none:
/// the chain's start, or, past seq 1, rotated files moved away, when only the file's own
/// first record can say what it follows). `None` when the trail holds no such record.
fn predecessor(
    active: &Path,
    trail: &File,
    frames: &[ReadFrame],
) -> io::Result<Option<(u64, [u8; 32])>> {
    let Some(frame) = frames.first().map(|f| &f.frame) else {
        return Ok(None);
    };
    if frame.trail_offset > 0 {
        return Ok(line_ending_at(trail, frame.trail_offset)?.and_then(|line| seq_and_hash(&line)));
    }
    if frame.first_seq != frame.file_first_seq {
        return Ok(None);
    }
    let rotated = segments(active)?
        .into_iter()
        .rev()
        .find(|s| s.first_seq.is_some());
    let Some(rotated) = rotated else {
        if frame.first_seq == 1 {
            return Ok(Some((0, crate::audit::chain::GENESIS)));
        }
        let named = frames
            .iter()
            .find(|f| f.frame.trail_offset == 0 && f.payload.is_some())
            .and_then(|f| f.payload.as_deref())
            .and_then(|p| p.split(|b| *b == b'\n').next())
            .and_then(prev_of)
            .and_then(|hex_hash| hex::decode(hex_hash).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
        return Ok(named.map(|hash| (frame.first_seq - 1, hash)));
    };
    Ok(last_line(&rotated.path)?.and_then(|line| seq_and_hash(&line)))
}

/// The chain continued through `payload`'s lines from `seq` and `hash`, if every one
/// continues it (and the last ends with its newline).
fn chain_through(payload: &[u8], mut seq: u64, mut hash: [u8; 32]) -> Option<(u64, [u8; 32])> {
    let body = payload.strip_suffix(b"\n")?;
    for line in body.split(|b| *b == b'\n') {
        let (next, next_hash) = seq_and_hash(line)?;
        if next != seq + 1 || prev_of(line)? != hex::encode(hash) {
            return None;
        }
        (seq, hash) = (next, next_hash);
    }
    Some((seq, hash))
}

/// Whether writing `payload` at `at` would replace a record the trail holds with another:
/// line by line, the first line that differs from the frame's is a record (not garbage
/// from lost pages or a torn write). The trail is append-only, so a place holds one record
/// in its life: another one there is another trail's.
fn replaces_a_record(trail: &File, at: u64, payload: &[u8]) -> io::Result<bool> {
    let mut reader = BufReader::new(trail);
    reader.seek(SeekFrom::Start(at))?;
    let mut line = Vec::new();
    for wanted in payload.split_inclusive(|b| *b == b'\n') {
        line.clear();
        (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
        if line == wanted {
            continue;
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        return Ok(seq_and_hash(body).is_some() && prev_of(body).is_some());
    }
    Ok(false)
}

fn holds(trail: &File, offset: u64, payload: &[u8], buf: &mut Vec<u8>) -> bool {
    buf.resize(payload.len(), 0);
    trail.read_exact_at(buf, offset).is_ok() && buf == payload
}

/// The line (without its newline) that ends at `end`, if the byte before `end` is one.
fn line_ending_at(trail: &File, end: u64) -> io::Result<Option<Vec<u8>>> {
    if end == 0 || end > trail.metadata()?.len() {
        return Ok(None);
    }
    let mut newline = [0u8];
    trail.read_exact_at(&mut newline, end - 1)?;
    if newline[0] != b'\n' {
        return Ok(None);
    }
    let body_end = end - 1;
    let mut window = 64 * 1024u64;
    loop {
        let start = body_end.saturating_sub(window);
        let mut bytes = vec![0u8; (body_end - start) as usize];
        trail.read_exact_at(&mut bytes, start)?;
        if let Some(i) = bytes.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(bytes.split_off(i + 1)));
        }
        if start == 0 {
            return Ok(Some(bytes));
        }
        if window >= MAX_LINE {
            return Ok(None);
        }
        window *= 4;
    }
}

/// How far the trail's lines from `start` on continue the chain that `seq` and `hash` end
/// (not past `limit`): where they stop, and the chain's end there.
fn chained(
    trail: &File,
    start: u64,
    mut seq: u64,
    mut hash: [u8; 32],
    limit: Option<u64>,
) -> io::Result<(u64, u64, [u8; 32])> {
    let mut reader = BufReader::new(trail);
    reader.seek(SeekFrom::Start(start))?;
    let mut end = start;
    let mut line = Vec::new();
    while limit.is_none_or(|limit| end < limit) {
        line.clear();
        (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
        if line.pop() != Some(b'\n') {
            break;
        }
        let prev = hex::encode(hash);
        match seq_and_hash(&line) {
            Some((next, next_hash))
                if next == seq + 1 && prev_of(&line).as_deref() == Some(prev.as_str()) =>
            {
                (seq, hash) = (next, next_hash);
                end += line.len() as u64 + 1;
            }
            _ => break,
        }
    }
    Ok((end, seq, hash))
}

/// A record line's `seq` and hash; `None` for anything that is not a record.
fn seq_and_hash(line: &[u8]) -> Option<(u64, [u8; 32])> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let seq = value.get("seq")?.as_u64()?;
    (seq < u64::MAX / 2).then(|| (seq, line_hash(line)))
}

fn prev_of(line: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    Some(value.get("prev")?.as_str()?.to_owned())
}
