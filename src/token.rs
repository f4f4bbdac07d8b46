//! Lockbox tokens: EdDSA-signed JWTs that carry one approved grant.
//!
//! The algorithm is pinned to EdDSA; `alg: none`, HMAC confusion and the like fail
//! before any claim is looked at. The token text is never logged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::AccessLevel;

/// Clock skew tolerated between the issuer and the proxy.
pub const LEEWAY_SECS: u64 = 5;

/// Claims of a lockbox token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The engineer.
    pub sub: String,
    /// The database name the engineer connects to.
    pub db: String,
    /// The access request this token was issued for.
    pub rid: String,
    pub access: AccessLevel,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
}

/// Why a token was refused; the text is shown to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token algorithm is not allowed")]
    BadAlgorithm,
    #[error("token was issued for another audience")]
    WrongAudience,
    #[error("token was issued by an unknown issuer")]
    WrongIssuer,
    #[error("token is missing claim `{0}`")]
    MissingClaim(String),
    #[error("token is malformed")]
    Malformed,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read signing key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("signing key {path} is not a PKCS#8 PEM Ed25519 private key: {message}")]
    Parse { path: String, message: String },
}

/// Signs and verifies lockbox tokens.
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    public_key_pem: String,
    /// Tokens whose signature and claims checked out, by the token's hash: every new
    /// session presents its token, and an engineer's client reconnects with the same one.
    /// Only the signature check is skipped on a hit; the time claims are checked each time.
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

/// A remembered token: its claims and when (unix seconds) it was last presented.
struct Verified {
    claims: Claims,
    used: u64,
}

/// Verified tokens remembered per key; cleared when full.
const VERIFIED_ENTRIES: usize = 4096;
/// A token not presented for this long is forgotten (its next use checks the signature
/// again): a revoked grant's token stays valid by its claims until they expire, hours
/// later, and was remembered all that time.
const VERIFIED_IDLE_SECS: u64 = 300;

impl TokenAuthority {
    /// Loads the Ed25519 private key (PKCS#8 PEM) and derives the public key from it.
    pub fn load(path: &Path, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_pem(&pem, issuer, audience).map_err(|message| KeyError::Parse {
            path: shown,
            message,
        })
    }

    pub fn from_pem(private_pem: &str, issuer: &str, audience: &str) -> Result<Self, String> {
        let key_pair = rcgen::KeyPair::from_pem(private_pem).map_err(|e| e.to_string())?;
        if key_pair.algorithm() != &rcgen::PKCS_ED25519 {
            return Err("the key is not an Ed25519 key".into());
        }
        let public_key_pem = key_pair.public_key_pem();
        let encoding =
            EncodingKey::from_ed_pem(private_pem.as_bytes()).map_err(|e| e.to_string())?;
        let decoding =
            DecodingKey::from_ed_pem(public_key_pem.as_bytes()).map_err(|e| e.to_string())?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub", "jti"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Ok(TokenAuthority {
            encoding,
            decoding,
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            public_key_pem,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// SPKI PEM of the verification key, for anyone who wants to check tokens offline.
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// Issues a token for `grant`, valid from now until `expires_at`.
    pub fn issue(&self, grant: &TokenGrant<'_>, expires_at: SystemTime) -> Result<String, String> {
        let now = unix(SystemTime::now());
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: grant.engineer.to_owned(),
            db: grant.database.to_owned(),
            rid: grant.request_id.to_owned(),
            access: grant.access,
            iat: now,
            nbf: now,
            // Rounded up: a whole-second `exp` must not cut the window short. Admission
            // still ends the session at the stored window's end, to the millisecond.
            exp: unix_ceil(expires_at),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding)
            .map_err(|e| e.to_string())
    }

    /// Verifies signature, algorithm, issuer, audience and time claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix(SystemTime::now());
        let known = self.verified().get_mut(&key).map(|v| {
            v.used = v.used.max(now);
            v.claims.clone()
        });
        if let Some(claims) = known {
            check_times(&claims, now)?;
            return Ok(claims);
        }
        let claims = self.decode(token)?;
        self.remember(key, claims.clone(), unix(SystemTime::now()));
        Ok(claims)
    }

    /// Caches a verified token, forgetting first those expired or idle by `now`: a cache
    /// that only emptied when full kept every token of the last few thousand grants.
    fn remember(&self, key: [u8; 32], claims: Claims, now: u64) {
        let mut verified = self.verified();
        verified.retain(|_, v| {
            now.saturating_sub(v.used) < VERIFIED_IDLE_SECS
                && check_times(&v.claims, now) != Err(TokenError::Expired)
        });
        if verified.len() >= VERIFIED_ENTRIES {
            verified.clear();
        }
        verified.insert(key, Verified { claims, used: now });
    }

    /// Verified tokens remembered now (the census counts them).
    pub(crate) fn cached(&self) -> usize {
        self.verified().len()
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Verified>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::BadAlgorithm
                }
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                _ => TokenError::Malformed,
            })
    }
}

/// The time claims as jsonwebtoken checks them (with the same leeway), for a token whose
/// signature was verified before.
fn check_times(claims: &Claims, now: u64) -> Result<(), TokenError> {
    if claims.exp < now.saturating_sub(LEEWAY_SECS) {
        return Err(TokenError::Expired);
    }
    if claims.nbf > now + LEEWAY_SECS {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// What a token grants.
pub struct TokenGrant<'a> {
    pub engineer: &'a str,
    pub database: &'a str,
    pub request_id: &'a str,
    pub access: AccessLevel,
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// `t` in whole seconds since the epoch, rounded up.
fn unix_ceil(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    since.as_secs() + u64::from(since.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_rounded_up_to_the_second() {
        let exact = UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(unix_ceil(exact), 100);
        assert_eq!(unix_ceil(exact + Duration::from_millis(1)), 101);
        assert_eq!(unix_ceil(exact + Duration::from_millis(999)), 101);
    }
    use base64::Engine;

    fn authority() -> TokenAuthority {
        let pem = crate::keys::generate_signing_key_pem().expect("keygen");
        TokenAuthority::from_pem(&pem, "lockbox", "lockbox-proxy").expect("load key")
    }

    fn grant() -> TokenGrant<'static> {
        TokenGrant {
            engineer: "eve",
            database: "sales",
            request_id: "req-1",
            access: AccessLevel::Read,
        }
    }

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn round_trip_keeps_claims() {
        let a = authority();
        let token = a
            .issue(&grant(), SystemTime::now() + Duration::from_secs(60))
            .expect("issue");
        let claims = a.verify(&token).expect("verify");
        assert_eq!(
            (claims.sub.as_str(), claims.db.as_str(), claims.rid.as_str()),
            ("eve", "sales", "req-1")
        );
        assert_eq!(claims.access, AccessLevel::Read);
    }

    #[test]
    fn a_remembered_token_still_has_its_time_claims_checked() {
        let a = authority();
        let token = a
            .issue(&grant(), SystemTime::now() + Duration::from_secs(60))
            .expect("issue");
        let first = a.verify(&token).expect("verify");
        assert_eq!(a.verify(&token).expect("verified from memory"), first);
        let now = unix(SystemTime::now());
        assert_eq!(check_times(&first, now), Ok(()));
        assert_eq!(
            check_times(&first, first.exp + LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        );
        assert_eq!(check_times(&first, first.exp + LEEWAY_SECS), Ok(()));
        assert_eq!(
            check_times(&first, first.nbf - LEEWAY_SECS - 1),
            Err(TokenError::NotYetValid)
        );
        // Another key never trusts what this one remembered.
        assert_eq!(authority().verify(&token), Err(TokenError::BadSignature));
        // A token altered in one byte is a different token.
        let mut altered = token.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("ascii");
        assert!(a.verify(&altered).is_err());
    }

    #[test]
    fn tokens_of_grants_long_over_are_forgotten() {
        let a = authority();
        let mut latest = None;
        for _ in 0..20 {
            let token = a
                .issue(&grant(), SystemTime::now() + Duration::from_secs(60))
                .expect("issue");
            latest = Some(a.verify(&token).expect("verify"));
        }
        assert_eq!(a.cached(), 20);
        // The next token verified after all of those expired is the only one kept.
        let claims = latest.expect("verified");
        a.remember([7; 32], claims.clone(), claims.exp + LEEWAY_SECS + 1);
        assert_eq!(a.cached(), 1);
    }

    #[test]
    fn tokens_not_presented_for_a_while_are_forgotten_though_still_valid() {
        let a = authority();
        let token = a
            .issue(&grant(), SystemTime::now() + Duration::from_secs(86_400))
            .expect("issue");
        // Read before the verification stamps its entry (in whole seconds), so a second
        // that turns between the two cannot make the entry look a second older than it is.
        let used = unix(SystemTime::now());
        let claims = a.verify(&token).expect("verify");
        a.remember([8; 32], claims.clone(), used + VERIFIED_IDLE_SECS - 1);
        assert_eq!(a.cached(), 2, "within the idle limit both stay");
        // One more second than the limit, for the entry stamped a second after `used`.
        a.remember([9; 32], claims, used + VERIFIED_IDLE_SECS + 1 + 1);
        assert_eq!(
            a.cached(),
            2,
            "the first, idle, is gone; the second and third stay"
        );
        assert!(
            a.verify(&token).is_ok(),
            "verified again from its signature"
        );
    }

    #[test]
    fn refusals_say_why() {
        let a = authority();
        let other = authority();
        let expired = a
            .issue(&grant(), SystemTime::now() - Duration::from_secs(60))
            .expect("issue");
        assert_eq!(a.verify(&expired), Err(TokenError::Expired));
        let forged = other
            .issue(&grant(), SystemTime::now() + Duration::from_secs(60))
            .expect("issue");
        assert_eq!(a.verify(&forged), Err(TokenError::BadSignature));
        let good = a
            .issue(&grant(), SystemTime::now() + Duration::from_secs(60))
            .expect("issue");
        let payload = good.split('.').nth(1).expect("payload");
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        assert!(a.verify(&none).is_err(), "alg none must be refused");
        let hs = format!("{}.{payload}.c2ln", b64(r#"{"alg":"HS256","typ":"JWT"}"#));
        assert_eq!(a.verify(&hs), Err(TokenError::BadAlgorithm));
        assert_eq!(a.verify("not a token"), Err(TokenError::Malformed));
        let wrong_aud = TokenAuthority::from_pem(
            &crate::keys::generate_signing_key_pem().expect("keygen"),
            "lockbox",
            "elsewhere",
        )
        .expect("load");
        let token = wrong_aud
            .issue(&grant(), SystemTime::now() + Duration::from_secs(60))
            .expect("issue");
        assert!(a.verify(&token).is_err());
    }
}
