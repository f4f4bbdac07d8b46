//! The audit file on disk: where its chain continues after a restart or a failed write,
//! and the exact bytes of one record line.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::chain::{line_hash, GENESIS};
use super::segments::segments;

/// `{"seq":N,"time":"…","prev":"<hex>",<fields>}\n` where `fields` is a serialized JSON
/// object (`{…}`) whose members follow the header; returns the line's hash. The header is
/// written by hand: the chain needs it first, and it is the same for every record.
pub(super) fn encode_line(
    buf: &mut Vec<u8>,
    seq: u64,
    time: &str,
    prev: &[u8; 32],
    fields: &[u8],
) -> [u8; 32] {
    let start = buf.len();
    buf.extend_from_slice(b"{\"seq\":");
    super::encode::u64_decimal(buf, seq);
    buf.extend_from_slice(b",\"time\":\"");
    buf.extend_from_slice(time.as_bytes());
    buf.extend_from_slice(b"\",\"prev\":\"");
    let mut hex = [0u8; 64];
    let _ = hex::encode_to_slice(prev, &mut hex);
    buf.extend_from_slice(&hex);
    buf.push(b'"');
    if fields.len() > 2 {
        buf.push(b',');
        buf.extend_from_slice(&fields[1..fields.len() - 1]);
    }
    buf.push(b'}');
    let hash = line_hash(&buf[start..]);
    buf.push(b'\n');
    hash
}

/// Where the chain continues: the last record of the active file, or, when it holds none
/// yet (just rotated), the last record of the newest rotated file.
pub(super) fn chain_tail(active: &Path, file: &mut File) -> std::io::Result<(u64, [u8; 32])> {
    let tail = recover_tail(file)?;
    if tail.0 > 0 {
        return Ok(tail);
    }
    let rotated = segments(active)?
        .into_iter()
        .rev()
        .find(|s| s.first_seq.is_some());
    match rotated {
        Some(segment) => {
            let mut previous = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&segment.path)?;
            recover_tail(&mut previous)
        }
        None => Ok(tail),
    }
}

/// The sequence number of the file's first record, if it has one.
pub(super) fn first_seq_of(file: &mut File) -> std::io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(0))?;
    let mut first = Vec::new();
    std::io::BufRead::read_until(&mut std::io::BufReader::new(&mut *file), b'\n', &mut first)?;
    Ok(serde_json::from_slice::<serde_json::Value>(&first)
        .ok()
        .and_then(|v| v.get("seq").and_then(|s| s.as_u64())))
}

/// Makes a rename in the file's folder durable.
pub(super) fn sync_dir(path: &Path) {
    if let Err(e) = try_sync_dir(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not fsync the audit folder");
    }
}

/// Fsyncs the folder `path` is in, so that a name just given or taken in it is on disk.
pub(super) fn try_sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir).and_then(|d| d.sync_all()).inspect(|()| {
            #[cfg(test)]
            FOLDER_SYNCS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(dir.to_owned());
        }),
        None => Ok(()),
    }
}

/// Tests only: every folder fsynced successfully, in order (so a simulated power cut knows
/// which names in a folder are on disk).
#[cfg(test)]
pub(super) static FOLDER_SYNCS: std::sync::Mutex<Vec<std::path::PathBuf>> =
    std::sync::Mutex::new(Vec::new());

/// Drops a torn final record (a crash mid-write) and returns the last record's sequence
/// number and hash, where the chain continues.
pub(super) fn recover_tail(file: &mut File) -> std::io::Result<(u64, [u8; 32])> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok((0, GENESIS));
    }
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        let complete_end = tail.iter().rposition(|b| *b == b'\n').map(|i| i + 1);
        match complete_end {
            Some(end) => {
                if start + (end as u64) < len {
                    tracing::warn!(
                        bytes = len - start - end as u64,
                        "truncating a torn audit record"
                    );
                    file.set_len(start + end as u64)?;
                }
                let body = &tail[..end - 1];
                let line_start = body.iter().rposition(|b| *b == b'\n').map(|i| i + 1);
                if line_start.is_none() && start > 0 {
                    window *= 4;
                    continue;
                }
                let line = &body[line_start.unwrap_or(0)..];
                let seq = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("seq").and_then(|s| s.as_u64()))
                    .unwrap_or(0);
                return Ok((seq, line_hash(line)));
            }
            None if start == 0 => {
                // No complete record at all: the whole file is one torn write.
                file.set_len(0)?;
                return Ok((0, GENESIS));
            }
            None => window *= 4,
        }
    }
}

/// Starts the writeback of `len` bytes of `file` from `from` to the disk, without waiting
/// for it: a later fdatasync then finds them written or on their way, where it would
/// write them all at once, in a burst the journal's syncs queue behind (PostgreSQL's
/// `wal_writer_flush_after` does the same for its WAL). Errors are left for that
/// fdatasync to report.
#[cfg(target_os = "linux")]
pub(super) fn start_writeback(file: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(from), Ok(len)) = (libc::off64_t::try_from(from), libc::off64_t::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the whole call; sync_file_range touches no memory.
    let _ =
        unsafe { libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
pub(super) fn start_writeback(_file: &File, _from: u64, _len: u64) {}

/// Takes the trail's lock (`<trail>.lock`, an exclusive `flock` held for as long as the
/// returned file is open): one process writes a trail. A second `lockbox serve` on the same
/// audit folder used to start, recreate the journal the first was syncing and leave the
/// first refusing every statement (an attack review).
pub fn lock_trail(active: &Path) -> Result<File, super::AuditError> {
    let mut name = active.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let error = |message: String| super::AuditError::Io {
        path: path.display().to_string(),
        message,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::private_files::create_dir_all(dir).map_err(|e| error(e.to_string()))?;
    }
    let mut options = crate::private_files::open_options();
    options.create(true).read(true).write(true);
    let file = crate::private_files::open_own_file(&path, &mut options)
        .map_err(|e| error(e.to_string()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked == 0 {
        return Ok(file);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        return Err(error(format!(
            "the audit trail {} is being written by another lockbox process (it holds this lock); one process writes a trail",
            active.display()
        )));
    }
    Err(error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_record_is_cut_and_the_chain_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut good = Vec::new();
        let h1 = encode_line(&mut good, 1, "t", &GENESIS, br#"{"type":"x"}"#);
        std::fs::write(&path, [&good[..], b"{\"seq\":2,\"time\":\"tor"].concat()).expect("write");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .expect("open");
        let (seq, hash) = recover_tail(&mut file).expect("recover");
        assert_eq!((seq, hash), (1, h1));
        assert_eq!(std::fs::read(&path).expect("read"), good);
    }

    #[test]
    fn one_process_at_a_time_holds_a_trail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let held = lock_trail(&path).expect("first");
        let refused = lock_trail(&path).expect_err("second");
        assert!(
            refused.to_string().contains("another lockbox process"),
            "{refused}"
        );
        drop(held);
        lock_trail(&path).expect("free again");
    }
}
