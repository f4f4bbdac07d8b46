//! The witnessed checkpoint: the last checkpoint known durable, kept outside the trail.
//!
//! The chain proves every record up to the last one in the file, and a signed checkpoint
//! vouches for the head it covers, but nothing in the file can show that records after a
//! checkpoint were cut off: a trail truncated right after one verifies as complete. So the
//! writer hands each checkpoint, once fsynced, to [`Keeper`], which keeps its sequence
//! number and line hash in the state store (and the PostgreSQL sink holds the checkpoint
//! rows it shipped). A trail that ends before the witnessed checkpoint, or holds another
//! record at its place, was truncated or rewritten: the writer refuses to continue it
//! ([`check_trail`]) and `audit verify --config` fails ([`check_files`]).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::chain::line_hash;
use super::pg_sink::SinkError;
use super::segments::segments_after;
use super::AuditError;
use crate::config::PgSink;
use crate::store::Store;

/// A checkpoint record known durable: its sequence number and the SHA-256 of its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Witness {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// How the state store holds a witness: `{"seq":N,"hash":"<hex>","closed":true}`.
#[derive(Serialize, Deserialize)]
struct Stored {
    seq: u64,
    hash: String,
    /// The writer closed the trail cleanly with this checkpoint as its last record: until
    /// the next start nothing may follow it (see [`Kept::closed`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    closed: bool,
}

/// A witness as the state store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub witness: Witness,
    /// The checkpoint was the trail's last record when lockbox stopped cleanly. A clean
    /// stop always ends the trail with a signed checkpoint, so any record after it was
    /// written while lockbox was not running: appended by someone else, and signed by no
    /// one. The next start refuses such a trail (rather than sign what follows), and
    /// `audit verify --config` reports it.
    pub closed: bool,
}

impl Kept {
    fn to_setting(self) -> String {
        let stored = Stored {
            seq: self.witness.seq,
            hash: hex::encode(self.witness.hash),
            closed: self.closed,
        };
        // A struct of a number, a string and a flag always serializes.
        serde_json::to_string(&stored).unwrap_or_default()
    }

    fn from_setting(text: &str) -> Result<Kept, String> {
        let stored: Stored = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&stored.hash, &mut hash).map_err(|e| e.to_string())?;
        Ok(Kept {
            witness: Witness {
                seq: stored.seq,
                hash,
            },
            closed: stored.closed,
        })
    }
}

/// The state store's settings key for the trail whose active file is `active`: per trail,
/// since processes that share a state store each write a trail of their own.
/// The key in `store`: on a store shared by several nodes, each node's trail has its own
/// (two machines may well keep their trails at the same path).
fn store_key(store: &Store, active: &Path) -> String {
    store_key_as(store, &canonical(active))
}

/// Every key the witness is kept under: the canonical path's and the path's as spelled
/// (once each). The path as spelled may lead elsewhere later (a link in it swapped for
/// another, an attack review did so after cutting the trail), and the canonical one may be
/// spelled otherwise next time (a relative `--config`): kept under both, read from both, the
/// newest wins.
fn store_keys(store: &Store, active: &Path) -> Vec<String> {
    let mut keys = vec![store_key(store, active), store_key_as(store, active)];
    keys.dedup();
    keys
}

/// Keeps `kept` under every key of the trail.
async fn keep_under_all(store: &Store, active: &Path, kept: &Kept) -> Result<(), String> {
    for key in store_keys(store, active) {
        store
            .set_setting(&key, &kept.to_setting())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The key under the trail's path as spelled: how versions before the canonical key kept
/// it, and still read when the canonical key holds nothing.
fn store_key_as(store: &Store, active: &Path) -> String {
    match store.postgres_backend() {
        Some(pg) => format!("audit_witness {} {}", pg.node, active.display()),
        None => setting_key(active),
    }
}

pub fn setting_key(active: &Path) -> String {
    format!("audit_witness {}", active.display())
}

/// The trail's path with its folder resolved (links, `..`, a relative spelling): one key
/// however the config was reached. An attack review ran `audit verify --config lockbox.toml`
/// from the deployment's folder, which looked the witness up under another key, found
/// none, and passed a cut trail (as `serve` started on it).
fn canonical(active: &Path) -> PathBuf {
    let (Some(dir), Some(name)) = (active.parent(), active.file_name()) else {
        return active.to_owned();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::canonicalize(dir).map_or_else(|_| active.to_owned(), |dir| dir.join(name))
}

/// The witness the state store holds for the trail, with whether the trail was closed
/// at it.
pub async fn kept(store: &Store, active: &Path) -> Result<Option<Kept>, AuditError> {
    let read = |key: String| async move {
        store
            .setting(&key)
            .await
            .map_err(|e| io_error(active, e.to_string()))
    };
    let mut newest: Option<Kept> = None;
    for key in store_keys(store, active) {
        let Some(text) = read(key).await? else {
            continue;
        };
        let found = Kept::from_setting(&text).map_err(|e| {
            io_error(
                active,
                format!("the witnessed checkpoint is unreadable: {e}"),
            )
        })?;
        if newest.is_none_or(|n| found.witness.seq > n.witness.seq) {
            newest = Some(found);
        }
    }
    Ok(newest)
}

/// After [`check_trail`] passed, before the writer appends: the trail is open again, so a
/// crash from now on may leave records after the checkpoint, unsigned but lockbox's own.
pub async fn reopen(store: &Store, active: &Path) -> Result<(), AuditError> {
    let Some(mut kept) = kept(store, active).await? else {
        return Ok(());
    };
    if !kept.closed {
        return Ok(());
    }
    kept.closed = false;
    keep_under_all(store, active, &kept)
        .await
        .map_err(|e| io_error(active, format!("reopening the witnessed checkpoint: {e}")))
}

/// A trail closed at its witnessed checkpoint must end with it: the last record's
/// sequence number is compared (`last_seq` in the trail's newest file).
pub fn check_closed(kept: &Kept, path: &Path, last_seq: u64) -> Result<(), AuditError> {
    if kept.closed && last_seq > kept.witness.seq {
        return Err(AuditError::AppendedWhileStopped {
            path: path.display().to_string(),
            closed_seq: kept.witness.seq,
            last_seq,
        });
    }
    Ok(())
}

/// A trail closed by a clean stop ends with its closing checkpoint: a partial line after
/// it (`partial_tail`) is no record being written, as it would be while lockbox runs, but
/// bytes put there while it was stopped.
pub fn check_closed_end(kept: &Kept, path: &Path, partial_tail: bool) -> Result<(), AuditError> {
    if kept.closed && partial_tail {
        return Err(io_error(
            path,
            format!(
                "a partial line follows the checkpoint (seq {}) that closed the trail when lockbox stopped: nothing was being written, so it was added while lockbox was stopped",
                kept.witness.seq
            ),
        ));
    }
    Ok(())
}

/// Before the writer opens the trail: it must still hold the checkpoint the state store
/// witnessed, or the writer would chain new records onto a truncated trail.
pub async fn check_trail(active: &Path, store: &Store) -> Result<(), AuditError> {
    let Some(kept) = kept(store, active).await? else {
        return Ok(());
    };
    let witness = kept.witness;
    if witness.seq == 0 {
        // Closed before it held a record (or opened since): any record now was added
        // while lockbox was stopped.
        return match last_seq_of_trail(active)? {
            Some(last) => check_closed(&kept, active, last),
            None => Ok(()),
        };
    }
    let files: Vec<PathBuf> = segments_after(active, Some(witness.seq.saturating_sub(1)))
        .map_err(|e| io_error(active, e.to_string()))?
        .into_iter()
        .map(|s| s.path)
        .collect();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    // After a clean shutdown the witnessed checkpoint is the last record, and a trail whose
    // last record comes before it is cut: neither needs a scan of the file.
    if let Some(path) = paths.last() {
        let last = last_line(path).map_err(|e| io_error(path, e.to_string()))?;
        if let Some((line, seq)) = last.and_then(|l| seq_of(&l).map(|seq| (l, seq))) {
            check_closed(&kept, path, seq)?;
            if seq == witness.seq {
                return found(path, seq, &line, &witness, "the state store");
            }
            if seq < witness.seq {
                return Err(truncated(path, seq, &witness, "the state store"));
            }
        }
    }
    check_files(&paths, &witness, "the state store", active)
}

/// What a clean stop closes the trail at: the checkpoint this run witnessed last, or (when
/// it wrote none) the one kept from before, if the trail ends with it; for a trail with no
/// record at all, [`EMPTY`]. `None` when the trail ends otherwise (a final checkpoint that
/// failed): then nothing is closed, as after a crash.
async fn closing_witness(store: &Store, active: &Path, latest: Option<Witness>) -> Option<Witness> {
    let candidate = match latest {
        Some(w) => Some(w),
        None => kept(store, active).await.ok().flatten().map(|k| k.witness),
    };
    match candidate {
        Some(w) if w.seq > 0 => ends_trail(active, &w).then_some(w),
        _ => matches!(last_seq_of_trail(active), Ok(None)).then_some(EMPTY),
    }
}

/// The witness of a trail closed before it held any record.
pub const EMPTY: Witness = Witness {
    seq: 0,
    hash: [0; 32],
};

/// Whether `witness` is the last record of the trail whose active file is `active`: the
/// writer closed it with that checkpoint.
fn ends_trail(active: &Path, witness: &Witness) -> bool {
    matches!(
        last_line(active),
        Ok(Some(line)) if seq_of(&line) == Some(witness.seq) && line_hash(&line) == witness.hash
    )
}

/// The sequence number of the trail's last complete record, if any.
fn last_seq_of_trail(active: &Path) -> Result<Option<u64>, AuditError> {
    let files = segments_after(active, None).map_err(|e| io_error(active, e.to_string()))?;
    for segment in files.iter().rev() {
        let last = last_line(&segment.path).map_err(|e| io_error(&segment.path, e.to_string()))?;
        if let Some(seq) = last.and_then(|l| seq_of(&l)) {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// The last complete line of `path`, read from the end (a window growing from 16 KiB, so a
/// long line costs more reads, never a whole-file read for a short one).
pub(super) fn last_line(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = super::chain::open_regular_file(path)?;
    let len = file.metadata()?.len();
    let mut window = 16 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        let end = tail.iter().rposition(|b| *b == b'\n');
        match (
            end,
            end.and_then(|e| tail[..e].iter().rposition(|b| *b == b'\n')),
        ) {
            (Some(e), Some(s)) => return Ok(Some(tail[s + 1..e].to_vec())),
            (Some(e), None) if start == 0 => return Ok(Some(tail[..e].to_vec())),
            (None, _) if start == 0 => return Ok(None),
            _ => window *= 4,
        }
    }
}

/// Checks that `files` (in order) hold the witnessed checkpoint at its sequence number.
/// `witnessed_by` names where the witness came from; `active` is named when there is no
/// file at all.
pub fn check_files(
    files: &[&Path],
    witness: &Witness,
    witnessed_by: &str,
    active: &Path,
) -> Result<(), AuditError> {
    let mut last_seq = 0;
    let mut last_path = files.last().copied().unwrap_or(active);
    for path in files {
        let file =
            super::chain::open_regular_file(path).map_err(|e| io_error(path, e.to_string()))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| io_error(path, e.to_string()))?;
            // A torn last line is no record (the writer cuts it when it opens the file).
            if n == 0 || line.pop() != Some(b'\n') {
                break;
            }
            let Some(seq) = seq_of(&line) else { continue };
            if seq >= witness.seq {
                return found(path, seq, &line, witness, witnessed_by);
            }
            last_seq = seq;
            last_path = path;
        }
    }
    Err(truncated(last_path, last_seq, witness, witnessed_by))
}

/// The first record at or past the witnessed checkpoint must be that checkpoint.
fn found(
    path: &Path,
    seq: u64,
    line: &[u8],
    witness: &Witness,
    witnessed_by: &str,
) -> Result<(), AuditError> {
    if seq == witness.seq && line_hash(line) == witness.hash {
        return Ok(());
    }
    Err(AuditError::Diverged {
        path: path.display().to_string(),
        seq,
        witnessed_seq: witness.seq,
        witnessed_by: witnessed_by.to_owned(),
    })
}

fn truncated(path: &Path, last_seq: u64, witness: &Witness, witnessed_by: &str) -> AuditError {
    AuditError::Truncated {
        path: path.display().to_string(),
        last_seq,
        witnessed_seq: witness.seq,
        witnessed_by: witnessed_by.to_owned(),
    }
}

/// A record's sequence number: the writer puts it first (`{"seq":N,…`), so it is read
/// without parsing the line; anything else is parsed.
fn seq_of(line: &[u8]) -> Option<u64> {
    if let Some(rest) = line.strip_prefix(b"{\"seq\":") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if rest.get(digits) == Some(&b',') {
            return std::str::from_utf8(&rest[..digits]).ok()?.parse().ok();
        }
    }
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()?
        .get("seq")?
        .as_u64()
}

fn io_error(path: &Path, message: String) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        message,
    }
}

/// The newest checkpoint the audit database holds for this proxy. Rows are the trail's
/// exact lines, so the checkpoint's sequence number and line hash witness the trail from
/// outside the file (`audit verify --config` compares). `None` before the first.
pub async fn witnessed_checkpoint(config: &PgSink) -> Result<Option<Witness>, SinkError> {
    let client = super::pg_sink::connect(config).await?;
    let table: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&config.table])
        .await?
        .get(0);
    if table.is_none() {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT seq, line FROM {} WHERE proxy_id = $1 AND \"type\" = 'checkpoint' \
                 ORDER BY seq DESC LIMIT 1",
                config.table_sql
            ),
            &[&config.proxy_id],
        )
        .await?;
    Ok(row.map(|row| Witness {
        seq: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        hash: line_hash(row.get::<_, &str>(1).as_bytes()),
    }))
}

/// Writes each checkpoint the writer reports durable into the state store.
pub struct Keeper {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Keeper {
    /// Starts keeping the witnesses `witnessed` reports for the trail `active`.
    pub fn spawn(
        store: Store,
        active: PathBuf,
        witnessed: watch::Receiver<Option<Witness>>,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(keep(store.clone(), active, witnessed, stopped));
        Keeper { stop, task }
    }

    /// After the writer closed: records the last checkpoint (the one written at close),
    /// closed when it is the trail's last record, then stops.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the audit witness task failed");
        }
    }
}

async fn keep(
    store: Store,
    active: PathBuf,
    mut witnessed: watch::Receiver<Option<Witness>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut kept = None;
    loop {
        let stopping = *stop.borrow();
        let latest = *witnessed.borrow_and_update();
        if stopping {
            if let Some(witness) = closing_witness(&store, &active, latest).await {
                let closed = Kept {
                    witness,
                    closed: true,
                };
                if let Err(e) = keep_under_all(&store, &active, &closed).await {
                    tracing::error!(error = %e, seq = witness.seq, "could not keep the closing audit checkpoint in the state store");
                }
                return;
            }
        }
        if let Some(witness) = latest.filter(|w| Some(*w) != kept) {
            let open = Kept {
                witness,
                closed: false,
            };
            match keep_under_all(&store, &active, &open).await {
                Ok(()) => kept = Some(witness),
                // The previous witness stays: an older checkpoint, still a true one.
                Err(e) => {
                    tracing::error!(error = %e, seq = witness.seq, "could not keep the audit checkpoint in the state store")
                }
            }
        }
        if stopping {
            return;
        }
        tokio::select! {
            // Err: the writer is gone, and what it reported last was kept above; or the
            // server was dropped without a shutdown.
            changed = witnessed.changed() => if changed.is_err() { return },
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
#[path = "witness_tests.rs"]
mod tests;
