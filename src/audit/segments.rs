//! Where the audit trail lives on disk: the active file the writer appends to, and the
//! rotated files beside it. A rotated file is named after the sequence number of its first
//! record (`audit-000000000001.jsonl` for an active `audit.jsonl`), so sorting by name is
//! sorting by sequence, and the chain continues from one file into the next.

use std::path::{Path, PathBuf};

/// Digits of the sequence number in a rotated file's name (zero-padded so names sort).
const SEQ_DIGITS: usize = 12;

/// The name a file rotated out of `active` gets when its first record is `first_seq`.
pub fn rotated_name(active: &Path, first_seq: u64) -> PathBuf {
    let (stem, ext) = stem_and_ext(active);
    active.with_file_name(format!("{stem}-{first_seq:0SEQ_DIGITS$}{ext}"))
}

/// A rotated file's first sequence number, if `candidate` is a file rotated out of `active`.
pub fn rotated_first_seq(active: &Path, candidate: &Path) -> Option<u64> {
    let (stem, ext) = stem_and_ext(active);
    let name = candidate.file_name()?.to_str()?;
    let digits = name.strip_prefix(&stem)?.strip_prefix('-')?;
    let digits = digits.strip_suffix(ext.as_str())?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One file of the trail and the first sequence number its name promises (`None` for the
/// active file, whose first record is whatever follows the last rotated file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub path: PathBuf,
    pub first_seq: Option<u64>,
}

/// Every file of the trail whose active file is `active`, oldest first, the active file
/// last (when it exists). A missing folder is an empty trail.
pub fn segments(active: &Path) -> std::io::Result<Vec<Segment>> {
    let dir = match active.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if let Some(first_seq) = rotated_first_seq(active, &path) {
            out.push(Segment {
                path,
                first_seq: Some(first_seq),
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    if active.exists() {
        out.push(Segment {
            path: active.to_owned(),
            first_seq: None,
        });
    }
    Ok(out)
}

/// The segments that can hold records with a sequence number above `after_seq`: a rotated
/// file is skipped when the next one already starts at or before `after_seq + 1`.
pub fn segments_after(active: &Path, after_seq: Option<u64>) -> std::io::Result<Vec<Segment>> {
    let all = segments(active)?;
    let Some(after) = after_seq else {
        return Ok(all);
    };
    let mut keep = Vec::with_capacity(all.len());
    for (i, segment) in all.iter().enumerate() {
        let next_first = all.get(i + 1).and_then(|n| n.first_seq);
        if next_first.is_some_and(|n| n <= after + 1) {
            continue;
        }
        keep.push(segment.clone());
    }
    Ok(keep)
}

fn stem_and_ext(active: &Path) -> (String, String) {
    let stem = active
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into());
    let ext = active
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (stem, ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_files_sort_by_sequence_and_the_active_file_comes_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let active = dir.path().join("audit.jsonl");
        for seq in [1001, 1, 20] {
            std::fs::write(rotated_name(&active, seq), "").expect("write");
        }
        std::fs::write(&active, "").expect("write");
        std::fs::write(dir.path().join("audit-12.jsonl"), "").expect("write");
        std::fs::write(dir.path().join("other-000000000005.jsonl"), "").expect("write");
        let found: Vec<Option<u64>> = segments(&active)
            .expect("segments")
            .iter()
            .map(|s| s.first_seq)
            .collect();
        assert_eq!(found, vec![Some(1), Some(20), Some(1001), None]);
        let after: Vec<Option<u64>> = segments_after(&active, Some(500))
            .expect("segments")
            .iter()
            .map(|s| s.first_seq)
            .collect();
        assert_eq!(after, vec![Some(20), Some(1001), None]);
    }
}
