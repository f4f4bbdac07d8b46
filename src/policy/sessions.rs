//! Who may see and end live proxy sessions.

use super::{forbidden, PolicyError};
use crate::config::{Role, User};

/// Approvers, admins and auditors see every live session; anyone else their own.
pub(crate) fn sees_all_sessions(caller: &User) -> bool {
    caller.has(Role::Admin) || caller.has(Role::Approver) || caller.has(Role::Auditor)
}

/// Ending a session is an act like a revocation: admins and (customer) approvers only.
pub(crate) fn check_kill(caller: &User, reason: &str) -> Result<(), PolicyError> {
    check_kill_role(caller)?;
    if reason.trim().is_empty() {
        return Err(PolicyError::Invalid(
            "a reason is required to end a session".into(),
        ));
    }
    Ok(())
}

/// Whether `caller` may end sessions at all (what the admin center asks before it offers
/// the button; `check_kill` asks it again, with the reason).
pub(crate) fn check_kill_role(caller: &User) -> Result<(), PolicyError> {
    if caller.has(Role::Admin) || caller.has(Role::Approver) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} may not end sessions: it needs the admin or approver role",
            caller.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(roles: &[&str]) -> User {
        User {
            name: "u".into(),
            roles: roles.iter().map(|r| Role::from(r.to_string())).collect(),
            api_key_sha256: None,
            mfa: true,
            groups: Vec::new(),
            email: None,
        }
    }

    #[test]
    fn only_admins_and_approvers_kill() {
        for (roles, ok) in [
            (&["admin"][..], true),
            (&["approver"][..], true),
            (&["engineer"][..], false),
            (&["auditor"][..], false),
            (&["support-lead"][..], false),
        ] {
            assert_eq!(check_kill(&user(roles), "why").is_ok(), ok, "{roles:?}");
        }
        assert!(matches!(
            check_kill(&user(&["admin"]), "  "),
            Err(PolicyError::Invalid(_))
        ));
    }
}
