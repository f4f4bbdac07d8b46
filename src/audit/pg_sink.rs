//! The optional PostgreSQL audit sink: a task that tails the trail (every segment, from the
//! last sequence number the table already holds for this proxy) and inserts it in batches
//! into a table of the customer's audit database.
//!
//! The local file stays the primary, fail-closed record: statements wait for the file, never
//! for the sink. A sink that is down only lags; it reconnects with backoff and catches up,
//! and `/v1/health` shows the lag and the last error. Each row keeps the record's exact line,
//! so the chain can be verified again from the table. The primary key (proxy_id, seq) and
//! `ON CONFLICT DO NOTHING` make a retried batch harmless; a conflicting row whose line
//! differs means two proxies share a proxy id, and shipping stops with that error rather
//! than drop records silently.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::segments::segments;
use super::{open_segments, AuditError};
use crate::config::PgSink;

/// How often a caught-up sink looks for new records.
const POLL: Duration = Duration::from_millis(250);
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of records one batch holds (besides `batch_size` records): statements can be
/// megabytes each, and a batch is held in memory until its insert is done.
const MAX_BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("audit database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Trail(#[from] AuditError),
    #[error("audit trail {path}: {message}")]
    Read { path: String, message: String },
    #[error("record {seq} of proxy_id \"{proxy_id}\" in the table is not the trail's: another proxy uses this proxy_id, or the trail was replaced; shipping stopped")]
    Collision { proxy_id: String, seq: u64 },
    #[error("the audit trail {path} ends at seq {trail_seq}, but the table holds seq {table_seq} of proxy_id \"{proxy_id}\": the trail was truncated; shipping stopped")]
    Truncated {
        path: String,
        proxy_id: String,
        trail_seq: u64,
        table_seq: u64,
    },
}

/// What `/v1/health` shows of the sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkHealth {
    pub proxy_id: String,
    pub connected: bool,
    /// Highest sequence number in the table for this proxy.
    pub shipped_seq: u64,
    /// Highest sequence number in the file.
    pub written_seq: u64,
    /// Records in the file not yet in the table.
    pub lag: u64,
    pub last_error: Option<String>,
}

/// Shared between the sink task and the API.
pub struct SinkStatus {
    proxy_id: String,
    connected: AtomicBool,
    shipped: AtomicU64,
    written: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SinkStatus {
    pub fn health(&self) -> SinkHealth {
        let shipped = self.shipped.load(Ordering::SeqCst);
        let written = self.written.load(Ordering::SeqCst).max(shipped);
        SinkHealth {
            proxy_id: self.proxy_id.clone(),
            connected: self.connected.load(Ordering::SeqCst),
            shipped_seq: shipped,
            written_seq: written,
            lag: written - shipped,
            last_error: self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
        }
    }

    fn set_error(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }

    fn saw_written(&self, seq: u64) {
        self.written.fetch_max(seq, Ordering::SeqCst);
    }
}

/// The running sink.
pub struct PgSinkHandle {
    pub status: Arc<SinkStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PgSinkHandle {
    /// Starts shipping the trail whose active file is `active`.
    pub fn spawn(config: PgSink, active: PathBuf) -> PgSinkHandle {
        let status = Arc::new(SinkStatus {
            proxy_id: config.proxy_id.clone(),
            connected: AtomicBool::new(false),
            shipped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(config, active, status.clone(), stopped));
        PgSinkHandle { status, stop, task }
    }

    /// Ships what the trail holds now (the writer is closed by then), then stops; gives up
    /// after `drain_for` (what is not shipped is shipped by the next start).
    pub async fn stop(self, drain_for: Duration) {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(drain_for, self.task).await.is_err() {
            tracing::warn!("audit sink did not finish its final drain in time");
            abort.abort();
        }
    }
}

async fn run(
    config: PgSink,
    active: PathBuf,
    status: Arc<SinkStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let stopping = stop_requested(&stop);
        match ship_until_stopped(&config, &active, &status, &mut stop, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "audit sink failed");
                status.connected.store(false, Ordering::SeqCst);
                status.set_error(Some(e.to_string()));
            }
        }
        if stopping {
            return;
        }
        note_written(&active, &status);
        // A stop during the wait gets one more attempt: the final drain.
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: resume from the table, then ship as records arrive.
async fn ship_until_stopped(
    config: &PgSink,
    active: &Path,
    status: &SinkStatus,
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> Result<(), SinkError> {
    let client = connect(config).await?;
    ensure_table(&client, config).await?;
    let arrival_lock = super::arrival::lock_key(&client, &config.table).await?;
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(max(seq), 0) FROM {} WHERE proxy_id = $1",
                config.table_sql
            ),
            &[&config.proxy_id],
        )
        .await?;
    let mut tail = Tail {
        last_seq: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        cursor: None,
    };
    if tail.last_seq > 0 {
        check_resume_point(&client, config, active, tail.last_seq).await?;
    }
    status.shipped.store(tail.last_seq, Ordering::SeqCst);
    status.connected.store(true, Ordering::SeqCst);
    status.set_error(None);
    *backoff = MIN_BACKOFF;
    tracing::info!(proxy_id = %config.proxy_id, from_seq = tail.last_seq + 1, "audit sink connected");
    loop {
        let stopping = stop_requested(stop);
        note_written(active, status);
        loop {
            let batch = tail.read(active, config.batch_size, MAX_BATCH_BYTES)?;
            let Some(last) = batch.lines.last().map(|l| l.seq) else {
                break;
            };
            status.saw_written(last);
            insert(&client, config, arrival_lock, &batch.lines).await?;
            tail.shipped(last, batch.cursor);
            status.shipped.store(last, Ordering::SeqCst);
            status.set_error(None);
        }
        if stopping {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            // A dropped sender is a stop too.
            _ = stop.changed() => {}
        }
    }
}

/// A stop was asked for, or whoever could ask is gone (the server was dropped).
fn stop_requested(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Reads how far the trail goes, for the lag.
fn note_written(active: &Path, status: &SinkStatus) {
    match last_written_seq(active) {
        Ok(Some(seq)) => status.saw_written(seq),
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read the end of the audit trail"),
    }
}

pub(super) async fn connect(config: &PgSink) -> Result<tokio_postgres::Client, SinkError> {
    connect_keeping(config, ()).await
}

/// [`connect`], with `kept` dropped only once the connection has ended (a reader's turn:
/// released when the client is dropped, the next reader's backend started beside one
/// still closing, so a bound on readers was not one on connections).
pub(super) async fn connect_keeping<K: Send + 'static>(
    config: &PgSink,
    kept: K,
) -> Result<tokio_postgres::Client, SinkError> {
    let mut pg = config.connect.clone();
    pg.connect_timeout(CONNECT_TIMEOUT);
    let client = match &config.tls_client {
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(drive(connection, kept));
            client
        }
        Some(tls) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
            let (client, connection) = pg.connect(tls).await?;
            tokio::spawn(drive(connection, kept));
            client
        }
    };
    Ok(client)
}

async fn drive<F, K>(connection: F, kept: K)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "audit sink connection ended");
    }
    drop(kept);
}

/// Creates the table unless it exists (checked first: a role that may insert but not
/// create must still work against a table the customer made).
async fn ensure_table(client: &tokio_postgres::Client, config: &PgSink) -> Result<(), SinkError> {
    let found: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&config.table])
        .await?
        .get(0);
    if found.is_none() {
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    proxy_id text NOT NULL,
                    seq bigint NOT NULL,
                    \"time\" timestamptz NOT NULL,
                    \"type\" text NOT NULL,
                    request_id text,
                    session_id text,
                    engineer text,
                    \"database\" text,
                    record jsonb NOT NULL,
                    line text NOT NULL,
                    {},
                    PRIMARY KEY (proxy_id, seq)
                )",
                config.table_sql,
                super::arrival::DEFINITION
            ))
            .await?;
    }
    super::arrival::ensure_column(client, config).await
}

/// The table's newest row for this proxy must be this trail's record: otherwise another
/// proxy ships under the same id, and resuming after its rows would skip ours unseen.
async fn check_resume_point(
    client: &tokio_postgres::Client,
    config: &PgSink,
    active: &Path,
    seq: u64,
) -> Result<(), SinkError> {
    let theirs: String = client
        .query_one(
            &format!(
                "SELECT line FROM {} WHERE proxy_id = $1 AND seq = $2",
                config.table_sql
            ),
            &[&config.proxy_id, &(seq as i64)],
        )
        .await?
        .get(0);
    resume_point(active, &config.proxy_id, seq, &theirs)
}

/// Whether the trail holds `theirs`, the table's newest line (`seq`) for `proxy_id`: a trail
/// that ends before it was cut; one with another line there is not this proxy's.
fn resume_point(active: &Path, proxy_id: &str, seq: u64, theirs: &str) -> Result<(), SinkError> {
    let probe = Tail {
        last_seq: seq - 1,
        cursor: None,
    };
    let ours = probe
        .read(active, 1, MAX_BATCH_BYTES)?
        .lines
        .into_iter()
        .next();
    if ours
        .as_ref()
        .is_some_and(|l| l.seq == seq && l.text == theirs)
    {
        return Ok(());
    }
    let trail_seq = last_written_seq(active).ok().flatten().unwrap_or(0);
    if ours.is_none() && trail_seq < seq {
        return Err(SinkError::Truncated {
            path: active.display().to_string(),
            proxy_id: proxy_id.to_owned(),
            trail_seq,
            table_seq: seq,
        });
    }
    Err(SinkError::Collision {
        proxy_id: proxy_id.to_owned(),
        seq,
    })
}

/// One record as read from the trail.
struct Line {
    seq: u64,
    fields: Fields,
    text: String,
}

#[derive(Deserialize)]
struct Fields {
    seq: u64,
    time: String,
    #[serde(rename = "type")]
    kind: String,
    request_id: Option<String>,
    session_id: Option<String>,
    engineer: Option<String>,
    database: Option<String>,
}

/// Inserts `lines` (one statement, in the table's arrival order: `arrival.rs`); rows that
/// exist already must be the same lines. On an error the transaction is left open: the
/// caller drops the connection, and the server rolls it back.
async fn insert(
    client: &tokio_postgres::Client,
    config: &PgSink,
    arrival_lock: i64,
    lines: &[Line],
) -> Result<(), SinkError> {
    let seqs: Vec<i64> = lines.iter().map(|l| l.seq as i64).collect();
    let column = |f: fn(&Fields) -> Option<&str>| -> Vec<Option<&str>> {
        lines.iter().map(|l| f(&l.fields)).collect()
    };
    let times = column(|f| Some(&f.time));
    let kinds = column(|f| Some(&f.kind));
    let requests = column(|f| f.request_id.as_deref());
    let sessions = column(|f| f.session_id.as_deref());
    let engineers = column(|f| f.engineer.as_deref());
    let databases = column(|f| f.database.as_deref());
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let jsonb: Vec<Option<String>> = lines.iter().map(|l| jsonb_text(&l.text)).collect();
    super::arrival::begin_in_order(client, arrival_lock).await?;
    let inserted = client
        .execute(
            &format!(
                "INSERT INTO {} (proxy_id, seq, \"time\", \"type\", request_id, session_id, \
                 engineer, \"database\", record, line) \
                 SELECT $1, u.seq, u.t::timestamptz, u.k, u.r, u.s, u.e, u.d, \
                 coalesce(u.j, u.l)::jsonb, u.l \
                 FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::text[], $10::text[]) \
                 AS u(seq, t, k, r, s, e, d, l, j) \
                 ON CONFLICT (proxy_id, seq) DO NOTHING",
                config.table_sql
            ),
            &[
                &config.proxy_id,
                &seqs,
                &times,
                &kinds,
                &requests,
                &sessions,
                &engineers,
                &databases,
                &texts,
                &jsonb,
            ],
        )
        .await?;
    if inserted < lines.len() as u64 {
        check_existing(client, config, lines, &seqs).await?;
    }
    client.batch_execute("COMMIT").await?;
    Ok(())
}

/// The text of a line's `record` (jsonb) column when it cannot be the line itself: `jsonb`
/// refuses the escape `\u0000`, and a text bind parameter (or FunctionCall argument) may hold
/// a NUL that the record keeps as it was sent. The batch failed on every retry, so one such
/// statement stopped the node's trail from reaching the table for good. The `record`
/// column only serves filters (a reader takes the exact `line`), so there each NUL becomes
/// U+FFFD. `None` (the line itself) for every line without the escape.
fn jsonb_text(line: &str) -> Option<String> {
    if !line.contains("\\u0000") {
        return None;
    }
    let mut value: serde_json::Value = serde_json::from_str(line).ok()?;
    replace_nul(&mut value);
    serde_json::to_string(&value).ok()
}

fn replace_nul(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{fffd}"),
        Value::Array(items) => items.iter_mut().for_each(replace_nul),
        Value::Object(fields) => {
            if fields.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(fields);
                fields.extend(
                    old.into_iter()
                        .map(|(k, v)| (k.replace('\0', "\u{fffd}"), v)),
                );
            }
            fields.values_mut().for_each(replace_nul);
        }
        _ => {}
    }
}

/// After a conflict: a retry of rows already shipped is fine, a different line is not.
async fn check_existing(
    client: &tokio_postgres::Client,
    config: &PgSink,
    lines: &[Line],
    seqs: &[i64],
) -> Result<(), SinkError> {
    let rows = client
        .query(
            &format!(
                "SELECT seq, line FROM {} WHERE proxy_id = $1 AND seq = ANY($2)",
                config.table_sql
            ),
            &[&config.proxy_id, &seqs],
        )
        .await?;
    for row in rows {
        let seq = row.get::<_, i64>(0) as u64;
        let line: &str = row.get(1);
        if lines.iter().any(|l| l.seq == seq && l.text != line) {
            return Err(SinkError::Collision {
                proxy_id: config.proxy_id.clone(),
                seq,
            });
        }
    }
    Ok(())
}

/// Where the sink is in the trail: the last record shipped, and the file and offset just
/// past it (so a poll does not read the trail from the start).
struct Tail {
    last_seq: u64,
    cursor: Option<Cursor>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Cursor {
    /// Device and inode: a rotated file keeps them across its rename.
    file: (u64, u64),
    offset: u64,
}

struct Batch {
    lines: Vec<Line>,
    cursor: Option<Cursor>,
}

impl Tail {
    fn shipped(&mut self, seq: u64, cursor: Option<Cursor>) {
        self.last_seq = seq;
        self.cursor = cursor;
    }

    /// Up to `max` complete records after `last_seq`, oldest first, and no more once they
    /// hold `max_bytes` (a first record bigger than that comes alone). Reads at most `max`
    /// lines of local files, so it runs on the async thread between two inserts.
    fn read(&self, active: &Path, max: usize, max_bytes: usize) -> Result<Batch, SinkError> {
        let mut files = open_segments(active, Some(self.last_seq))?;
        // Files before the cursor's are shipped whole.
        if let Some(cursor) = self.cursor {
            if let Some(at) = files
                .iter()
                .position(|(_, f)| file_id(f).ok() == Some(cursor.file))
            {
                files.drain(..at);
            }
        }
        let mut batch = Batch {
            lines: Vec::new(),
            cursor: self.cursor,
        };
        let mut bytes = 0usize;
        let full = |lines: usize, bytes: usize| lines >= max || bytes >= max_bytes;
        for (path, file) in files {
            let read_error = |e: std::io::Error| SinkError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            };
            let id = file_id(&file).map_err(read_error)?;
            let start = match self.cursor {
                Some(c) if c.file == id => c.offset,
                _ => 0,
            };
            let mut reader = BufReader::new(file);
            reader.seek(SeekFrom::Start(start)).map_err(read_error)?;
            let mut offset = start;
            let mut buf = Vec::new();
            while !full(batch.lines.len(), bytes) {
                buf.clear();
                let n = reader.read_until(b'\n', &mut buf).map_err(read_error)?;
                // End of file, or a record still being written: it is read next time.
                if n == 0 || buf.last() != Some(&b'\n') {
                    break;
                }
                offset += n as u64;
                let line = parse_line(&buf[..n - 1]).map_err(|message| SinkError::Read {
                    path: path.display().to_string(),
                    message,
                })?;
                if line.seq <= self.last_seq {
                    continue;
                }
                batch.cursor = Some(Cursor { file: id, offset });
                bytes += line.text.len();
                batch.lines.push(line);
            }
            if full(batch.lines.len(), bytes) {
                break;
            }
        }
        if let Some(first) = batch.lines.first().filter(|l| l.seq != self.last_seq + 1) {
            tracing::warn!(
                after = self.last_seq,
                next = first.seq,
                "records missing from the audit trail; shipping what it holds"
            );
        }
        Ok(batch)
    }
}

fn parse_line(bytes: &[u8]) -> Result<Line, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("record is not UTF-8: {e}"))?;
    let fields: Fields =
        serde_json::from_str(text).map_err(|e| format!("unreadable record: {e}"))?;
    Ok(Line {
        seq: fields.seq,
        fields,
        text: text.to_owned(),
    })
}

fn file_id(file: &File) -> std::io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// The newest record's sequence number, from the end of the newest file that has one
/// (for the lag while the audit database is unreachable).
fn last_written_seq(active: &Path) -> std::io::Result<Option<u64>> {
    for segment in segments(active)?.into_iter().rev() {
        if let Some(line) = super::witness::last_line(&segment.path)? {
            return Ok(seq_of(&line));
        }
    }
    Ok(None)
}

fn seq_of(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()?
        .get("seq")?
        .as_u64()
}

#[cfg(test)]
#[path = "pg_sink_tests.rs"]
mod tests;
