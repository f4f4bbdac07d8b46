//! Tamper evidence: every record carries `prev`, the SHA-256 of the previous record's line
//! (its exact bytes, the canonical encoding), and signed checkpoints vouch for the chain's
//! head. `verify` walks files and says exactly where and how a log was altered.

use std::path::Path;

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// `prev` of the very first record.
pub const GENESIS: [u8; 32] = [0; 32];

pub fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(covers_seq: u64, head: &str, time: &str) -> String {
    format!("lockbox-audit-checkpoint\n{covers_seq}\n{head}\n{time}")
}

/// Signs checkpoints with the deployment's Ed25519 key.
pub struct CheckpointSigner {
    key: SigningKey,
}

impl CheckpointSigner {
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| CheckpointSigner { key })
            .map_err(|e| e.to_string())
    }

    pub fn sign(&self, message: &str) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(self.key.sign(message.as_bytes()).to_bytes())
    }

    /// The key that checks these signatures (SPKI PEM, as [`verify`] takes it).
    pub fn public_key_pem(&self) -> Result<String, String> {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        self.key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .map_err(|e| e.to_string())
    }
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    pub checkpoints_verified: u64,
    /// Each a sentence naming the file, line and sequence number.
    pub problems: Vec<String>,
    /// Records after the last checkpoint (not vouched for by a signature).
    pub uncovered_tail: u64,
    /// `live`: the last file ends in a record still being written (not counted).
    pub partial_tail: bool,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks `files` (in rotation order) as one chain. With `public_key` (SPKI PEM), checkpoint
/// signatures are checked too. `live` accepts records after the last checkpoint (a log
/// still being written); otherwise they mean the tail was cut off.
pub fn verify(files: &[&Path], public_key: Option<&str>, live: bool) -> Result<Report, String> {
    let mut check = ChainCheck::new(public_key, live)?;
    for (index, file) in files.iter().enumerate() {
        let bytes = read_regular_file(file).map_err(|e| format!("{}: {e}", file.display()))?;
        check.file(
            &file.display().to_string(),
            &bytes,
            index + 1 == files.len(),
        );
    }
    Ok(check.finish())
}

/// The whole of a file that must be a regular one: a FIFO or a device put in the audit
/// folder in a segment's place would otherwise block a reader, or feed it without end
/// (opened without waiting for a FIFO's writer, and refused).
pub fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_regular_file(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// An audit file opened for reading, refused unless it is a regular file (see
/// [`read_regular_file`]).
pub fn open_regular_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is not a regular file (an audit file is never a FIFO, a device or a folder)",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// `verify`, fed one file's bytes at a time: a caller that goes on to use those very bytes
/// (an export) checks what it uses, not a second read of the files.
pub struct ChainCheck {
    key: Option<VerifyingKey>,
    live: bool,
    report: Report,
    prev_hash: [u8; 32],
    prev_seq: Option<u64>,
    since_checkpoint: u64,
}

impl ChainCheck {
    pub fn new(public_key: Option<&str>, live: bool) -> Result<Self, String> {
        let key = match public_key {
            Some(pem) => Some(
                VerifyingKey::from_public_key_pem(pem).map_err(|e| format!("public key: {e}"))?,
            ),
            None => None,
        };
        Ok(ChainCheck {
            key,
            live,
            report: Report::default(),
            prev_hash: GENESIS,
            prev_seq: None,
            since_checkpoint: 0,
        })
    }

    /// The next file's bytes (`name` for the problems found); `last`: no file follows, so
    /// with `live` its incomplete last line is a record being written.
    pub fn file(&mut self, name: &str, bytes: &[u8], last: bool) {
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        } else if !bytes.is_empty() {
            if self.live && last {
                // The writer is appending right now.
                self.report.partial_tail = true;
            } else {
                self.report.problems.push(format!(
                    "{name}: the last line is incomplete: the file was truncated mid-record"
                ));
            }
            lines.pop();
        }
        for (i, line) in lines.iter().enumerate() {
            self.line(&format!("{name} line {}", i + 1), line);
        }
    }

    fn line(&mut self, at: &str, line: &[u8]) {
        let report = &mut self.report;
        let record: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                report.problems.push(format!(
                    "{at}: not a JSON record ({e}): the record was altered"
                ));
                self.prev_hash = line_hash(line);
                return;
            }
        };
        let seq = record.get("seq").and_then(|s| s.as_u64());
        let at = format!("{at} (seq {})", seq.map_or("?".into(), |s| s.to_string()));
        report.records += 1;
        match (self.prev_seq, seq) {
            (_, None) => report.problems.push(format!("{at}: no sequence number")),
            (Some(p), Some(s)) if p.checked_add(1) == Some(s) => {}
            (Some(p), Some(s)) if s <= p => report.problems.push(format!(
                "{at}: sequence goes back from {p} to {s}: records were reordered or inserted"
            )),
            (Some(p), Some(s)) => report.problems.push(format!(
                "{at}: sequence jumps from {p} to {s}: {} record(s) were deleted",
                s - p - 1
            )),
            (None, Some(_)) => {}
        }
        let claimed_prev = record.get("prev").and_then(|p| p.as_str()).unwrap_or("");
        if self.prev_seq.is_none()
            && report.records == 1
            && (seq != Some(1) || claimed_prev != hex::encode(GENESIS))
        {
            report.problems.push(format!(
                "{at}: the log does not start at the first record: earlier records are missing (or pass the earlier files first)"
            ));
        } else if claimed_prev != hex::encode(self.prev_hash) {
            report.problems.push(format!(
                "{at}: hash chain broken: `prev` does not match the record before it (that record was changed, or this one was inserted, moved or altered)"
            ));
        }
        if record.get("type").and_then(|t| t.as_str()) == Some("checkpoint") {
            report.checkpoints += 1;
            self.since_checkpoint = 0;
            check_checkpoint(
                &record,
                &self.prev_hash,
                self.prev_seq,
                self.key.as_ref(),
                &at,
                report,
            );
        } else {
            self.since_checkpoint += 1;
        }
        report.first_seq = report.first_seq.or(seq);
        if seq.is_some() {
            report.last_seq = seq;
            self.prev_seq = seq;
        }
        self.prev_hash = line_hash(line);
    }

    pub fn finish(mut self) -> Report {
        self.report.uncovered_tail = self.since_checkpoint;
        if self.since_checkpoint > 0 && !self.live {
            self.report.problems.push(format!(
                "the last {} record(s) are not followed by a checkpoint: the log was truncated, or the proxy is still running or crashed",
                self.since_checkpoint
            ));
        }
        self.report
    }
}

fn check_checkpoint(
    record: &serde_json::Value,
    prev_hash: &[u8; 32],
    prev_seq: Option<u64>,
    key: Option<&VerifyingKey>,
    at: &str,
    report: &mut Report,
) {
    let covers = record.get("covers_seq").and_then(|v| v.as_u64());
    let head = record.get("head").and_then(|v| v.as_str()).unwrap_or("");
    if covers != prev_seq || head != hex::encode(prev_hash) {
        report.problems.push(format!(
            "{at}: checkpoint does not match the records before it"
        ));
        return;
    }
    let Some(key) = key else { return };
    if checkpoint_signed(record, key) {
        report.checkpoints_verified += 1
    } else {
        report.problems.push(format!(
            "{at}: checkpoint signature is not valid for this public key"
        ))
    }
}

/// Whether a checkpoint record's signature holds for `key`: it signs the sequence number,
/// head hash and time the record states (whether they match the records before it is the
/// caller's to check).
pub(crate) fn checkpoint_signed(record: &serde_json::Value, key: &VerifyingKey) -> bool {
    let covers = record.get("covers_seq").and_then(|v| v.as_u64());
    let head = record.get("head").and_then(|v| v.as_str()).unwrap_or("");
    let time = record.get("time").and_then(|v| v.as_str()).unwrap_or("");
    let signature = record
        .get("signature")
        .and_then(|v| v.as_str())
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok());
    let message = checkpoint_message(covers.unwrap_or(0), head, time);
    signature.is_some_and(|sig| key.verify(message.as_bytes(), &sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_sequence_number_is_a_problem_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let zeros = hex::encode(GENESIS);
        std::fs::write(
            &path,
            format!(
                "{{\"seq\":{},\"prev\":\"{zeros}\",\"type\":\"x\"}}\n{{\"seq\":0,\"prev\":\"00\",\"type\":\"x\"}}\n",
                u64::MAX
            ),
        )
        .expect("write");
        let report = verify(&[&path], None, false).expect("verify");
        assert!(
            report.problems.iter().any(|p| p.contains("goes back")),
            "{:?}",
            report.problems
        );
    }
}
