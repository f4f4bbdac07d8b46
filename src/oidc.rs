//! Identity tokens from an external OIDC provider, as an alternative to API keys: a JWT
//! validated against a configured JWKS file (issuer, audience, expiry, signature), whose
//! user must be configured in `[[users]]` (roles come from there), and whose `amr` claim
//! says whether the person signed in with multi-factor authentication.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// `amr` values (RFC 8176) that are a second factor on their own.
const SECOND_FACTORS: &[&str] = &[
    "mfa", "otp", "hwk", "swk", "sms", "tel", "sc", "fpt", "face", "iris", "retina", "vbm",
];

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("JWKS file {path}: {message}")]
    Keys { path: String, message: String },
    #[error("identity token refused: {0}")]
    Refused(String),
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies identity tokens against one issuer's keys.
pub struct OidcVerifier {
    issuer: String,
    audience: String,
    username_claim: String,
    keys: Vec<Key>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("username_claim", &self.username_claim)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Who a verified identity token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub mfa: bool,
}

impl OidcVerifier {
    /// Reads the provider's public keys. Symmetric (`oct`) keys are refused: a shared
    /// secret would let anyone who holds it mint identities.
    pub fn load(
        jwks_file: &Path,
        issuer: &str,
        audience: &str,
        username_claim: &str,
    ) -> Result<OidcVerifier, OidcError> {
        let keys_error = |message: String| OidcError::Keys {
            path: jwks_file.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(jwks_file).map_err(|e| keys_error(e.to_string()))?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| keys_error(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                    Algorithm::ES384
                }
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => {
                    return Err(keys_error(
                        "only RSA, EC (P-256, P-384) and Ed25519 public keys are accepted".into(),
                    ))
                }
            };
            // A key that names its algorithm is used with that one only.
            let algorithm = match jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok())
            {
                Some(named)
                    if named != algorithm
                        && !(algorithm == Algorithm::RS256
                            && matches!(
                                named,
                                Algorithm::RS384
                                    | Algorithm::RS512
                                    | Algorithm::PS256
                                    | Algorithm::PS384
                                    | Algorithm::PS512
                            )) =>
                {
                    return Err(keys_error(format!(
                        "key `alg` {named:?} does not fit its key type"
                    )))
                }
                Some(named) => named,
                None => algorithm,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| keys_error(e.to_string()))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Err(keys_error("holds no keys".into()));
        }
        Ok(OidcVerifier {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            username_claim: username_claim.to_owned(),
            keys,
        })
    }

    /// Checks signature (with the key the header names, in that key's algorithm), issuer,
    /// audience and lifetime, and reads the user name and MFA.
    pub fn verify(&self, token: &str) -> Result<Identity, OidcError> {
        let refused = |m: String| OidcError::Refused(m);
        let header = jsonwebtoken::decode_header(token).map_err(|e| refused(e.to_string()))?;
        let key = self
            .keys
            .iter()
            .find(|k| (header.kid.is_none() || k.kid == header.kid) && k.algorithm == header.alg)
            .ok_or_else(|| refused("no configured key matches the token's kid and alg".into()))?;
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
            .map_err(|e| refused(e.to_string()))?;
        let claims = data.claims;
        let name = claims
            .get(&self.username_claim)
            .and_then(|v| v.as_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| refused(format!("no `{}` claim", self.username_claim)))?
            .to_owned();
        let amr: Vec<String> = claims
            .get("amr")
            .map(|v| {
                serde_json::from_value::<Amr>(v.clone())
                    .map(|a| a.0)
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        Ok(Identity {
            name,
            mfa: mfa_from_amr(&amr),
        })
    }
}

#[derive(Deserialize)]
struct Amr(Vec<String>);

/// `mfa` in `amr`, or a second factor next to another method.
pub fn mfa_from_amr(amr: &[String]) -> bool {
    amr.iter().any(|m| m == "mfa")
        || (amr.len() >= 2 && amr.iter().any(|m| SECOND_FACTORS.contains(&m.as_str())))
}

/// A bearer credential that looks like a JWT rather than an API key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.split('.').count() == 3 && credential.starts_with("eyJ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        std::fs::write(
            &path,
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
        )
        .expect("write");
        let err = OidcVerifier::load(&path, "i", "a", "sub").expect_err("oct refused");
        assert!(err.to_string().contains("only RSA, EC"), "{err}");
        std::fs::write(&path, r#"{"keys":[]}"#).expect("write");
        assert!(OidcVerifier::load(&path, "i", "a", "sub").is_err());
    }

    #[test]
    fn mfa_needs_mfa_or_a_second_factor() {
        let amr = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(mfa_from_amr(&amr(&["mfa"])));
        assert!(mfa_from_amr(&amr(&["pwd", "otp"])));
        assert!(!mfa_from_amr(&amr(&["pwd"])));
        assert!(!mfa_from_amr(&amr(&["otp"])), "one factor alone is not two");
        assert!(!mfa_from_amr(&[]));
    }
}
