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

/// The reason every ending of a session gives, asked before the session is looked up.
/// Anyone may end their own sessions (a frozen client of a grant limited to one session
/// would otherwise lock its engineer out); admins and approvers others' too (`check_kill`).
pub(crate) fn check_kill_reason(reason: &str) -> Result<(), PolicyError> {
    if reason.trim().is_empty() {
        return Err(PolicyError::Invalid(
            "a reason is required to end a session".into(),
        ));
    }
    super::check_shown_text("the reason", reason, super::MAX_REASON_CHARS, true)
}

/// Ending another's session is an act like a revocation: admins, and the customer
/// approvers of the session's database; the session's own engineer may end it too.
pub(crate) fn check_kill(
    config: &Config,
    caller: &User,
    (database, engineer): (&str, &str),
    reason: &str,
) -> Result<(), PolicyError> {
    check_kill_reason(reason)?;
    if engineer == caller.name {
        return Ok(());
    }
    check_kill_role(config, caller, database)
}

/// Whether `caller` may end others' sessions on `database` (what the admin center asks
/// before it offers the button; `check_kill` asks it again, with the reason).
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
            "{} may not end others' sessions: it needs the admin or approver role",
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
                check_kill(&config, &caller, (database, "bob"), "why").is_ok(),
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
            check_kill(&config, &user("ann", &["admin"]), ("hr", "bob"), "  "),
            Err(PolicyError::Invalid(_))
        ));
        assert!(check_kill_reason("why").is_ok());
    }

    #[test]
    fn an_engineer_ends_their_own_session_and_no_one_elses() {
        let config = config();
        let eve = user("eve", &["engineer"]);
        assert!(check_kill_reason("my client froze").is_ok());
        assert!(check_kill(&config, &eve, ("hr", "eve"), "my client froze").is_ok());
        assert!(matches!(
            check_kill(&config, &eve, ("hr", "bob"), "why"),
            Err(PolicyError::Forbidden(_))
        ));
        assert!(matches!(
            check_kill(&config, &eve, ("hr", "eve"), " "),
            Err(PolicyError::Invalid(_))
        ));
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
