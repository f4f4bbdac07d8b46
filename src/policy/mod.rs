//! The lockbox rules: who may do what to an access request, and whether a token opens a
//! session. Every security decision lives here; this module does no I/O, so each rule is
//! a plain function of its inputs and is tested as such.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::{Role, User};

mod admission;
mod decisions;
mod request;
pub mod rules;

pub use admission::{admit, Admission, Refusal};
pub use decisions::*;
pub use request::{
    Approval, NewRequest, ReasonCategory, Request, RequestStatus, Stage, Transition,
};

/// What the engineer may do in the database.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AccessLevel {
    #[default]
    Read,
    Write,
    Admin,
}

impl AccessLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLevel::Read => "read",
            AccessLevel::Write => "write",
            AccessLevel::Admin => "admin",
        }
    }
}

impl FromStr for AccessLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(AccessLevel::Read),
            "write" => Ok(AccessLevel::Write),
            "admin" => Ok(AccessLevel::Admin),
            other => Err(format!(
                "unknown access level `{other}` (read, write or admin)"
            )),
        }
    }
}

/// A refused action: the message is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request {0} not found")]
    NotFound(String),
}

fn forbidden(m: impl Into<String>) -> PolicyError {
    PolicyError::Forbidden(m.into())
}

fn require_role(caller: &User, role: Role, action: &str) -> Result<(), PolicyError> {
    if caller.has(role.clone()) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} may not {action}: it needs the {role} role",
            caller.name
        )))
    }
}

/// May `caller` see `request`? Engineers see their own; approvers (customer and support
/// lead), admins and auditors see all; a holder of the role a request's internal stage
/// needs (a rule may name any role) sees the requests routed to it, as does anyone who
/// decided on it. Whoever may act on a request can see it, so "not visible" and "missing"
/// can share one answer.
pub fn can_view(caller: &User, request: &Request) -> bool {
    request.engineer == caller.name
        || caller.has(Role::Approver)
        || caller.has(Role::SupportLead)
        || caller.has(Role::Admin)
        || caller.has(Role::Auditor)
        || (request.internal_required > 0 && caller.has(request.internal_role.clone()))
        || request.approvals.iter().any(|a| a.by == caller.name)
}

pub fn check_audit_read(caller: &User) -> Result<(), PolicyError> {
    if caller.has(Role::Auditor) || caller.has(Role::Admin) || caller.has(Role::Approver) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} may not read the audit log",
            caller.name
        )))
    }
}

/// Scheduled exports write the whole trail to a folder of the server's choosing: admins only.
pub fn check_export_admin(caller: &User) -> Result<(), PolicyError> {
    if caller.has(Role::Admin) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} may not manage audit exports (admin only)",
            caller.name
        )))
    }
}
