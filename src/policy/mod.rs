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
pub(crate) mod sessions;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, roles: &[&str]) -> User {
        User {
            name: name.into(),
            roles: roles.iter().map(|r| Role::from((*r).to_owned())).collect(),
            api_key_sha256: None,
            mfa: true,
            groups: Vec::new(),
            email: None,
        }
    }

    fn request(internal_role: &str, internal_required: u32) -> Request {
        let now = chrono::Utc::now();
        serde_json::from_value(serde_json::json!({
            "id": "req-1", "engineer": "eve", "database": "sales", "ticket": "T-1",
            "reason": "debug", "access": "write", "duration_secs": 3600,
            "status": "pending_internal", "internal_role": internal_role,
            "internal_required": internal_required,
            "created_at": now, "request_expires_at": now + chrono::Duration::hours(12),
            "decided_by": null, "decided_at": null, "decision_reason": null,
            "access_starts_at": null, "access_expires_at": null,
            "revoked_by": null, "revoked_at": null, "revoke_reason": null,
        }))
        .expect("request")
    }

    #[test]
    fn approvers_of_every_stage_see_the_requests_waiting_for_them() {
        let dba_stage = request("dba-lead", 1);
        for (who, roles, sees) in [
            ("eve", &["engineer"][..], true),
            ("bob", &["engineer"], false),
            ("carol", &["approver"], true),
            ("lena", &["support-lead"], true),
            ("dan", &["dba-lead"], true),
            ("oncall", &["oncall"], false),
            ("dave", &["auditor"], true),
        ] {
            assert_eq!(can_view(&user(who, roles), &dba_stage), sees, "{who}");
        }
        // A role a rule once named sees nothing where no internal stage asks for it.
        assert!(!can_view(
            &user("dan", &["dba-lead"]),
            &request("dba-lead", 0)
        ));
    }
}
