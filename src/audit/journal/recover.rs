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

use super::{path_for, read_frames, ReadFrame};
use crate::audit::chain::line_hash;
use crate::audit::segments::rotated_name;

/// Longest line recovery reads (a record is at most `audit.max_record_bytes` plus its
/// header and escapes); past it, bytes are not a record.
const MAX_LINE: u64 = 64 << 20;

/// What [`recover`] wrote back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Records whose bytes the trail did not hold as written.
    pub(crate) records: u64,
    /// Bytes cut after the last record that continues the chain.
    pub(crate) cut_bytes: u64,
}

/// Writes the journal's newest run of frames back into the trail's active file, cuts what
/// follows the last record that continues the chain, and fdatasyncs: the trail then holds
/// every record that was made durable through the journal. Idempotent; a missing or empty
/// journal changes nothing. A journal that does not continue the trail is an error (it is
/// not written back, and lockbox does not start on it).
pub(crate) fn recover(active: &Path) -> io::Result<Recovered> {
    let run = frames_of(active)?;
    let Some(last) = run.last() else {
        return Ok(Recovered::default());
    };
    let trail = crate::private_files::open_options()
        .create(true)
        .read(true)
        .write(true)
        .open(active)?;
    check_continues(active, &trail, &run)?;
    let mut recovered = Recovered::default();
    let mut on_disk = Vec::new();
    for read in &run {
        let Some(payload) = &read.payload else {
            continue;
        };
        if !holds(&trail, read.frame.trail_offset, payload, &mut on_disk) {
            recovered.records += read.frame.records();
        }
        trail.write_all_at(payload, read.frame.trail_offset)?;
    }
    let end = last.frame.trail_end();
    let kept = match line_ending_at(&trail, end)?.and_then(|line| seq_and_hash(&line)) {
        Some((seq, hash)) => chained_end(&trail, end, seq, hash)?,
        None => end,
    };
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
    let run = frames_of(active)?;
    if run.is_empty() {
        return Ok(0);
    }
    let trail = match File::open(active) {
        Ok(trail) => trail,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(run
                .iter()
                .filter(|f| f.payload.is_some())
                .map(|f| f.frame.records())
                .sum())
        }
        Err(e) => return Err(e),
    };
    check_continues(active, &trail, &run)?;
    let mut on_disk = Vec::new();
    Ok(run
        .iter()
        .filter(|read| {
            read.payload
                .as_ref()
                .is_some_and(|p| !holds(&trail, read.frame.trail_offset, p, &mut on_disk))
        })
        .map(|read| read.frame.records())
        .sum())
}

/// The journal's newest run of frames for the trail's active file, from its first frame
/// with bytes (a frame without bytes stands for records already synced in the trail).
fn frames_of(active: &Path) -> io::Result<Vec<ReadFrame>> {
    let journal = match File::open(path_for(active)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let half = journal.metadata()?.len() / 2;
    let mut frames = Vec::new();
    read_frames(&journal, 0, half, &mut frames)?;
    read_frames(&journal, half, 2 * half, &mut frames)?;
    let mut run = newest_run(frames);
    let leading_markers = run.iter().take_while(|f| f.payload.is_none()).count();
    run.drain(..leading_markers);
    match run.first() {
        // The frames are of a file since rotated, which was made durable before its rename.
        Some(first) if rotated_name(active, first.frame.file_first_seq).exists() => Ok(Vec::new()),
        _ => Ok(run),
    }
}

/// The newest run of frames: those written in the same run of the writer and to the same
/// trail file as the newest one, back from it as far as each continues the one before.
fn newest_run(mut frames: Vec<ReadFrame>) -> Vec<ReadFrame> {
    let Some(newest) = frames.iter().max_by_key(|f| f.frame.first_seq) else {
        return Vec::new();
    };
    let (run_id, file) = (newest.run_id, newest.frame.file_first_seq);
    frames.retain(|f| f.run_id == run_id && f.frame.file_first_seq == file);
    frames.sort_by_key(|f| f.frame.first_seq);
    let mut run: Vec<ReadFrame> = Vec::new();
    while let Some(candidate) = frames.pop() {
        let continues = |after: &ReadFrame| {
            candidate.frame.last_seq + 1 == after.frame.first_seq
                && candidate.frame.trail_end() == after.frame.trail_offset
        };
        match run.last() {
            None => run.push(candidate),
            Some(after) if continues(after) => run.push(candidate),
            Some(_) => {}
        }
    }
    run.reverse();
    run
}

/// The run's first record must follow what the trail holds before it: at the start of
/// the file nothing or the same record, further in a record whose hash it names as `prev`.
/// Otherwise the journal is of another trail (replaced, restored, forged): refused.
fn check_continues(active: &Path, trail: &File, run: &[ReadFrame]) -> io::Result<()> {
    let Some((first, payload)) = run.first().and_then(|f| Some((f, f.payload.as_ref()?))) else {
        return Ok(());
    };
    let first_line = payload.split(|b| *b == b'\n').next().unwrap_or_default();
    let offset = first.frame.trail_offset;
    let continues = if offset == 0 {
        match line_starting_at(trail, 0)? {
            Some(line) if seq_and_hash(&line).is_some() => line == first_line,
            _ => true,
        }
    } else {
        let wanted = line_ending_at(trail, offset)?.map(|line| hex::encode(line_hash(&line)));
        wanted.is_some() && prev_of(first_line) == wanted
    };
    if continues {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "the audit journal {} does not continue the trail {}: its records start at byte {offset} with seq {}, after no record the trail holds. It is not written back; keep a copy of it and move it aside to start",
        path_for(active).display(),
        active.display(),
        first.frame.first_seq,
    )))
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

/// The whole line (without its newline) that starts at `start`, if it ends in one.
fn line_starting_at(trail: &File, start: u64) -> io::Result<Option<Vec<u8>>> {
    let mut reader = BufReader::new(trail);
    reader.seek(SeekFrom::Start(start))?;
    let mut line = Vec::new();
    reader.take(MAX_LINE).read_until(b'\n', &mut line)?;
    Ok(line.pop().filter(|b| *b == b'\n').map(|_| line))
}

/// Where the records from `start` on stop continuing the chain that `seq` and `hash` end.
fn chained_end(trail: &File, start: u64, mut seq: u64, mut hash: [u8; 32]) -> io::Result<u64> {
    let mut reader = BufReader::new(trail);
    reader.seek(SeekFrom::Start(start))?;
    let mut end = start;
    let mut line = Vec::new();
    loop {
        line.clear();
        (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
        if line.pop() != Some(b'\n') {
            return Ok(end);
        }
        let prev = hex::encode(hash);
        match seq_and_hash(&line) {
            Some((next, next_hash))
                if next == seq + 1 && prev_of(&line).as_deref() == Some(prev.as_str()) =>
            {
                (seq, hash) = (next, next_hash);
                end += line.len() as u64 + 1;
            }
            _ => return Ok(end),
        }
    }
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
