//! The session's own login, and grants' roles, are not altered through lockbox at any
//! level: any role may set its own password (an attack review set a write grant's, through
//! a function, and logged in to PostgreSQL directly, past the proxy).

use super::*;

#[test]
fn no_level_alters_its_own_login_or_a_grants_role() {
    for sql in [
        "ALTER ROLE CURRENT_USER PASSWORD 'known'",
        "ALTER USER SESSION_USER PASSWORD 'known'",
        "alter role current_role with encrypted password 'SCRAM-SHA-256$4096:x'",
        "ALTER ROLE \"lockbox_req-1\" VALID UNTIL 'infinity'",
        "ALTER USER lockbox_req_2 CONNECTION LIMIT -1",
        "ALTER ROLE CURRENT_USER SET search_path = public, pg_catalog",
        "ALTER ROLE SESSION_USER IN DATABASE sales SET role = 'other'",
        "ALTER ROLE lockbox_req_3 RESET ALL",
        "ALTER ROLE lockbox_req_4 RENAME TO mine",
        "alter role lockbox_read set default_transaction_read_only = off",
    ] {
        for access in [AccessLevel::Read, AccessLevel::Write, AccessLevel::Admin] {
            let refused = check(access, sql).expect_err(sql);
            assert_eq!(refused.rule, "own_login", "{access:?}: {sql}");
        }
    }
}

/// Other roles stay what each level makes of role management: an admin's work, refused
/// below it.
#[test]
fn other_roles_are_an_admins_to_manage() {
    for sql in [
        "ALTER ROLE app_reader PASSWORD 'new'",
        "ALTER ROLE \"LOCKBOX_req-1\" PASSWORD 'new'",
        "ALTER ROLE app_reader SET work_mem = '64MB'",
        "ALTER ROLE app_reader RENAME TO app_reader_old",
    ] {
        assert!(check(AccessLevel::Admin, sql).is_ok(), "{sql}");
        let refused = check(AccessLevel::Write, sql).expect_err(sql);
        assert_eq!(refused.rule, "role_management", "{sql}");
    }
}

/// The analysis cache shares a verdict between statements that differ in constants only:
/// a role's name is no constant, so another role's allowed ALTER does not answer for a
/// grant's.
#[test]
fn another_roles_cached_verdict_does_not_answer_for_a_grants_role() {
    for (other, grants) in [
        (
            "ALTER ROLE app_reader VALID UNTIL '2031-01-01'",
            "ALTER ROLE lockbox_req_7 VALID UNTIL '2032-01-01'",
        ),
        (
            "ALTER ROLE \"app-reader\" PASSWORD 'a'",
            "ALTER ROLE \"lockbox_req-7\" PASSWORD 'b'",
        ),
    ] {
        assert!(check(AccessLevel::Admin, other).is_ok(), "{other}");
        let refused = check(AccessLevel::Admin, grants).expect_err(grants);
        assert_eq!(refused.rule, "own_login", "{grants}");
    }
}
