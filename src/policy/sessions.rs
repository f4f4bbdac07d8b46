//! Who may see and end live proxy sessions.

use super::{forbidden, PolicyError};
use crate::config::{Config, Role, User};

/// Admins and auditors see every live session, approvers those of the databases they
/// approve for; anyone else only their own.
pub(crate) fn sees_sessions_of(config: &Config, caller: &User, database: &str) -> bool {
    caller.has(Role::Admin)
        || caller.has(Role::Auditor)
        || (caller.has(Role::Approver)
            && super::check_approver_of(config, caller, database).is_ok())
}

/// Whether `caller` may end sessions at all, and says why: asked before a session is
/// looked up, so nobody else learns which sessions exist.
pub(crate) fn check_kill_any(caller: &User, reason: &str) -> Result<(), PolicyError> {
    if !(caller.has(Role::Admin) || caller.has(Role::Approver)) {
        return Err(forbidden(format!(
            "{} may not end sessions: it needs the admin or approver role",
            caller.name
        )));
    }
    if reason.trim().is_empty() {
        return Err(PolicyError::Invalid(
            "a reason is required to end a session".into(),
        ));
    }
    super::check_shown_text("the reason", reason, super::MAX_REASON_CHARS, true)
}

/// Ending a session is an act like a revocation: admins, and the customer approvers of the
/// session's database.
pub(crate) fn check_kill(
    config: &Config,
    caller: &User,
    database: &str,
    reason: &str,
) -> Result<(), PolicyError> {
    check_kill_any(caller, reason)?;
    check_kill_role(config, caller, database)
}

/// Whether `caller` may end sessions on `database` (what the admin center asks before it
/// offers the button; `check_kill` asks it again, with the reason).
pub(crate) fn check_kill_role(
    config: &Config,
    caller: &User,
    database: &str,
) -> Result<(), PolicyError> {
    if caller.has(Role::Admin) {
        return Ok(());
    }
    if !caller.has(Role::Approver) {
        return Err(forbidden(format!(
            "{} may not end sessions: it needs the admin or approver role",
            caller.name
        )));
    }
    super::check_approver_of(config, caller, database)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{two_databases as config, user};

    #[test]
    fn admins_and_the_approvers_of_its_database_end_a_session() {
        let config = config();
        for (who, roles, database, ok) in [
            ("ann", &["admin"][..], "hr", true),
            ("carol", &["approver"][..], "sales", true),
            ("carol", &["approver"][..], "hr", false),
            ("cleo", &["approver"][..], "hr", true),
            ("carol", &["approver"][..], "gone", false),
            ("eve", &["engineer"][..], "sales", false),
            ("dave", &["auditor"][..], "sales", false),
            ("lena", &["support-lead"][..], "sales", false),
        ] {
            let caller = user(who, roles);
            assert_eq!(
                check_kill(&config, &caller, database, "why").is_ok(),
                ok,
                "{who} on {database}"
            );
            assert_eq!(
                check_kill_role(&config, &caller, database).is_ok(),
                ok,
                "{who} on {database}"
            );
        }
        assert!(matches!(
            check_kill(&config, &user("ann", &["admin"]), "hr", "  "),
            Err(PolicyError::Invalid(_))
        ));
        assert!(check_kill_any(&user("carol", &["approver"]), "why").is_ok());
        assert!(check_kill_any(&user("eve", &["engineer"]), "why").is_err());
    }

    #[test]
    fn approvers_see_the_sessions_of_their_databases_only() {
        let config = config();
        let carol = user("carol", &["approver"]);
        assert!(sees_sessions_of(&config, &carol, "sales"));
        assert!(!sees_sessions_of(&config, &carol, "hr"));
        assert!(sees_sessions_of(
            &config,
            &user("cleo", &["approver"]),
            "hr"
        ));
        assert!(sees_sessions_of(&config, &user("dave", &["auditor"]), "hr"));
        assert!(!sees_sessions_of(
            &config,
            &user("eve", &["engineer"]),
            "sales"
        ));
    }
}
