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
#[cfg(test)]
pub(crate) mod test_support;

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

/// Longest support ticket a request may name, in characters.
pub const MAX_TICKET_CHARS: usize = 200;
/// Longest reason or justification, in characters. Every record of a grant carries its
/// ticket, and its request records the reason: both are bounded, so that one request
/// cannot make each of its statements' records megabytes long.
pub const MAX_REASON_CHARS: usize = 4_000;

/// `text`, a request's ticket or reason or a decision's justification (`what`), is at most
/// `max` characters and holds nothing that would hide or reorder what an approver reads:
/// no control or Unicode format character (bidi overrides, zero-width spaces), except, in
/// free text (`lines`), line breaks and tabs.
pub(crate) fn check_shown_text(
    what: &str,
    text: &str,
    max: usize,
    lines: bool,
) -> Result<(), PolicyError> {
    if text.chars().count() > max {
        return Err(PolicyError::Invalid(format!(
            "{what} is longer than {max} characters"
        )));
    }
    let allowed = |c: char| lines && matches!(c, '\n' | '\r' | '\t');
    let hidden = |c: char| {
        (crate::visible::needs_escape(c) && !allowed(c))
            || (!lines && crate::visible::is_variation_selector(c))
    };
    match text.chars().find(|c| hidden(*c)) {
        Some(c) => Err(PolicyError::Invalid(format!(
            "{what} holds the invisible or control character {}",
            c.escape_unicode()
        ))),
        None => Ok(()),
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

/// Which part of the trail `caller` may read: all of it (`None`: auditors and admins) or the
/// records of the databases they approve (an approver only), never another database's
/// statements and parameters.
pub fn audit_scope(
    config: &crate::config::Config,
    caller: &User,
) -> Result<Option<Vec<String>>, PolicyError> {
    check_audit_read(caller)?;
    if caller.has(Role::Auditor) || caller.has(Role::Admin) {
        return Ok(None);
    }
    Ok(Some(
        config
            .databases
            .keys()
            .filter(|database| check_approver_of(config, caller, database).is_ok())
            .cloned()
            .collect(),
    ))
}

/// Whether `caller` may read the records of `database` (see [`audit_scope`]).
pub fn may_read_audit_of(config: &crate::config::Config, caller: &User, database: &str) -> bool {
    audit_scope(config, caller)
        .is_ok_and(|scope| scope.is_none_or(|dbs| dbs.iter().any(|d| d == database)))
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
    use crate::policy::test_support::user;

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

    #[test]
    fn tickets_and_reasons_are_bounded_and_hold_nothing_invisible() {
        assert!(
            check_shown_text("the ticket", "INC-42 / https://t.example/42", 200, false).is_ok()
        );
        assert!(check_shown_text("the reason", "line one\n\tline two", 4000, true).is_ok());
        assert!(
            check_shown_text("the reason", "ünïcødé, 日本語, 🙂, ❤\u{fe0f}", 4000, true).is_ok()
        );
        for (text, lines) in [
            ("T-1\u{202e}lasr", false),
            ("T-\u{200b}1", false),
            ("T-1\n", false),
            ("ok \u{1b}[2J", true),
            ("ok \u{2066}hidden\u{2069}", true),
            ("ok \u{feff}", true),
            ("T-\u{3164}", false),
            ("T-\u{115f}", false),
            ("T-1\u{34f}", false),
            ("T-1\u{fe0f}", false),
            ("ok \u{3164}", true),
        ] {
            assert!(
                matches!(
                    check_shown_text("x", text, 4000, lines),
                    Err(PolicyError::Invalid(_))
                ),
                "{text:?}"
            );
        }
        let long = "a".repeat(201);
        assert!(check_shown_text("the ticket", &long, 200, false).is_err());
        assert!(check_shown_text("the ticket", &long[..200], 200, false).is_ok());
        // Characters are counted, not bytes.
        assert!(check_shown_text("the ticket", &"é".repeat(200), 200, false).is_ok());
    }
}
