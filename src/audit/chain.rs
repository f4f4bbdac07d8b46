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
    let key = match public_key {
        Some(pem) => {
            Some(VerifyingKey::from_public_key_pem(pem).map_err(|e| format!("public key: {e}"))?)
        }
        None => None,
    };
    let mut report = Report::default();
    let mut prev_hash = GENESIS;
    let mut prev_seq: Option<u64> = None;
    let mut since_checkpoint = 0u64;
    for (index, file) in files.iter().enumerate() {
        let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let name = file.display().to_string();
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        } else if !bytes.is_empty() {
            if live && index + 1 == files.len() {
                // The writer is appending right now.
                report.partial_tail = true;
            } else {
                report.problems.push(format!(
                    "{name}: the last line is incomplete: the file was truncated mid-record"
                ));
            }
            lines.pop();
        }
        for (i, line) in lines.iter().enumerate() {
            let at = format!("{name} line {}", i + 1);
            let record: serde_json::Value = match serde_json::from_slice(line) {
                Ok(v) => v,
                Err(e) => {
                    report.problems.push(format!(
                        "{at}: not a JSON record ({e}): the record was altered"
                    ));
                    prev_hash = line_hash(line);
                    continue;
                }
            };
            let seq = record.get("seq").and_then(|s| s.as_u64());
            let at = format!("{at} (seq {})", seq.map_or("?".into(), |s| s.to_string()));
            report.records += 1;
            match (prev_seq, seq) {
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
            if prev_seq.is_none()
                && report.records == 1
                && (seq != Some(1) || claimed_prev != hex::encode(GENESIS))
            {
                report.problems.push(format!(
                    "{at}: the log does not start at the first record: earlier records are missing (or pass the earlier files first)"
                ));
            } else if claimed_prev != hex::encode(prev_hash) {
                report.problems.push(format!(
                    "{at}: hash chain broken: `prev` does not match the record before it (that record was changed, or this one was inserted, moved or altered)"
                ));
            }
            if record.get("type").and_then(|t| t.as_str()) == Some("checkpoint") {
                report.checkpoints += 1;
                since_checkpoint = 0;
                check_checkpoint(
                    &record,
                    &prev_hash,
                    prev_seq,
                    key.as_ref(),
                    &at,
                    &mut report,
                );
            } else {
                since_checkpoint += 1;
            }
            report.first_seq = report.first_seq.or(seq);
            if seq.is_some() {
                report.last_seq = seq;
                prev_seq = seq;
            }
            prev_hash = line_hash(line);
        }
    }
    report.uncovered_tail = since_checkpoint;
    if since_checkpoint > 0 && !live {
        report.problems.push(format!(
            "the last {since_checkpoint} record(s) are not followed by a checkpoint: the log was truncated, or the proxy is still running or crashed"
        ));
    }
    Ok(report)
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
    let time = record.get("time").and_then(|v| v.as_str()).unwrap_or("");
    if covers != prev_seq || head != hex::encode(prev_hash) {
        report.problems.push(format!(
            "{at}: checkpoint does not match the records before it"
        ));
        return;
    }
    let Some(key) = key else { return };
    let signature = record
        .get("signature")
        .and_then(|v| v.as_str())
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok());
    let message = checkpoint_message(covers.unwrap_or(0), head, time);
    match signature {
        Some(sig) if key.verify(message.as_bytes(), &sig).is_ok() => {
            report.checkpoints_verified += 1
        }
        _ => report.problems.push(format!(
            "{at}: checkpoint signature is not valid for this public key"
        )),
    }
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
