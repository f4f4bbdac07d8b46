//! What a grant makes stays its own: below admin, nothing is handed to another role, whose
//! privileges a `SECURITY DEFINER` function or a view would then run with after the grant
//! (an attack review gave its function to the level's role, which every later grant and
//! the application could call).

use super::*;

#[test]
fn below_admin_nothing_is_handed_to_another_role() {
    for sql in [
        "ALTER FUNCTION public.f(text) OWNER TO lockbox_write",
        "alter procedure p() owner to app",
        "ALTER VIEW v OWNER TO app",
        "ALTER TABLE t OWNER TO app",
        "ALTER TABLE t ADD COLUMN c int, OWNER TO app",
        "ALTER SCHEMA s OWNER TO app",
        "CREATE SCHEMA s AUTHORIZATION app",
        "REASSIGN OWNED BY CURRENT_USER TO app",
        "ALTER DEFAULT PRIVILEGES FOR ROLE app GRANT ALL ON TABLES TO PUBLIC",
        "ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER, app GRANT ALL ON TABLES TO PUBLIC",
    ] {
        for access in [AccessLevel::Read, AccessLevel::Write] {
            let refused = check(access, sql).expect_err(sql);
            assert_eq!(refused.rule, "ownership", "{access:?}: {sql}");
        }
        assert!(check(AccessLevel::Admin, sql).is_ok(), "{sql}");
    }
}

#[test]
fn a_write_grant_keeps_what_it_makes_as_its_own() {
    for sql in [
        "ALTER FUNCTION public.f(text) OWNER TO CURRENT_USER",
        "ALTER TABLE t OWNER TO SESSION_USER",
        "CREATE SCHEMA s",
        "CREATE SCHEMA s AUTHORIZATION CURRENT_ROLE",
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC",
        "ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER GRANT SELECT ON TABLES TO PUBLIC",
        "ALTER TABLE t ADD COLUMN c int",
    ] {
        assert!(check(AccessLevel::Write, sql).is_ok(), "{sql}");
    }
}

/// Under `off_limits` an admin's escalations are refused (they read around the rules), but
/// handing an object over reads nothing: it stays an admin's.
#[test]
fn under_off_limits_an_admin_still_hands_objects_over() {
    let rules = Guardrails {
        off_limits: vec!["secret".into()],
        ..Guardrails::default()
    };
    for sql in [
        "ALTER TABLE items OWNER TO app",
        "ALTER FUNCTION public.f(text) OWNER TO app",
    ] {
        let analyses = analyze_query(sql);
        assert!(
            check_analysis(AccessLevel::Admin, &rules, &analyses[0].analysis).is_ok(),
            "{sql}"
        );
    }
    let copy = analyze_query("COPY items TO PROGRAM 'cat'");
    assert!(check_analysis(AccessLevel::Admin, &rules, &copy[0].analysis).is_err());
}
