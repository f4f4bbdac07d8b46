//! What the policy's unit tests share: users and a configuration of two databases.

use std::path::Path;

use crate::config::{Config, Role, User};

pub(crate) fn user(name: &str, roles: &[&str]) -> User {
    User {
        name: name.into(),
        roles: roles.iter().map(|r| Role::from((*r).to_owned())).collect(),
        api_key_sha256: None,
        mfa: true,
        groups: Vec::new(),
        email: None,
    }
}

/// `hr` names its approvers (cleo); `sales` names none, so every approver is one.
pub(crate) fn two_databases() -> Config {
    let text = "[proxy]\nlisten = \"127.0.0.1:6432\"\nallow_plaintext_loopback = true\n\
                [token]\nsigning_key = \"signing.pem\"\n\
                [[databases]]\nname = \"sales\"\nhost = \"h\"\nuser = \"u\"\n\
                [databases.access.read]\nuser = \"r\"\n\
                [[databases]]\nname = \"hr\"\nhost = \"h\"\nuser = \"u\"\napprovers = [\"cleo\"]\n\
                [databases.access.read]\nuser = \"r\"\n";
    Config::from_toml(text, Path::new(".")).expect("config")
}
