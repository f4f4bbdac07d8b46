//! Identity newtypes, so the compiler keeps a session id apart from a request id.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// One client connection to the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub String);

/// One access request (and, once approved, its grant).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub String);

impl SessionId {
    pub fn generate() -> Self {
        SessionId(random_id("s"))
    }
}

impl RequestId {
    pub fn generate() -> Self {
        RequestId(random_id("req"))
    }
}

/// `prefix-` followed by 16 hex digits (64 random bits): short enough to type,
/// long enough never to collide in practice.
fn random_id(prefix: &str) -> String {
    let bits: u64 = rand::rng().random();
    format!("{prefix}-{bits:016x}")
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
