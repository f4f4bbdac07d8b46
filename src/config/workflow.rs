//! The workflow part of the configuration: `[policy]` (which databases need customer
//! approval, break-glass) and `[[rules]]` (JIT rules), as written and as validated.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, parse_duration, ConfigError, Database, Role};
use crate::policy::rules::{default_rules, Protection, Rule};
use crate::policy::AccessLevel;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// `"all"`, `"none"` or a list of database names. Unset: each database's `protected`.
    pub protect: Option<ProtectFile>,
    #[serde(default)]
    pub break_glass: BreakGlassFile,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ProtectFile {
    Word(String),
    List(Vec<String>),
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassFile {
    #[serde(default)]
    pub enabled: bool,
    /// Roles that may use it (e.g. `oncall`).
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Longest break-glass window.
    pub max_duration: Option<String>,
}

/// Emergency access: granted at once, short, flagged and reviewed afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    pub roles: Vec<Role>,
    pub max_duration: Duration,
}

/// Default longest break-glass window.
const BREAK_GLASS_MAX: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub name: String,
    #[serde(default)]
    pub databases: Vec<String>,
    #[serde(default)]
    pub access: Vec<AccessLevel>,
    pub min_duration: Option<String>,
    pub mfa: Option<bool>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub requesters: Vec<String>,
    pub deny: Option<String>,
    pub max_duration: Option<String>,
    #[serde(default)]
    pub internal_approvals: u32,
    pub internal_role: Option<Role>,
    #[serde(default)]
    pub customer_approvals: u32,
    pub request_ttl: Option<String>,
}

/// The protection the file asks for: `[policy] protect`, else each database's `protected`.
pub fn protection(
    file: Option<&ProtectFile>,
    databases: &BTreeMap<String, Database>,
) -> Result<Protection, ConfigError> {
    let protection = match file {
        None => {
            let protected: Vec<&String> = databases
                .values()
                .filter(|d| d.protected)
                .map(|d| &d.name)
                .collect();
            if protected.len() == databases.len() {
                Protection::All
            } else if protected.is_empty() {
                Protection::None
            } else {
                Protection::Only(protected.into_iter().cloned().collect())
            }
        }
        Some(ProtectFile::Word(word)) => match word.as_str() {
            "all" => Protection::All,
            "none" => Protection::None,
            other => {
                return Err(invalid(
                    "policy.protect",
                    format!("`{other}`: use \"all\", \"none\" or a list of databases"),
                ))
            }
        },
        Some(ProtectFile::List(list)) => Protection::Only(list.iter().cloned().collect()),
    };
    check_known("policy.protect", &protection, databases)?;
    Ok(protection)
}

/// A protection list may only name configured databases.
pub fn check_known(
    key: &str,
    protection: &Protection,
    databases: &BTreeMap<String, Database>,
) -> Result<(), ConfigError> {
    if let Protection::Only(list) = protection {
        if let Some(unknown) = list.iter().find(|d| !databases.contains_key(*d)) {
            return Err(invalid(key, format!("unknown database `{unknown}`")));
        }
    }
    Ok(())
}

/// A role that is not built in must be one the rules or the break-glass policy name: a
/// misspelt role would otherwise grant nothing, silently.
pub fn check_roles(
    users: &[super::User],
    rules: &[Rule],
    break_glass: Option<&BreakGlass>,
) -> Result<(), ConfigError> {
    for (i, user) in users.iter().enumerate() {
        for role in &user.roles {
            let Role::Named(name) = role else { continue };
            let named = rules.iter().any(|r| r.internal_role == *role)
                || break_glass.is_some_and(|b| b.roles.contains(role));
            if !named {
                return Err(invalid(
                    format!("users[{i}].roles"),
                    format!("unknown role `{name}` (engineer, approver, admin, auditor, support-lead, or a role named by a rule's internal_role or by policy.break_glass.roles)"),
                ));
            }
        }
    }
    Ok(())
}

pub fn break_glass(file: BreakGlassFile) -> Result<Option<BreakGlass>, ConfigError> {
    if !file.enabled {
        return Ok(None);
    }
    if file.roles.is_empty() {
        return Err(invalid(
            "policy.break_glass.roles",
            "name the roles that may use break-glass access",
        ));
    }
    let max_duration = match &file.max_duration {
        Some(text) => parse_duration("policy.break_glass.max_duration", text)?,
        None => BREAK_GLASS_MAX,
    };
    Ok(Some(BreakGlass {
        roles: file.roles,
        max_duration,
    }))
}

pub fn rules(
    file: Option<Vec<RuleFile>>,
    databases: &BTreeMap<String, Database>,
) -> Result<Vec<Rule>, ConfigError> {
    let Some(list) = file else {
        return Ok(default_rules());
    };
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.into_iter().enumerate() {
        let key = |field: &str| format!("rules[{i}].{field}");
        if r.name.trim().is_empty() {
            return Err(invalid(key("name"), "a rule needs a name"));
        }
        if !names.insert(r.name.clone()) {
            return Err(invalid(
                key("name"),
                format!("rule `{}` is listed twice", r.name),
            ));
        }
        if let Some(unknown) = r.databases.iter().find(|d| !databases.contains_key(*d)) {
            return Err(invalid(
                key("databases"),
                format!("unknown database `{unknown}`"),
            ));
        }
        if r.deny.as_deref().is_some_and(|d| d.trim().is_empty()) {
            return Err(invalid(
                key("deny"),
                "give the reason the requester will see",
            ));
        }
        let duration = |field: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| parse_duration(&key(field), t))
                .transpose()
        };
        let internal_role = r.internal_role.unwrap_or(Role::SupportLead);
        // Counts of matching rules merge by maximum; that is only sound for one role.
        if r.internal_approvals > 0 {
            if let Some(other) = out
                .iter()
                .find(|o: &&Rule| o.internal_approvals > 0 && o.internal_role != internal_role)
            {
                return Err(invalid(
                    key("internal_role"),
                    format!(
                        "`{internal_role}` differs from rule `{}` (`{}`): every rule that asks for internal approvals must name the same role",
                        other.name, other.internal_role
                    ),
                ));
            }
        }
        out.push(Rule {
            min_duration: duration("min_duration", &r.min_duration)?,
            max_duration: duration("max_duration", &r.max_duration)?,
            request_ttl: duration("request_ttl", &r.request_ttl)?,
            name: r.name,
            databases: r.databases,
            access: r.access,
            mfa: r.mfa,
            groups: r.groups,
            requesters: r.requesters,
            deny: r.deny,
            internal_approvals: r.internal_approvals,
            internal_role,
            customer_approvals: r.customer_approvals,
        });
    }
    Ok(out)
}
