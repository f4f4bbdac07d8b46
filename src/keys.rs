//! Key material: Ed25519 signing keys for tokens, API keys for people.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A fresh Ed25519 private key, PKCS#8 PEM.
pub fn generate_signing_key_pem() -> Result<String, rcgen::Error> {
    Ok(rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?.serialize_pem())
}

/// A fresh API key: `lbk_` and 32 random bytes, URL-safe base64.
pub fn generate_api_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "lbk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A fresh password for an upstream role: 32 random bytes, URL-safe base64 (nothing to
/// escape in a config file, a connection string or a SQL literal).
pub fn generate_password() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of an API key. API keys carry 256 random bits, so a fast hash is enough: there
/// is nothing to brute-force, unlike a human password.
pub fn api_key_sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The form the config file stores: `sha256:<hex>`.
pub fn api_key_hash_string(key: &str) -> String {
    format!("sha256:{}", hex::encode(api_key_sha256(key)))
}
