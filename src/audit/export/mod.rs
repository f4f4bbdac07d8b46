//! Exporting the audit trail: records of a time range (or after a schedule's watermark)
//! written as JSON Lines, CSV or Parquet, partitioned by date and database, with a signed
//! manifest. One run is written into a hidden folder inside the target and renamed into
//! place only when complete, so a failed run leaves nothing half-written behind.
//!
//! Layout: `TARGET/<run>/date=YYYY-MM-DD/database=DB/part-<first seq>.<ext>` and
//! `TARGET/<run>/manifest.json`. The run folder keeps runs apart, so schedules can write
//! into one target forever and each run stays atomic.

pub mod columns;
mod manifest;
mod parquet;
mod part;
mod verify;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use manifest::{public_key, FileEntry, Manifest, Selection, MANIFEST_FILE};
pub use parquet::{read_rows, ParquetRow};
#[cfg(test)]
use verify::check_chain_for_tests;
pub use verify::{verify_export, verify_exports, ExportReport, ExportsReport};

use super::chain::{line_hash, read_regular_file, ChainCheck, CheckpointSigner};
use super::witness::{self, Kept};
use part::PartWriter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Jsonl,
    Csv,
    Parquet,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
            ExportFormat::Parquet => "parquet",
        }
    }
}

impl FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jsonl" => Ok(ExportFormat::Jsonl),
            "csv" => Ok(ExportFormat::Csv),
            "parquet" => Ok(ExportFormat::Parquet),
            other => Err(format!(
                "unknown export format `{other}` (jsonl, csv or parquet)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export target {path}: {message}")]
    Target { path: String, message: String },
    #[error("audit trail {path}: {message}")]
    Source { path: String, message: String },
    #[error("an export already exists at {0}")]
    Exists(String),
    #[error("the export was cancelled; nothing was written")]
    Cancelled,
}

/// What to export and where.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The target folder; each run becomes one folder inside it.
    pub to: PathBuf,
    pub format: ExportFormat,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub database: Option<String>,
    /// Only records after this sequence number; set for scheduled runs, which then name
    /// their folder after the range (`seq-<from>-<through>`).
    pub after_seq: Option<u64>,
    pub schedule: Option<String>,
    pub created_by: String,
    /// What is known of the trail from outside its files, checked against the very bytes
    /// exported.
    pub witnessing: Witnessing,
}

/// The trail as vouched for outside its files: an export must not sign a trail that
/// `lockbox audit verify --config` would fail (an attack review exported, signed, a trail cut
/// after an older checkpoint, and one with records appended while lockbox was stopped).
#[derive(Debug, Clone, Default)]
pub struct Witnessing {
    /// Checkpoints witnessed outside the trail (the state store, the audit database), each
    /// with where it was kept.
    pub witnesses: Vec<(String, Kept)>,
    /// The SQLite state store that would hold the witness is gone: a trail with a
    /// checkpoint then cannot be told whole.
    pub store_missing: bool,
    /// Problems found outside the files (records only the journal holds).
    pub problems: Vec<String>,
}

/// How far a run has got.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub scanned: u64,
    pub exported: u64,
    /// Bytes of exported records (as in the trail).
    pub bytes: u64,
}

/// A completed run.
#[derive(Debug, Clone)]
pub struct ExportOutcome {
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// Progress is reported after this many records.
const PROGRESS_EVERY: u64 = 1000;

/// Runs one export of the trail whose active file is `active`. `Ok(None)`: the request
/// has `after_seq` and the trail holds nothing after it, so nothing was written.
pub fn export(
    active: &Path,
    request: &ExportRequest,
    signer: Option<&CheckpointSigner>,
    progress: &mut dyn FnMut(&Progress),
    cancel: &AtomicBool,
) -> Result<Option<ExportOutcome>, ExportError> {
    let target_error = |message: String| ExportError::Target {
        path: request.to.display().to_string(),
        message,
    };
    // Owner-only where lockbox makes the folder (an existing one is left as it is).
    crate::private_files::create_dir_all(&request.to).map_err(|e| target_error(e.to_string()))?;
    // Dropped (and removed) on every early return: a failed run leaves no trace.
    let staging = tempfile::Builder::new()
        .prefix(".lockbox-export-")
        .tempdir_in(&request.to)
        .map_err(|e| target_error(e.to_string()))?;
    // A temporary folder takes the umask's mode; the run folder it becomes is owner-only.
    std::fs::set_permissions(
        staging.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(|e| target_error(e.to_string()))?;
    let mut run = Run::new(request, staging.path());
    scan_checked(active, request, signer, |seq, line, value| {
        if cancel.load(Ordering::Relaxed) {
            return Err(ExportError::Cancelled);
        }
        run.take(seq, line, value)?;
        if run.progress.scanned % PROGRESS_EVERY == 0 {
            progress(&run.progress);
        }
        Ok(())
    })?;
    progress(&run.progress);
    if request.after_seq.is_some() && run.through_seq.is_none() {
        return Ok(None);
    }
    let created_at = Utc::now();
    let name = run_name(request, run.through_seq, created_at);
    let final_path = request.to.join(&name);
    if final_path.exists() {
        return Err(ExportError::Exists(final_path.display().to_string()));
    }
    let mut manifest = run.finish(request, created_at)?;
    if let Some(signer) = signer {
        manifest.sign(signer);
    }
    write_manifest(staging.path(), &manifest)?;
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, &final_path) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(target_error(format!("moving the run into place: {e}")));
    }
    sync_dir(&request.to);
    Ok(Some(ExportOutcome {
        path: final_path,
        manifest,
    }))
}

/// Scheduled runs are named after the range they cover, so a retry of the same range can
/// never land twice; one-off runs after their time.
fn run_name(request: &ExportRequest, through: Option<u64>, at: DateTime<Utc>) -> String {
    match request.after_seq {
        Some(after) => format!("seq-{:012}-{:012}", after + 1, through.unwrap_or(after)),
        None => format!("export-{}", at.format("%Y%m%dT%H%M%S%.6fZ")),
    }
}

/// The run prefix of a scheduled run that starts after `after_seq`.
pub fn scheduled_run_prefix(after_seq: u64) -> String {
    format!("seq-{:012}-", after_seq + 1)
}

/// Calls `f` with each complete record after `request.after_seq`, in order, and verifies
/// the whole trail in the same pass, from the same bytes: the chain, the sequence, with the
/// deployment's key every checkpoint's signature (as `lockbox audit verify` does), and the
/// witnessed checkpoints. What `f` wrote is thrown away unless all of it holds: an export
/// signs what it copies, and a check of one read followed by a copy of a second would sign
/// whatever was put in the files between the two (an attack review swapped a segment so).
/// A line still being written (no newline yet) ends the scan; it belongs to the next run.
fn scan_checked(
    active: &Path,
    request: &ExportRequest,
    signer: Option<&CheckpointSigner>,
    mut f: impl FnMut(u64, &[u8], &Value) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let source_error = |message: String| ExportError::Source {
        path: active.display().to_string(),
        message,
    };
    let files = super::segments::segments(active).map_err(|e| source_error(e.to_string()))?;
    let key = signer
        .map(CheckpointSigner::public_key_pem)
        .transpose()
        .map_err(source_error)?;
    // Live: the writer may be appending, and its tail is not signed yet.
    let mut chain = ChainCheck::new(key.as_deref(), true).map_err(source_error)?;
    let witnessing = &request.witnessing;
    let mut witnessed_found = vec![false; witnessing.witnesses.len()];
    for (index, segment) in files.iter().enumerate() {
        let path = &segment.path;
        let bytes = read_regular_file(path).map_err(|e| ExportError::Source {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        chain.file(
            &path.display().to_string(),
            &bytes,
            index + 1 == files.len(),
        );
        let whole = bytes
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |end| end + 1);
        for line in bytes[..whole]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            // A line that is no record is the chain's problem, reported below.
            let Ok(value) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            let Some(seq) = value.get("seq").and_then(Value::as_u64) else {
                continue;
            };
            for (found, (_, kept)) in witnessed_found.iter_mut().zip(&witnessing.witnesses) {
                *found |= kept.witness.seq == seq && line_hash(line) == kept.witness.hash;
            }
            if request.after_seq.is_none_or(|a| seq > a) {
                f(seq, line, &value)?;
            }
        }
    }
    let report = chain.finish();
    let mut problems = report.problems.clone();
    problems.extend(witnessing.problems.iter().cloned());
    if witnessing.store_missing && report.checkpoints > 0 {
        problems.push(
            "the state store that witnesses the last checkpoint is missing, so a trail cut after its last checkpoint could not be told from a whole one".into(),
        );
    }
    let last_file = files.last().map_or(active, |s| s.path.as_path());
    for (found, (by, kept)) in witnessed_found.into_iter().zip(&witnessing.witnesses) {
        if kept.witness.seq > 0 && !found {
            problems.push(format!(
                "the checkpoint at seq {} that {by} witnessed is not in the trail as it was: the trail was cut or rewritten",
                kept.witness.seq
            ));
        }
        let closed = witness::check_closed(kept, last_file, report.last_seq.unwrap_or(0))
            .and_then(|()| witness::check_closed_end(kept, last_file, report.partial_tail));
        if let Err(e) = closed {
            problems.push(e.to_string());
        }
    }
    match problems.first() {
        None => Ok(()),
        Some(first) => Err(source_error(format!(
            "it fails verification ({} problem(s), the first: {first}); `lockbox audit verify --config` tells them all, and nothing was exported",
            problems.len()
        ))),
    }
}

type PartitionKey = (String, Option<String>);

/// One open part file and what it holds so far.
struct OpenPart {
    writer: PartWriter,
    path: String,
    records: u64,
    first_seq: u64,
    last_seq: u64,
}

/// The state of one run while records stream through it.
struct Run<'a> {
    request: &'a ExportRequest,
    staging: &'a Path,
    open: BTreeMap<PartitionKey, OpenPart>,
    done: Vec<FileEntry>,
    progress: Progress,
    through_seq: Option<u64>,
    first: Option<(u64, String)>,
    last: Option<(u64, [u8; 32])>,
}

impl<'a> Run<'a> {
    fn new(request: &'a ExportRequest, staging: &'a Path) -> Self {
        Run {
            request,
            staging,
            open: BTreeMap::new(),
            done: Vec::new(),
            progress: Progress::default(),
            through_seq: None,
            first: None,
            last: None,
        }
    }

    fn take(&mut self, seq: u64, line: &[u8], value: &Value) -> Result<(), ExportError> {
        self.progress.scanned += 1;
        self.through_seq = Some(seq);
        let time = record_time(value);
        if !self.selected(value, time) {
            return Ok(());
        }
        let key = (partition_date(time), record_database(value));
        // Records come in time order: once the date moves on, earlier days are complete,
        // and closing them keeps one open file per database at most.
        let finished: Vec<PartitionKey> =
            self.open.keys().filter(|k| k.0 != key.0).cloned().collect();
        for k in finished {
            self.close(&k)?;
        }
        if !self.open.contains_key(&key) {
            let part = self.open_part(&key, seq)?;
            self.open.insert(key.clone(), part);
        }
        if let Some(part) = self.open.get_mut(&key) {
            part.writer
                .push(seq, value, line)
                .map_err(|e| write_error(&self.request.to, &part.path, e))?;
            part.records += 1;
            part.last_seq = seq;
        }
        if self.first.is_none() {
            let prev = value.get("prev").and_then(Value::as_str).unwrap_or("");
            self.first = Some((seq, prev.to_owned()));
        }
        self.last = Some((seq, line_hash(line)));
        self.progress.exported += 1;
        self.progress.bytes += line.len() as u64 + 1;
        Ok(())
    }

    fn selected(&self, value: &Value, time: Option<DateTime<Utc>>) -> bool {
        let r = self.request;
        if r.database.is_some() && record_database(value) != r.database {
            return false;
        }
        if r.since.is_some() || r.until.is_some() {
            let Some(t) = time else { return false };
            if r.since.is_some_and(|s| t < s) || r.until.is_some_and(|u| t > u) {
                return false;
            }
        }
        true
    }

    fn open_part(&self, key: &PartitionKey, seq: u64) -> Result<OpenPart, ExportError> {
        let dir = format!(
            "date={}/database={}",
            key.0,
            key.1.as_deref().map_or("_none".into(), escape)
        );
        let path = format!("{dir}/part-{seq:012}.{}", self.request.format.as_str());
        crate::private_files::create_dir_all(&self.staging.join(&dir))
            .map_err(|e| self.write_error(&dir, e.to_string()))?;
        let writer = PartWriter::create(&self.staging.join(&path), self.request.format)
            .map_err(|e| self.write_error(&path, e))?;
        Ok(OpenPart {
            writer,
            path,
            records: 0,
            first_seq: seq,
            last_seq: seq,
        })
    }

    fn close(&mut self, key: &PartitionKey) -> Result<(), ExportError> {
        let Some(part) = self.open.remove(key) else {
            return Ok(());
        };
        let (bytes, sha) = part
            .writer
            .finish()
            .map_err(|e| self.write_error(&part.path, e))?;
        self.done.push(FileEntry {
            path: part.path,
            date: key.0.clone(),
            database: key.1.clone(),
            records: part.records,
            first_seq: part.first_seq,
            last_seq: part.last_seq,
            bytes,
            sha256: hex::encode(sha),
        });
        Ok(())
    }

    fn finish(
        mut self,
        request: &ExportRequest,
        created_at: DateTime<Utc>,
    ) -> Result<Manifest, ExportError> {
        let keys: Vec<PartitionKey> = self.open.keys().cloned().collect();
        for k in keys {
            self.close(&k)?;
        }
        sync_tree(self.staging);
        self.done
            .sort_by(|a, b| (a.first_seq, &a.path).cmp(&(b.first_seq, &b.path)));
        let rfc3339 = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        Ok(Manifest {
            manifest_version: manifest::MANIFEST_VERSION,
            created_at: rfc3339(&created_at),
            created_by: request.created_by.clone(),
            schedule: request.schedule.clone(),
            format: request.format,
            selection: Selection {
                since: request.since.as_ref().map(rfc3339),
                until: request.until.as_ref().map(rfc3339),
                database: request.database.clone(),
                after_seq: request.after_seq,
            },
            through_seq: self.through_seq.or(request.after_seq),
            records: self.progress.exported,
            first_seq: self.first.as_ref().map(|f| f.0),
            last_seq: self.last.as_ref().map(|l| l.0),
            first_prev: self.first.map(|f| f.1),
            last_hash: self.last.map(|l| hex::encode(l.1)),
            files: self.done,
            signature: None,
        })
    }

    fn write_error(&self, path: &str, message: String) -> ExportError {
        write_error(&self.request.to, path, message)
    }
}

fn write_error(to: &Path, path: &str, message: String) -> ExportError {
    ExportError::Target {
        path: format!("{}/{path}", to.display()),
        message,
    }
}

fn record_time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .get("time")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// `YYYY-MM-DD` (UTC) of the record, `_none` if it has no readable time.
fn partition_date(time: Option<DateTime<Utc>>) -> String {
    time.map_or("_none".into(), |t| t.format("%Y-%m-%d").to_string())
}

pub(crate) fn record_database(value: &Value) -> Option<String> {
    value
        .get("database")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// A database name as a folder name: letters, digits, `_` and `-` as they are, every other
/// byte as `%XX`, so no name can climb out of the export or hide in a dot folder.
pub(crate) fn escape(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The partition folder of a record: what `verify-export` expects a file to sit in.
pub(crate) fn partition_dir(value: &Value) -> String {
    format!(
        "date={}/database={}",
        partition_date(record_time(value)),
        record_database(value)
            .as_deref()
            .map_or("_none".into(), escape)
    )
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), ExportError> {
    let path = dir.join(MANIFEST_FILE);
    let error = |e: std::io::Error| ExportError::Target {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut text = serde_json::to_vec_pretty(manifest).map_err(|e| ExportError::Target {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    text.push(b'\n');
    let mut file = crate::private_files::open_options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(error)?;
    std::io::Write::write_all(&mut file, &text)
        .and_then(|()| file.sync_all())
        .map_err(error)?;
    Ok(())
}

/// Makes the folders of a staged run durable before it is renamed into place.
fn sync_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                sync_tree(&entry.path());
            }
        }
    }
    sync_dir(dir);
}

fn sync_dir(dir: &Path) {
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not fsync an export folder");
    }
}
