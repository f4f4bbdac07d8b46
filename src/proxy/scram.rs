//! SCRAM-SHA-256 (RFC 5802/7677) as the client of an upstream login, with the one costly
//! step cached. `Hi(password, salt, iterations)` is thousands of HMACs (most of a login's
//! CPU); PostgreSQL keeps a role's salt and iteration count until its password changes, so
//! the salted password is remembered per (password, salt, iterations), as pgbouncer does.
//! A changed password or salt is a different key: nothing stale is ever used.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// PostgreSQL's default is 4096; far more would make a hostile server burn our CPU.
const MAX_ITERATIONS: u32 = 100_000;
/// Salted passwords remembered (one per role and password); cleared when full.
const CACHE_ENTRIES: usize = 4096;
/// A salted password not used for this long is forgotten at the next miss: there is one
/// per grant's role, of no use once the grant is over, and without this the map grew by
/// every grant until it was full (a soak's memory rose all the way).
const IDLE: Duration = Duration::from_secs(300);
/// `n,,`: no channel binding (the client does not support it).
const GS2_HEADER: &str = "n,,";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScramError {
    #[error("SCRAM: {0}")]
    Protocol(&'static str),
    #[error("SCRAM: the server reported an error: {0}")]
    Server(String),
    #[error("SCRAM: the server's signature does not match (not the server we know)")]
    ServerSignature,
}

type CacheKey = ([u8; 32], Vec<u8>, u32);

struct Salted {
    value: [u8; 32],
    used: Instant,
}

static SALTED: LazyLock<Mutex<HashMap<CacheKey, Salted>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// One SCRAM exchange, client side.
pub(crate) struct ScramClient {
    password: Vec<u8>,
    nonce: String,
    /// After the server's first message: what the final message is checked against.
    expect: Option<([u8; 32], String)>,
    /// The server's final message proved it knows the password.
    verified: bool,
}

impl ScramClient {
    pub(crate) fn new(password: &str) -> ScramClient {
        let mut raw = [0u8; 18];
        rand::rng().fill_bytes(&mut raw);
        ScramClient {
            password: normalize(password),
            nonce: STANDARD.encode(raw),
            expect: None,
            verified: false,
        }
    }

    /// The client-first-message.
    pub(crate) fn first_message(&self) -> String {
        format!("{GS2_HEADER}n=,r={}", self.nonce)
    }

    /// Answers the server-first-message with the client-final-message.
    pub(crate) fn respond(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| ScramError::Protocol("server-first-message is not UTF-8"))?;
        let (nonce, salt, iterations) = parse_server_first(server_first)?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Protocol(
                "the server's nonce does not extend ours",
            ));
        }
        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(GS2_HEADER));
        let auth_message = format!("n=,r={},{server_first},{without_proof}", self.nonce);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        proof.iter_mut().zip(signature).for_each(|(p, s)| *p ^= s);
        self.expect = Some((hmac(&salted, b"Server Key"), auth_message));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    /// Checks the server-final-message: the server proves it knows the password too.
    pub(crate) fn verified(&self) -> bool {
        self.verified
    }

    pub(crate) fn verify(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let (server_key, auth_message) = self
            .expect
            .as_ref()
            .ok_or(ScramError::Protocol("server-final-message out of order"))?;
        let server_final = std::str::from_utf8(server_final)
            .map_err(|_| ScramError::Protocol("server-final-message is not UTF-8"))?;
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(ScramError::Server(error.chars().take(200).collect()));
        }
        let verifier = server_final
            .split(',')
            .find_map(|part| part.strip_prefix("v="))
            .ok_or(ScramError::Protocol("server-final-message has no verifier"))?;
        let verifier = STANDARD
            .decode(verifier)
            .map_err(|_| ScramError::Protocol("server verifier is not base64"))?;
        let mut mac = new_hmac(server_key);
        mac.update(auth_message.as_bytes());
        mac.verify_slice(&verifier)
            .map_err(|_| ScramError::ServerSignature)?;
        self.verified = true;
        Ok(())
    }
}

/// `r=<nonce>,s=<salt>,i=<iterations>` (extensions after them are ignored).
fn parse_server_first(message: &str) -> Result<(&str, Vec<u8>, u32), ScramError> {
    let mut parts = message.split(',');
    let mut field = |prefix: &str, what: &'static str| {
        parts
            .next()
            .and_then(|p| p.strip_prefix(prefix))
            .ok_or(ScramError::Protocol(what))
    };
    let nonce = field("r=", "server-first-message has no nonce")?;
    let salt = field("s=", "server-first-message has no salt")?;
    let iterations = field("i=", "server-first-message has no iteration count")?;
    let salt = STANDARD
        .decode(salt)
        .map_err(|_| ScramError::Protocol("salt is not base64"))?;
    let iterations: u32 = iterations
        .parse()
        .map_err(|_| ScramError::Protocol("iteration count is not a number"))?;
    if iterations == 0 || iterations > MAX_ITERATIONS {
        return Err(ScramError::Protocol("iteration count out of range"));
    }
    Ok((nonce, salt, iterations))
}

/// Salted passwords cached now (the census counts them).
pub(crate) fn cached() -> usize {
    SALTED.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// `Hi(password, salt, iterations)`, remembered.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    salted_password_at(password, salt, iterations, Instant::now())
}

fn salted_password_at(password: &[u8], salt: &[u8], iterations: u32, now: Instant) -> [u8; 32] {
    // Keyed by the password's hash, so the map holds no password in the clear.
    let key: CacheKey = (Sha256::digest(password).into(), salt.to_vec(), iterations);
    let cache = || SALTED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(hit) = cache().get_mut(&key) {
        hit.used = hit.used.max(now);
        return hit.value;
    }
    // Thousands of HMACs: the session thread's other sessions go on elsewhere meanwhile.
    let value = crate::runtime::blocking(|| hi(password, salt, iterations));
    let mut cache = cache();
    // A scan per miss: far cheaper than the thousands of HMACs the miss just cost.
    cache.retain(|_, e| now.saturating_duration_since(e.used) < IDLE);
    if cache.len() >= CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(key, Salted { value, used: now });
    value
}

#[cfg(test)]
fn is_cached(password: &[u8], salt: &[u8], iterations: u32) -> bool {
    let key: CacheKey = (Sha256::digest(password).into(), salt.to_vec(), iterations);
    SALTED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains_key(&key)
}

fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut mac = new_hmac(password);
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut result = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        result.iter_mut().zip(u).for_each(|(r, b)| *r ^= b);
    }
    result
}

fn new_hmac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; the error case cannot happen.
    <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = new_hmac(key);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// SASLprep when the password allows it, else its bytes, as PostgreSQL does.
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's side, as PostgreSQL computes it from a stored verifier.
    fn server_final(password: &str, salt: &[u8], i: u32, auth_message: &str) -> String {
        let salted = hi(&normalize(password), salt, i);
        let server_key = hmac(&salted, b"Server Key");
        format!(
            "v={}",
            STANDARD.encode(hmac(&server_key, auth_message.as_bytes()))
        )
    }

    #[test]
    fn the_proof_verifies_against_the_password_and_the_server_must_know_it_too() {
        let salt = b"0123456789abcdef";
        let mut client = ScramClient::new("s3cret");
        let first = client.first_message();
        let nonce = first.rsplit("r=").next().expect("nonce").to_owned();
        let server_first = format!("r={nonce}SERVERPART,s={},i=4096", STANDARD.encode(salt));
        let last = client.respond(server_first.as_bytes()).expect("respond");

        // What the server checks: H(proof XOR signature) equals the stored key.
        let (without_proof, proof) = last.rsplit_once(",p=").expect("proof");
        let auth_message = format!("n=,r={nonce},{server_first},{without_proof}");
        let salted = hi(b"s3cret", salt, 4096);
        let stored: [u8; 32] = Sha256::digest(hmac(&salted, b"Client Key")).into();
        let signature = hmac(&stored, auth_message.as_bytes());
        let mut client_key = STANDARD.decode(proof).expect("base64");
        client_key
            .iter_mut()
            .zip(signature)
            .for_each(|(k, s)| *k ^= s);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&client_key)), stored);

        assert!(!client.verified());
        client
            .verify(server_final("s3cret", salt, 4096, &auth_message).as_bytes())
            .expect("the real server");
        assert!(client.verified());
        assert!(matches!(
            client.verify(server_final("other", salt, 4096, &auth_message).as_bytes()),
            Err(ScramError::ServerSignature)
        ));
    }

    #[test]
    fn hostile_server_first_messages_are_refused() {
        let mut client = ScramClient::new("pw");
        let nonce = client
            .first_message()
            .rsplit("r=")
            .next()
            .expect("n")
            .to_owned();
        let salt = STANDARD.encode(b"salt");
        for bad in [
            "garbage".to_owned(),
            format!("r=someone-else,s={salt},i=4096"),
            format!("r={nonce},s={salt},i=4096"),
            format!("r={nonce}x,s=!!,i=4096"),
            format!("r={nonce}x,s={salt},i=0"),
            format!("r={nonce}x,s={salt},i=999999999"),
            format!("r={nonce}x,s={salt}"),
        ] {
            assert!(client.respond(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(client.verify(b"v=AAAA").is_err(), "no final before a first");
    }

    #[test]
    fn a_miss_computes_off_the_session_thread_and_a_hit_does_not() {
        let before = crate::runtime::blocking_calls();
        let salted = salted_password(b"pw-miss", b"salt-miss", 4096);
        assert_eq!(crate::runtime::blocking_calls(), before + 1);
        assert_eq!(salted_password(b"pw-miss", b"salt-miss", 4096), salted);
        assert_eq!(crate::runtime::blocking_calls(), before + 1);
    }

    #[test]
    fn a_different_salt_or_password_is_never_served_from_the_cache() {
        let a = salted_password(b"pw", b"salt-a", 4096);
        assert_eq!(salted_password(b"pw", b"salt-a", 4096), a);
        assert_ne!(salted_password(b"pw", b"salt-b", 4096), a);
        assert_ne!(salted_password(b"pw2", b"salt-a", 4096), a);
        assert_ne!(salted_password(b"pw", b"salt-a", 4097), a);
        assert_eq!(a, hi(b"pw", b"salt-a", 4096));
    }

    #[test]
    fn a_salted_password_unused_for_a_while_is_forgotten() {
        let start = Instant::now();
        salted_password_at(b"idle-pw", b"idle-salt", 4096, start);
        salted_password_at(b"busy-pw", b"idle-salt", 4096, start);
        // The busy one is used again just before the idle limit; a miss after it sweeps.
        salted_password_at(
            b"busy-pw",
            b"idle-salt",
            4096,
            start + IDLE - Duration::from_secs(1),
        );
        salted_password_at(
            b"late-pw",
            b"idle-salt",
            4096,
            start + IDLE + Duration::from_secs(1),
        );
        assert!(!is_cached(b"idle-pw", b"idle-salt", 4096));
        assert!(is_cached(b"busy-pw", b"idle-salt", 4096));
        assert!(is_cached(b"late-pw", b"idle-salt", 4096));
    }
}
