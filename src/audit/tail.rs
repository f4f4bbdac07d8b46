//! Following the trail as it grows, across rotations: for the live stream of the API and
//! for anything else that reads records as they are written. It keeps its place by
//! sequence number, so a reader never sees a record twice, and by file handle and offset,
//! so it reads each byte once.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::reader::open_segments;
use super::AuditError;

pub struct Tail {
    active: PathBuf,
    /// Files still to read, oldest first; the front one is being read.
    files: VecDeque<(PathBuf, File)>,
    /// Bytes of a line not yet finished by the writer.
    partial: Vec<u8>,
    /// The last sequence number handed out.
    after_seq: u64,
}

impl Tail {
    /// Follows the trail whose active file is `active`, from the record after `after_seq`
    /// (from the beginning when `None`).
    pub fn new(active: &Path, after_seq: Option<u64>) -> Tail {
        Tail {
            active: active.to_owned(),
            files: VecDeque::new(),
            partial: Vec::new(),
            after_seq: after_seq.unwrap_or(0),
        }
    }

    /// Every complete record written since the last call, in order.
    pub fn read_new(&mut self) -> Result<Vec<serde_json::Value>, AuditError> {
        let mut out = Vec::new();
        if self.files.is_empty() {
            self.files = open_segments(&self.active, Some(self.after_seq))?.into();
        }
        while let Some(path) = self.read_front(&mut out)? {
            if self.files.len() > 1 {
                self.files.pop_front();
                self.partial.clear();
                continue;
            }
            if !self.rotated_away(&path)? {
                break;
            }
            // The writer renamed this file and started a new one: whatever it wrote before
            // the rename is read first, then the files as they are named now.
            self.read_front(&mut out)?;
            self.partial.clear();
            self.files = open_segments(&self.active, Some(self.after_seq))?.into();
        }
        Ok(out)
    }

    /// Reads the file in front to its end; returns its path, or `None` without files.
    fn read_front(
        &mut self,
        out: &mut Vec<serde_json::Value>,
    ) -> Result<Option<PathBuf>, AuditError> {
        let Tail {
            files,
            partial,
            after_seq,
            ..
        } = self;
        let Some((path, file)) = files.front_mut() else {
            return Ok(None);
        };
        read_lines(file, path, partial, &mut |record| {
            let Some(seq) = record.get("seq").and_then(|s| s.as_u64()) else {
                return;
            };
            if seq > *after_seq {
                *after_seq = seq;
                out.push(record);
            }
        })?;
        Ok(Some(path.clone()))
    }

    /// Whether the file being read is no longer the active file (it was rotated).
    fn rotated_away(&self, path: &Path) -> Result<bool, AuditError> {
        let Some((_, file)) = self.files.front() else {
            return Ok(false);
        };
        if path != self.active {
            return Ok(false);
        }
        let ours = file.metadata().map_err(|e| io_error(path, e))?.ino();
        match std::fs::metadata(&self.active) {
            Ok(now) => Ok(now.ino() != ours),
            // Between the rename and the new file's creation.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(&self.active, e)),
        }
    }
}

/// Reads `file` from where it stands to its end, handing out each complete JSON line.
fn read_lines(
    file: &mut File,
    path: &Path,
    partial: &mut Vec<u8>,
    accept: &mut dyn FnMut(serde_json::Value),
) -> Result<(), AuditError> {
    let mut chunk = Vec::new();
    file.read_to_end(&mut chunk)
        .map_err(|e| io_error(path, e))?;
    partial.extend_from_slice(&chunk);
    let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
        return Ok(());
    };
    for line in partial[..end].split(|b| *b == b'\n') {
        if let Ok(record) = serde_json::from_slice(line) {
            accept(record);
        }
    }
    partial.drain(..=end);
    Ok(())
}

fn io_error(path: &Path, e: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
