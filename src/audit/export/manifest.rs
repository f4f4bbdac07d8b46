//! `manifest.json`: what an export holds, so the export can be checked on its own and tied
//! back to the original chain (`first_prev`, `last_hash`) and its signed checkpoints.

use base64::Engine;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ExportFormat;
use crate::audit::chain::CheckpointSigner;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const MANIFEST_VERSION: u32 = 1;

/// Which records were asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    pub since: Option<String>,
    pub until: Option<String>,
    pub database: Option<String>,
    /// Only records after this sequence number (a schedule's watermark).
    pub after_seq: Option<u64>,
}

/// One part file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the export's folder, `/`-separated.
    pub path: String,
    pub date: String,
    /// `None` for records that name no database (checkpoints, failed logins, …).
    pub database: Option<String>,
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub manifest_version: u32,
    pub created_at: String,
    /// Who ran it: a user for scheduled and API runs, `lockbox audit export` for the CLI.
    pub created_by: String,
    pub schedule: Option<String>,
    pub format: ExportFormat,
    pub selection: Selection,
    /// The last record of the trail this export looked at: every record up to here that
    /// matches the selection is in it.
    pub through_seq: Option<u64>,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// `prev` of the first exported record: the hash of the record before it in the trail.
    pub first_prev: Option<String>,
    /// Line hash of the last exported record: the next record's `prev`, or a checkpoint's `head`.
    pub last_hash: Option<String>,
    pub files: Vec<FileEntry>,
    /// Ed25519 signature (base64) over [`signed_message`], with the deployment's signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Manifest {
    /// The bytes a signature covers: a domain tag and the SHA-256 of the manifest's compact
    /// JSON without its signature. Serialization order is the struct's, so it is stable.
    pub fn signed_message(&self) -> String {
        let unsigned = Manifest {
            signature: None,
            ..self.clone()
        };
        let bytes = serde_json::to_vec(&unsigned).unwrap_or_default();
        format!(
            "lockbox-audit-export\n{}",
            hex::encode(Sha256::digest(&bytes))
        )
    }

    pub fn sign(&mut self, signer: &CheckpointSigner) {
        self.signature = Some(signer.sign(&self.signed_message()));
    }

    /// Checks the signature with `key`; a sentence saying what is wrong otherwise.
    pub fn check_signature(&self, key: &VerifyingKey) -> Result<(), String> {
        let Some(signature) = &self.signature else {
            return Err("the manifest is not signed".into());
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .ok()
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
            .ok_or("the manifest's signature is not an Ed25519 signature")?;
        key.verify(self.signed_message().as_bytes(), &signature)
            .map_err(|_| {
                "the manifest's signature is not valid for this public key: the manifest was changed or signed by another key".to_string()
            })
    }
}

/// Parses an SPKI PEM public key.
pub fn public_key(pem: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(pem).map_err(|e| format!("public key: {e}"))
}
