//! `[[users]]`: who may use the API, with which roles, and how they prove it.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserFile {
    pub name: String,
    pub roles: Vec<Role>,
    /// `sha256:<hex>` of the user's API key (`lockbox keygen api-key`). May be left out
    /// when `[oidc]` is configured and the user signs in with identity tokens only.
    pub api_key_hash: Option<String>,
    /// The key was issued to someone who signed in with multi-factor authentication.
    #[serde(default)]
    pub mfa: bool,
    /// Groups (isolated identities, teams) that JIT rules can match on.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Where notifications for this user go.
    pub email: Option<String>,
}

/// What a person may do through the control plane. Besides the built-in roles, any name
/// (`oncall`, …) can be given to users and named by rules and the break-glass policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub enum Role {
    Engineer,
    /// A customer approver.
    Approver,
    Admin,
    Auditor,
    /// A provider-side (internal) approver.
    SupportLead,
    Named(String),
}

impl From<String> for Role {
    fn from(name: String) -> Role {
        match name.as_str() {
            "engineer" => Role::Engineer,
            "approver" => Role::Approver,
            "admin" => Role::Admin,
            "auditor" => Role::Auditor,
            "support-lead" => Role::SupportLead,
            _ => Role::Named(name),
        }
    }
}

impl From<Role> for String {
    fn from(role: Role) -> String {
        role.as_str().to_owned()
    }
}

impl Role {
    pub fn as_str(&self) -> &str {
        match self {
            Role::Engineer => "engineer",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::SupportLead => "support-lead",
            Role::Named(name) => name,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub roles: Vec<Role>,
    /// Raw SHA-256 of the API key (none: identity tokens only).
    pub api_key_sha256: Option<[u8; 32]>,
    /// Signed in with multi-factor authentication (from the credential).
    pub mfa: bool,
    pub groups: Vec<String>,
    pub email: Option<String>,
}

impl User {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

pub(super) fn validate_users(list: Vec<UserFile>, oidc: bool) -> Result<Vec<User>, ConfigError> {
    let mut seen_names = HashMap::new();
    let mut seen_keys = HashMap::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, user) in list.into_iter().enumerate() {
        let key = |field: &str| format!("users[{i}].{field}");
        if user.name.is_empty() {
            return Err(invalid(key("name"), "must not be empty"));
        }
        if user.roles.is_empty() {
            return Err(invalid(key("roles"), "a user needs at least one role"));
        }
        let hash = match &user.api_key_hash {
            Some(text) => Some(parse_key_hash(text).map_err(|m| invalid(key("api_key_hash"), m))?),
            None if oidc => None,
            None => {
                return Err(invalid(
                    key("api_key_hash"),
                    "is required (only users of an [oidc] provider may go without an API key)",
                ))
            }
        };
        if seen_names.insert(user.name.clone(), i).is_some() {
            return Err(invalid(
                key("name"),
                format!("user `{}` is listed twice", user.name),
            ));
        }
        if hash.is_some_and(|h| seen_keys.insert(h, i).is_some()) {
            return Err(invalid(key("api_key_hash"), "two users share one API key"));
        }
        out.push(User {
            name: user.name,
            roles: user.roles,
            api_key_sha256: hash,
            mfa: user.mfa,
            groups: user.groups,
            email: user.email,
        });
    }
    Ok(out)
}

fn parse_key_hash(text: &str) -> Result<[u8; 32], String> {
    let hex_part = text.strip_prefix("sha256:").ok_or_else(|| {
        "must look like `sha256:<64 hex digits>` (see `lockbox keygen api-key`)".to_string()
    })?;
    let bytes = hex::decode(hex_part).map_err(|e| format!("not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| "a SHA-256 hash has 64 hex digits".to_string())
}
