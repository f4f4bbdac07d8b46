//! Checking an export on its own: every file the manifest lists is there with its size and
//! SHA-256, holds the records it claims in the partition it sits in, no file was added,
//! the records still chain (`prev`) wherever their sequence numbers are consecutive, and
//! the manifest's signature holds. Each problem is a sentence naming the file.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::columns::{csv_header, parse_csv, COLUMNS, RECORD_COLUMN};
use super::manifest::{public_key, FileEntry, Manifest, MANIFEST_FILE};
use super::{partition_dir, ExportFormat};
use crate::audit::chain::line_hash;

/// What `verify_export` found in one run folder.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub path: PathBuf,
    pub manifest: Option<Manifest>,
    /// Records read back from the files.
    pub records: u64,
    pub files: usize,
    pub signature_verified: bool,
    pub problems: Vec<String>,
}

impl ExportReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Every run found under a target folder, and problems between runs of one schedule.
#[derive(Debug, Default)]
pub struct ExportsReport {
    pub runs: Vec<ExportReport>,
    pub problems: Vec<String>,
}

impl ExportsReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.runs.iter().all(ExportReport::ok)
    }
}

/// Verifies `dir`: one run (it holds `manifest.json`) or a target holding runs, in which
/// case runs of the same schedule must also follow one another without gap or overlap.
/// A folder inside holding runs rather than being one is a node's (several nodes on one
/// state store each export their own trail into `<target>/<node id>`): its runs are
/// checked as one trail's, apart from the other nodes'.
/// Err only for an unusable public key or an unreadable folder.
pub fn verify_exports(dir: &Path, public_key_pem: Option<&str>) -> Result<ExportsReport, String> {
    let key = public_key_pem.map(public_key).transpose()?;
    let mut report = ExportsReport::default();
    if dir.join(MANIFEST_FILE).exists() {
        report.runs.push(verify_run(dir, key.as_ref()));
        return Ok(report);
    }
    let mut own = Vec::new();
    for folder in folders_in(dir)? {
        if is_node_folder(&folder) {
            let node = verify_runs(key.as_ref(), folders_in(&folder)?);
            report.problems.extend(node.problems);
            report.runs.extend(node.runs);
        } else {
            own.push(folder);
        }
    }
    let flat = verify_runs(key.as_ref(), own);
    report.problems.extend(flat.problems);
    report.runs.extend(flat.runs);
    if report.runs.is_empty() {
        report.problems.push(format!(
            "{}: no {MANIFEST_FILE} here or in any folder inside: not an export",
            dir.display()
        ));
    }
    Ok(report)
}

/// The runs `folders` of one trail, each verified, and their continuity.
fn verify_runs(key: Option<&VerifyingKey>, folders: Vec<PathBuf>) -> ExportsReport {
    let runs: Vec<ExportReport> = folders.iter().map(|run| verify_run(run, key)).collect();
    ExportsReport {
        problems: continuity_problems(&runs),
        runs,
    }
}

/// The folders inside `dir` that are not hidden (staging), sorted.
fn folders_in(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !is_hidden(p))
        .collect();
    folders.sort();
    Ok(folders)
}

/// A node's folder: not a run itself, but holding at least one.
fn is_node_folder(folder: &Path) -> bool {
    !folder.join(MANIFEST_FILE).exists()
        && std::fs::read_dir(folder).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| !is_hidden(&e.path()) && e.path().join(MANIFEST_FILE).exists())
        })
}

/// Verifies one run folder.
pub fn verify_export(dir: &Path, public_key_pem: Option<&str>) -> Result<ExportReport, String> {
    let key = public_key_pem.map(public_key).transpose()?;
    Ok(verify_run(dir, key.as_ref()))
}

fn verify_run(dir: &Path, key: Option<&VerifyingKey>) -> ExportReport {
    let mut report = ExportReport {
        path: dir.to_owned(),
        ..Default::default()
    };
    let manifest = match read_manifest(dir) {
        Ok(m) => m,
        Err(problem) => {
            report.problems.push(problem);
            return report;
        }
    };
    if let Some(key) = key {
        match manifest.check_signature(key) {
            Ok(()) => report.signature_verified = true,
            Err(problem) => report.problems.push(format!("{MANIFEST_FILE}: {problem}")),
        }
    }
    let mut all: Vec<(u64, String, String)> = Vec::new();
    for entry in &manifest.files {
        match check_file(dir, entry, manifest.format, &mut report.problems) {
            Some(records) => all.extend(
                records
                    .into_iter()
                    .map(|(seq, line)| (seq, line, entry.path.clone())),
            ),
            None => continue,
        }
        report.files += 1;
    }
    report.problems.extend(unlisted_files(dir, &manifest));
    report.records = all.len() as u64;
    check_selection(&manifest, &all, &mut report.problems);
    check_chain(&manifest, &mut all, &mut report.problems);
    if let Some(key) = key {
        check_checkpoints(key, &all, &mut report.problems);
    }
    report.manifest = Some(manifest);
    report
}

/// Largest manifest read (one lists a run's part files: a few hundred bytes each).
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// A file of the export, read only if it is a regular file of at most `limit` bytes: a FIFO
/// in a part's place made `verify-export` wait forever, a link to `/dev/zero` read until
/// memory ran out (an attack review).
fn read_export_file(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = crate::audit::chain::open_regular_file(path)?;
    let len = file.metadata()?.len();
    if len > limit {
        return Err(std::io::Error::other(format!(
            "{len} bytes, more than the {limit} it may hold"
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = read_export_file(&path, MAX_MANIFEST_BYTES).map_err(|e| {
        format!(
            "{}: cannot read the manifest ({e}): not an export, or the manifest was deleted",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{}: not a lockbox export manifest ({e}): the manifest was altered",
            path.display()
        )
    })
}

/// Checks one listed file; its records as (seq, original line) if they could be read.
fn check_file(
    dir: &Path,
    entry: &FileEntry,
    format: ExportFormat,
    problems: &mut Vec<String>,
) -> Option<Vec<(u64, String)>> {
    let name = &entry.path;
    let relative = Path::new(name);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        problems.push(format!(
            "{name}: the manifest names a path outside the export"
        ));
        return None;
    }
    let path = dir.join(relative);
    let bytes = match read_export_file(&path, entry.bytes) {
        Ok(b) => b,
        Err(e) => {
            problems.push(format!(
                "{name}: missing, unreadable or too large ({e}): the file was deleted or changed"
            ));
            return None;
        }
    };
    if bytes.len() as u64 != entry.bytes {
        problems.push(format!(
            "{name}: {} bytes, the manifest says {}: the file was changed",
            bytes.len(),
            entry.bytes
        ));
    }
    let sha = hex::encode(Sha256::digest(&bytes));
    if sha != entry.sha256 {
        problems.push(format!(
            "{name}: SHA-256 {sha} does not match the manifest's {}: the file was changed",
            entry.sha256
        ));
    }
    let records = match read_part(&bytes, format) {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!(
                "{name}: cannot be read as {}: {e}",
                format.as_str()
            ));
            return None;
        }
    };
    let seqs: Vec<u64> = records.iter().map(|r| r.0).collect();
    let (first, last) = (seqs.first().copied(), seqs.last().copied());
    if seqs.len() as u64 != entry.records
        || first != Some(entry.first_seq)
        || last != Some(entry.last_seq)
    {
        problems.push(format!(
            "{name}: holds {} record(s), seq {}..{}; the manifest says {}, seq {}..{}",
            seqs.len(),
            first.map_or("-".into(), |s| s.to_string()),
            last.map_or("-".into(), |s| s.to_string()),
            entry.records,
            entry.first_seq,
            entry.last_seq
        ));
    }
    if seqs.windows(2).any(|w| w[1] <= w[0]) {
        problems.push(format!("{name}: records are not in sequence order"));
    }
    Some(records)
}

/// A part's records as (seq, original line). The seq is the record's own; for CSV and
/// Parquet the `seq` column must agree with it.
fn read_part(bytes: &[u8], format: ExportFormat) -> Result<Vec<(u64, String)>, String> {
    let lines: Vec<(Option<u64>, String)> = match format {
        ExportFormat::Jsonl => {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            if text.is_empty() {
                Vec::new()
            } else {
                let body = text
                    .strip_suffix('\n')
                    .ok_or("the last line is incomplete")?;
                body.split('\n').map(|l| (None, l.to_owned())).collect()
            }
        }
        ExportFormat::Csv => {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            let mut rows = parse_csv(text)?.into_iter();
            if rows.next().map(|h| h.join(",") + "\r\n") != Some(csv_header()) {
                return Err("the header is not the export's column list".into());
            }
            rows.map(|row| {
                if row.len() != COLUMNS.len() {
                    return Err(format!(
                        "a row has {} fields, not {}",
                        row.len(),
                        COLUMNS.len()
                    ));
                }
                Ok((row[0].parse().ok(), row[RECORD_COLUMN].clone()))
            })
            .collect::<Result<_, String>>()?
        }
        ExportFormat::Parquet => super::parquet::read_rows_of_bytes(bytes)?
            .into_iter()
            .map(|r| (r.seq, r.record.unwrap_or_default()))
            .collect(),
    };
    let mut out = Vec::with_capacity(lines.len());
    for (i, (column_seq, line)) in lines.into_iter().enumerate() {
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| format!("record {} is not JSON ({e})", i + 1))?;
        let seq = value
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or(format!("record {} has no seq", i + 1))?;
        if format != ExportFormat::Jsonl && column_seq != Some(seq) {
            return Err(format!(
                "row {}: the seq column does not match its record (seq {seq})",
                i + 1
            ));
        }
        out.push((seq, line));
    }
    Ok(out)
}

/// Files in the run that the manifest does not list.
fn unlisted_files(dir: &Path, manifest: &Manifest) -> Vec<String> {
    let listed: BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    let mut found = Vec::new();
    walk(dir, dir, &mut found);
    found
        .into_iter()
        .filter(|f| f != MANIFEST_FILE && !listed.contains(f.as_str()))
        .map(|f| format!("{f}: not listed in the manifest: the file was added"))
        .collect()
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Not through links: a few links to `.` made the walk take forever.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &path, out);
        } else if let Ok(relative) = path.strip_prefix(root) {
            let parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
}

/// Each record sits in its own partition and matches the manifest's selection.
fn check_selection(manifest: &Manifest, all: &[(u64, String, String)], problems: &mut Vec<String>) {
    let selection = &manifest.selection;
    for (seq, line, file) in all {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
        if partition_dir(&value) != dir {
            problems.push(format!(
                "{file}: seq {seq} belongs in {}, not here",
                partition_dir(&value)
            ));
        }
        if selection.after_seq.is_some_and(|a| *seq <= a)
            || manifest.through_seq.is_some_and(|t| *seq > t)
        {
            problems.push(format!("{file}: seq {seq} is outside the exported range"));
        }
        if selection.database.is_some() && super::record_database(&value) != selection.database {
            problems.push(format!("{file}: seq {seq} is of another database"));
        }
    }
}

#[cfg(test)]
pub(super) fn check_chain_for_tests(
    manifest: &Manifest,
    all: &mut [(u64, String, String)],
    problems: &mut Vec<String>,
) {
    check_chain(manifest, all, problems);
}

/// Counts, duplicates and the hash chain across every file of the run.
fn check_chain(manifest: &Manifest, all: &mut [(u64, String, String)], problems: &mut Vec<String>) {
    all.sort_by_key(|r| r.0);
    for pair in all.windows(2) {
        if pair[0].0 == pair[1].0 {
            problems.push(format!(
                "seq {} is exported twice ({} and {})",
                pair[0].0, pair[0].2, pair[1].2
            ));
        } else if pair[0].0.checked_add(1) == Some(pair[1].0) {
            if prev_of(&pair[1].1) != hex::encode(line_hash(pair[0].1.as_bytes())) {
                problems.push(format!(
                    "{}: seq {} does not chain to seq {} in {}: a record was altered",
                    pair[1].2, pair[1].0, pair[0].0, pair[0].2
                ));
            }
        } else if manifest.selection.database.is_none() {
            // Every other selection (a time window, records after a watermark) is a run of
            // consecutive records: a gap is records taken out.
            problems.push(format!(
                "{}: seq {} follows seq {} in {}: {} record(s) are missing from an export of every record in its range",
                pair[1].2,
                pair[1].0,
                pair[0].0,
                pair[0].2,
                pair[1].0.saturating_sub(pair[0].0).saturating_sub(1)
            ));
        }
    }
    if all.len() as u64 != manifest.records {
        problems.push(format!(
            "the files hold {} record(s); the manifest says {}",
            all.len(),
            manifest.records
        ));
    }
    let (first, last) = (all.first(), all.last());
    if first.map(|r| r.0) != manifest.first_seq || last.map(|r| r.0) != manifest.last_seq {
        problems.push("the records' first or last seq differs from the manifest's".into());
    }
    if let Some(first) = first {
        if Some(prev_of(&first.1)) != manifest.first_prev {
            problems.push(format!(
                "{}: seq {}'s prev differs from the manifest's first_prev",
                first.2, first.0
            ));
        }
    }
    if let Some(last) = last {
        if Some(hex::encode(line_hash(last.1.as_bytes()))) != manifest.last_hash {
            problems.push(format!(
                "{}: seq {} does not hash to the manifest's last_hash: it was altered",
                last.2, last.0
            ));
        }
    }
}

/// With the deployment's key, every checkpoint the run holds must be signed by it and vouch
/// for the record before it (its `head` is that record's hash, which its own `prev` is too):
/// records rewritten and chained again before an export was made, which its manifest's
/// signature would cover, still fail here.
pub(super) fn check_checkpoints(
    key: &VerifyingKey,
    all: &[(u64, String, String)],
    problems: &mut Vec<String>,
) {
    for (seq, line, file) in all {
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if record.get("type").and_then(Value::as_str) != Some("checkpoint") {
            continue;
        }
        let head = record.get("head").and_then(Value::as_str).unwrap_or("");
        if !crate::audit::chain::checkpoint_signed(&record, key) || head != prev_of(line) {
            problems.push(format!(
                "{file}: the checkpoint at seq {seq} is not signed by this key for the records before it: they were altered"
            ));
        }
    }
}

fn prev_of(line: &str) -> String {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("prev").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

/// Runs of one schedule must cover the trail without gap or overlap: each starts where
/// the one before it ended.
fn continuity_problems(runs: &[ExportReport]) -> Vec<String> {
    let mut scheduled: Vec<(&str, u64, u64, &Path)> = runs
        .iter()
        .filter_map(|r| {
            let m = r.manifest.as_ref()?;
            let after = m.selection.after_seq?;
            Some((
                m.schedule.as_deref()?,
                after,
                m.through_seq?,
                r.path.as_path(),
            ))
        })
        .collect();
    scheduled.sort();
    let mut problems = Vec::new();
    for pair in scheduled.windows(2) {
        let ((name, _, through, path), (next_name, after, _, next_path)) = (pair[0], pair[1]);
        if name != next_name || after == through {
            continue;
        }
        let what = if after > through {
            format!("seq {}..{} are in neither (a gap)", through + 1, after)
        } else {
            format!("seq {}..{} are in both (an overlap)", after + 1, through)
        };
        problems.push(format!(
            "schedule {name}: {} ends at seq {through} but {} starts after seq {after}: {what}",
            path.display(),
            next_path.display()
        ));
    }
    problems
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}
