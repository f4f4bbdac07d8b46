//! The writer thread: batches records from every session into one write and one fsync.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use chrono::{SecondsFormat, Utc};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::chain::{checkpoint_message, line_hash, CheckpointSigner, GENESIS};
use super::segments::{rotated_name, segments};
use super::{AuditError, AuditEvent};
use crate::config::Durability;

/// A signed checkpoint is written after this many records…
const CHECKPOINT_EVERY: u64 = 1000;
/// …or this long after the first record it does not yet cover.
const CHECKPOINT_AFTER: Duration = Duration::from_secs(10);

/// Most commands folded into one write.
const MAX_BATCH: usize = 4096;

enum Command {
    Append {
        events: Vec<AuditEvent>,
        /// Answered with the first record's sequence number once durable.
        ack: Option<oneshot::Sender<Result<u64, AuditError>>>,
    },
    Close(oneshot::Sender<()>),
}

/// How the writer makes records durable and when it starts a new file.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub durability: Durability,
    /// `Write` mode fsyncs this often.
    pub sync_interval: Duration,
    /// Rotate once the active file holds this many bytes.
    pub rotate_size: Option<u64>,
    /// Rotate once the active file is this old.
    pub rotate_interval: Option<Duration>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            durability: Durability::Fsync,
            sync_interval: Duration::from_secs(1),
            rotate_size: None,
            rotate_interval: None,
        }
    }
}

/// Handle to the audit trail; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Command>,
    path: PathBuf,
    healthy: Arc<AtomicBool>,
    /// The sequence number of the last record written (for live readers).
    head: watch::Receiver<u64>,
}

impl AuditLog {
    /// Opens the file at `path` (recovering a torn last line) and starts the writer thread.
    pub fn open(
        path: &Path,
        signer: Option<CheckpointSigner>,
    ) -> Result<(AuditLog, JoinHandle<()>), AuditError> {
        Self::open_with(path, signer, AuditOptions::default())
    }

    /// Opens with explicit durability and rotation settings.
    pub fn open_with(
        path: &Path,
        signer: Option<CheckpointSigner>,
        options: AuditOptions,
    ) -> Result<(AuditLog, JoinHandle<()>), AuditError> {
        let io = |e: std::io::Error| AuditError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let (last_seq, last_hash) = chain_tail(path, &mut file).map_err(io)?;
        let (tx, rx) = mpsc::channel();
        let len = file.metadata().map_err(io)?.len();
        let file_first_seq = first_seq_of(&mut file).map_err(io)?.unwrap_or(last_seq + 1);
        let healthy = Arc::new(AtomicBool::new(true));
        let (head_tx, head) = watch::channel(last_seq);
        let mut writer = Writer {
            head: head_tx,
            file,
            file_path: path.to_owned(),
            healthy: healthy.clone(),
            path: path.display().to_string(),
            next_seq: last_seq + 1,
            len,
            reopened: false,
            last_hash,
            signer,
            uncovered: 0,
            uncovered_since: None,
            options,
            unsynced_since: None,
            file_first_seq,
            file_opened: Instant::now(),
        };
        let handle = std::thread::Builder::new()
            .name("lockbox-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok((
            AuditLog {
                tx,
                path: path.to_owned(),
                healthy,
                head,
            },
            handle,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes whenever records were written; holds the last one's sequence number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    /// False while the last write or sync failed (statements and new sessions are refused).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Appends `events` and waits until they are on disk; returns the first one's sequence
    /// number. An error means the records are not durable and the caller must not act.
    pub async fn append_durable(&self, events: Vec<AuditEvent>) -> Result<u64, AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Command::Append {
                events,
                ack: Some(ack),
            })
            .map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Appends `events` behind everything sent before, without waiting. For records that
    /// follow an action already taken (outcomes, disconnects).
    pub fn append(&self, events: Vec<AuditEvent>) {
        if self.tx.send(Command::Append { events, ack: None }).is_err() {
            tracing::error!("audit log closed; record dropped");
        }
    }

    /// Flushes, fsyncs and stops the writer; later appends fail.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Command::Close(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

struct Writer {
    head: watch::Sender<u64>,
    file: File,
    file_path: PathBuf,
    healthy: Arc<AtomicBool>,
    path: String,
    next_seq: u64,
    /// Bytes of complete records in the file.
    len: u64,
    /// The file was reopened after a failed sync during the current batch.
    reopened: bool,
    /// Hash of the last record written: the next record's `prev`.
    last_hash: [u8; 32],
    signer: Option<CheckpointSigner>,
    /// Records written since the last checkpoint, and since when.
    uncovered: u64,
    uncovered_since: Option<Instant>,
    options: AuditOptions,
    /// Sequence number of the active file's first record (names the file when it rotates).
    file_first_seq: u64,
    /// When the active file was started (for rotation by time).
    file_opened: Instant,
    /// In `Write` mode: when the oldest record not yet fsynced was written.
    unsynced_since: Option<Instant>,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::new();
        loop {
            let tick = self.options.sync_interval.min(Duration::from_secs(1));
            match rx.recv_timeout(tick) {
                Ok(first) => batch.push(first),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.checkpoint_if_due();
                    self.sync_if_due();
                    self.rotate_if_due();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.checkpoint();
                    return;
                }
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let closing = self.write_batch(&mut batch);
            if let Some(ack) = closing {
                self.checkpoint();
                let _ = self.file.sync_data();
                let _ = ack.send(());
                return;
            }
            self.checkpoint_if_due();
            self.sync_if_due();
            self.rotate_if_due();
        }
    }

    /// Starts a new file once the active one is big or old enough. The old file ends with a
    /// signed checkpoint and is fsynced before it is renamed; the chain runs on into the new
    /// file. Failing to rotate is not a reason to refuse statements: the writer keeps
    /// appending to the current file and tries again later.
    fn rotate_if_due(&mut self) {
        let by_size = self.options.rotate_size.is_some_and(|s| self.len >= s);
        let by_time = self
            .options
            .rotate_interval
            .is_some_and(|t| self.file_opened.elapsed() >= t);
        if self.len == 0 || !(by_size || by_time) || !self.healthy.load(Ordering::SeqCst) {
            return;
        }
        self.checkpoint();
        if self.uncovered > 0 {
            return; // the checkpoint failed; the log says why
        }
        if let Err(e) = self.file.sync_data() {
            tracing::error!(path = %self.path, error = %e, "audit fsync before rotation failed");
            self.healthy.store(false, Ordering::SeqCst);
            self.reopen();
            return;
        }
        let target = rotated_name(&self.file_path, self.file_first_seq);
        if target.exists() {
            tracing::error!(target = %target.display(), "audit rotation target exists; not rotating");
            self.file_opened = Instant::now();
            return;
        }
        if let Err(e) = std::fs::rename(&self.file_path, &target) {
            tracing::error!(path = %self.path, error = %e, "audit rotation failed");
            self.file_opened = Instant::now();
            return;
        }
        match OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.file_path)
        {
            Ok(file) => {
                sync_dir(&self.file_path);
                tracing::info!(rotated = %target.display(), first_seq = self.file_first_seq, "audit file rotated");
                self.file = file;
                self.len = 0;
                self.file_first_seq = self.next_seq;
                self.file_opened = Instant::now();
            }
            Err(e) => {
                // The handle still points at the renamed file: records keep going there, and
                // the chain stays whole. Put the name back so readers find the active file.
                tracing::error!(path = %self.path, error = %e, "could not start a new audit file");
                let _ = std::fs::rename(&target, &self.file_path);
                self.file_opened = Instant::now();
            }
        }
    }

    /// `Write` mode: fsync once the oldest unsynced record is `sync_interval` old.
    fn sync_if_due(&mut self) {
        if self
            .unsynced_since
            .is_some_and(|t| t.elapsed() >= self.options.sync_interval)
        {
            match self.file.sync_data() {
                Ok(()) => self.unsynced_since = None,
                Err(e) => {
                    self.healthy.store(false, Ordering::SeqCst);
                    tracing::error!(path = %self.path, error = %e, "periodic audit fsync failed");
                    self.reopen();
                }
            }
        }
    }

    fn checkpoint_if_due(&mut self) {
        let due_by_time = self
            .uncovered_since
            .is_some_and(|t| t.elapsed() >= CHECKPOINT_AFTER);
        if self.uncovered >= CHECKPOINT_EVERY || (self.uncovered > 0 && due_by_time) {
            self.checkpoint();
        }
    }

    /// Writes a signed checkpoint covering everything so far, and syncs it.
    fn checkpoint(&mut self) {
        if self.uncovered == 0 {
            return;
        }
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let covers_seq = self.next_seq - 1;
        let head = hex::encode(self.last_hash);
        let signature = self
            .signer
            .as_ref()
            .map(|s| s.sign(&checkpoint_message(covers_seq, &head, &time)));
        let body = serde_json::json!({
            "type": "checkpoint",
            "covers_seq": covers_seq,
            "head": head,
            "signature": signature,
        });
        let mut buf = Vec::new();
        let hash = encode_value(&mut buf, self.next_seq, &time, &self.last_hash, &body);
        match self.write_out(&buf, true) {
            Ok(()) => {
                self.next_seq += 1;
                self.last_hash = hash;
                self.uncovered = 0;
                self.uncovered_since = None;
            }
            Err(e) => tracing::error!(error = %e, "audit checkpoint failed"),
        }
    }

    /// Writes and syncs one batch, answers its waiters; returns the close ack if asked to stop.
    fn write_batch(&mut self, batch: &mut Vec<Command>) -> Option<oneshot::Sender<()>> {
        self.reopened = false;
        let mut buf = Vec::with_capacity(512 * batch.len());
        let mut acks = Vec::new();
        let mut close = None;
        let start_seq = self.next_seq;
        let start_hash = self.last_hash;
        let mut seq = start_seq;
        let mut hash = start_hash;
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        for cmd in batch.drain(..) {
            match cmd {
                Command::Append { events, ack } => {
                    let first = seq;
                    for event in &events {
                        hash = encode_line(&mut buf, seq, &time, &hash, event);
                        seq += 1;
                    }
                    if let Some(ack) = ack {
                        acks.push((ack, first));
                    }
                }
                Command::Close(ack) => close = Some(ack),
            }
        }
        // Records nobody waits for (outcomes, disconnects) are written now and made durable
        // by the next fsync, so they never cost one of their own.
        let sync =
            (!acks.is_empty() && self.options.durability == Durability::Fsync) || close.is_some();
        let result = self.write_out(&buf, sync);
        if result.is_ok() && !sync && !buf.is_empty() {
            self.unsynced_since.get_or_insert_with(Instant::now);
        } else if result.is_ok() && sync {
            self.unsynced_since = None;
        }
        match result {
            Ok(()) => {
                if !self.healthy.swap(true, Ordering::SeqCst) {
                    tracing::info!(path = %self.path, "audit log writable again; service resumes");
                }
                if seq > start_seq {
                    self.uncovered += seq - start_seq;
                    self.uncovered_since.get_or_insert_with(Instant::now);
                }
                self.next_seq = seq;
                self.last_hash = hash;
                self.head.send_replace(seq - 1);
                for (ack, first) in acks {
                    let _ = ack.send(Ok(first));
                }
            }
            Err(e) => {
                self.healthy.store(false, Ordering::SeqCst);
                tracing::error!(path = %self.path, error = %e, "audit write failed; statements are refused");
                let err = AuditError::Io {
                    path: self.path.clone(),
                    message: e.to_string(),
                };
                for (ack, _) in acks {
                    let _ = ack.send(Err(err.clone()));
                }
                // Nothing of this batch counts as written; after a reopen the state is what the
                // file holds, otherwise the batch's sequence numbers are reused.
                if !self.reopened {
                    self.next_seq = start_seq;
                    self.last_hash = start_hash;
                }
                self.reopened = false;
            }
        }
        close
    }

    fn write_out(&mut self, buf: &[u8], sync: bool) -> std::io::Result<()> {
        if !buf.is_empty() {
            if let Err(e) = self.file.write_all(buf) {
                // Cut off whatever part of the batch reached the file, so no half record stays.
                let _ = self.file.set_len(self.len);
                return Err(e);
            }
            self.len += buf.len() as u64;
        }
        if sync {
            if let Err(e) = self.file.sync_data() {
                // After a failed fsync nothing is known about what reached the disk: do not
                // retry on this file handle as if it had worked. Reopen, and take sequence
                // and chain from what the file really holds.
                self.reopen();
                return Err(e);
            }
        }
        Ok(())
    }

    fn reopen(&mut self) {
        let reopened = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.file_path)
            .and_then(|mut f| {
                let (seq, hash) = chain_tail(&self.file_path, &mut f)?;
                let len = f.metadata()?.len();
                Ok((f, seq, hash, len))
            });
        match reopened {
            Ok((file, seq, hash, len)) => {
                self.reopened = true;
                self.file = file;
                self.next_seq = seq + 1;
                self.last_hash = hash;
                self.len = len;
            }
            Err(e) => {
                tracing::error!(path = %self.path, error = %e, "audit log could not be reopened")
            }
        }
    }
}

/// `{"seq":N,"time":"…","prev":"<hex>",<event fields>}\n`; returns the line's hash.
fn encode_line(
    buf: &mut Vec<u8>,
    seq: u64,
    time: &str,
    prev: &[u8; 32],
    event: &AuditEvent,
) -> [u8; 32] {
    match serde_json::to_value(event) {
        Ok(value) => encode_value(buf, seq, time, prev, &value),
        Err(_) => {
            tracing::error!(seq, "audit event failed to serialize");
            encode_value(
                buf,
                seq,
                time,
                prev,
                &serde_json::json!({"type": "unserializable"}),
            )
        }
    }
}

fn encode_value(
    buf: &mut Vec<u8>,
    seq: u64,
    time: &str,
    prev: &[u8; 32],
    body: &serde_json::Value,
) -> [u8; 32] {
    let start = buf.len();
    buf.extend_from_slice(
        format!(
            "{{\"seq\":{seq},\"time\":\"{time}\",\"prev\":\"{}\"",
            hex::encode(prev)
        )
        .as_bytes(),
    );
    let fields = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
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
fn chain_tail(active: &Path, file: &mut File) -> std::io::Result<(u64, [u8; 32])> {
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
fn first_seq_of(file: &mut File) -> std::io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(0))?;
    let mut first = Vec::new();
    std::io::BufRead::read_until(&mut std::io::BufReader::new(&mut *file), b'\n', &mut first)?;
    Ok(serde_json::from_slice::<serde_json::Value>(&first)
        .ok()
        .and_then(|v| v.get("seq").and_then(|s| s.as_u64())))
}

/// Makes a rename in the file's folder durable.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not fsync the audit folder");
        }
    }
}

/// Drops a torn final record (a crash mid-write) and returns the last record's sequence
/// number and hash, where the chain continues.
fn recover_tail(file: &mut File) -> std::io::Result<(u64, [u8; 32])> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_record_is_cut_and_the_chain_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut good = Vec::new();
        let h1 = encode_value(
            &mut good,
            1,
            "t",
            &GENESIS,
            &serde_json::json!({"type": "x"}),
        );
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
}
