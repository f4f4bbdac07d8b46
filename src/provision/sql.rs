//! The SQL text of provisioning. Role DDL takes no bind parameters, so every name and
//! secret goes in as an identifier or literal escaped the way libpq does
//! (`PQescapeIdentifier` / `PQescapeLiteral`, via postgres-protocol).

use chrono::{DateTime, SecondsFormat, Utc};
use postgres_protocol::escape::{escape_identifier, escape_literal};

use crate::ids::RequestId;

/// What every per-grant role's name starts with.
pub const PREFIX: &str = "lockbox_";

/// PostgreSQL truncates longer names (NAMEDATALEN - 1): two grants could share one.
const MAX_NAME: usize = 63;

/// `LIKE` pattern of the roles lockbox makes (request ids are `req-<hex>`).
pub const ROLE_PATTERN: &str = "lockbox\\_req-%";

/// The name of a grant's role: `lockbox_<request id>`, kept exactly (request ids carry a
/// dash, so the name is always written quoted), so the database's own logs name the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleName(String);

impl RoleName {
    /// `None` when the id cannot name a role unambiguously: too long to survive
    /// PostgreSQL's truncation, or with characters other than letters, digits, `_`, `-`.
    pub fn for_request(id: &RequestId) -> Option<RoleName> {
        let name = format!("{PREFIX}{}", id.0);
        let plain =
            id.0.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        (plain && !id.0.is_empty() && name.len() <= MAX_NAME).then_some(RoleName(name))
    }

    /// The request a role of lockbox's belongs to (names as [`ROLE_PATTERN`] matches them).
    pub fn request_id(name: &str) -> Option<RequestId> {
        let id = name
            .strip_prefix(PREFIX)
            .filter(|id| id.starts_with("req-"))?;
        let id = RequestId(id.to_owned());
        RoleName::for_request(&id).map(|_| id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn quoted(&self) -> String {
        escape_identifier(&self.0)
    }
}

/// A timestamp as a literal PostgreSQL reads as `timestamptz` (microseconds, UTC).
/// `text` as an SQL string literal.
pub fn literal(text: &str) -> String {
    escape_literal(text)
}

fn timestamp(at: DateTime<Utc>) -> String {
    escape_literal(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// What a grant's role is given besides its name and password.
#[derive(Clone, Copy, Debug)]
pub struct RoleTerms<'a> {
    /// The window's end: the role's `VALID UNTIL`.
    pub until: DateTime<Utc>,
    /// The level's role, whose privileges it inherits.
    pub member_of: &'a str,
    /// The grant's session limit (none when `None`), which the role's `CONNECTION LIMIT`
    /// holds with one to spare (see `connection_limit`).
    pub sessions: Option<u32>,
}

impl RoleTerms<'_> {
    fn connection_limit(&self) -> String {
        connection_limit(self.sessions)
    }
}

/// `CONNECTION LIMIT n + 1` for a grant of `n` sessions, or `-1` (none): spelled out on a
/// role taken over too, so a limit an earlier grant of the same name had does not linger.
/// The one to spare is lockbox's own: the reaper logs in as the grant's role to terminate
/// a backend that outlived its session, which holds a slot of the role until then (with
/// the limit exact, a grant of one session could never have it terminated), and a backend
/// still exiting after its session, or a spare, takes it meanwhile. The proxy admits no
/// more than the limit itself.
fn connection_limit(sessions: Option<u32>) -> String {
    sessions.map_or("-1".into(), |n| (u64::from(n) + 1).to_string())
}

/// Sets the role's `CONNECTION LIMIT` to the grant's session limit `sessions` (a reload
/// changed `[proxy] max_sessions_per_grant`).
pub fn set_connection_limit(role: &RoleName, sessions: Option<u32>) -> String {
    format!(
        "ALTER ROLE {} CONNECTION LIMIT {}",
        role.quoted(),
        connection_limit(sessions)
    )
}

/// Readies a service connection to reap a backend of the grant's role (see
/// `Provisioner::reaper_connection`): statements that wait on a lock the role's own
/// sessions may hold fail on the server rather than land later, and the service role is
/// made a member of the role, which lets it signal the role's backends (as before a drop).
pub fn ready_for_reaping(role: &RoleName, service: &str) -> String {
    format!(
        "SET lock_timeout = '5s'; SET statement_timeout = '10s'; GRANT {} TO {}",
        role.quoted(),
        escape_identifier(service),
    )
}

/// Creates the grant's role: it may log in until the window's end, with the password whose
/// SCRAM verifier is `verifier`, at most its session limit at once, and holds nothing but
/// membership of the level's role. The attributes are spelled out so no default of the
/// server's can add one.
pub fn create_role(role: &RoleName, verifier: &str, terms: &RoleTerms<'_>) -> String {
    format!(
        "CREATE ROLE {} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
         NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {} VALID UNTIL {} IN ROLE {}",
        role.quoted(),
        terms.connection_limit(),
        escape_literal(verifier),
        timestamp(terms.until),
        escape_identifier(terms.member_of),
    )
}

/// Takes over a role that already exists (made before a restart, or by another proxy):
/// a new password, the window's end, the session limit, and the membership. Attributes
/// are checked, not set, beforehand: only a superuser may even name SUPERUSER or
/// REPLICATION in ALTER ROLE.
pub fn reset_role(role: &RoleName, verifier: &str, terms: &RoleTerms<'_>) -> String {
    format!(
        "ALTER ROLE {r} LOGIN CONNECTION LIMIT {} PASSWORD {} VALID UNTIL {}; GRANT {} TO {r}",
        terms.connection_limit(),
        escape_literal(verifier),
        timestamp(terms.until),
        escape_identifier(terms.member_of),
        r = role.quoted(),
    )
}

/// Moves the end of the role's validity (an extension of the grant).
pub fn set_valid_until(role: &RoleName, until: DateTime<Utc>) -> String {
    format!(
        "ALTER ROLE {} VALID UNTIL {}",
        role.quoted(),
        timestamp(until)
    )
}

/// First step of a drop: no new logins, and the service role may act as the role (to end
/// its backends and take over what it owns).
pub fn prepare_drop(role: &RoleName, service: &str) -> String {
    format!(
        "ALTER ROLE {r} NOLOGIN; GRANT {r} TO {}",
        escape_identifier(service),
        r = role.quoted(),
    )
}

/// Whether the role owns anything, in any database of the server (`$1`: its name).
pub const OWNS_OBJECTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend d \
     JOIN pg_catalog.pg_roles r ON d.refobjid OPERATOR(pg_catalog.=) r.oid \
     WHERE r.rolname OPERATOR(pg_catalog.=) $1 \
     AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass \
     AND d.deptype OPERATOR(pg_catalog.=) 'o')";

/// The roles the role is a member of (`$1`: its name).
pub const MEMBERSHIPS: &str =
    "SELECT b.rolname::pg_catalog.text FROM pg_catalog.pg_auth_members m \
     JOIN pg_catalog.pg_roles b ON b.oid OPERATOR(pg_catalog.=) m.roleid \
     JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) m.member \
     WHERE r.rolname OPERATOR(pg_catalog.=) $1";

/// Takes the role out of `member_of`: a role kept as the owner of what its grant created
/// holds nothing else.
pub fn revoke_membership(role: &RoleName, member_of: &str) -> String {
    format!(
        "REVOKE {} FROM {}",
        escape_identifier(member_of),
        role.quoted()
    )
}

/// Locks a kept role out for good: no password, valid until nothing (an extension of its
/// grant takes it over again, which sets both).
pub fn lock_kept(role: &RoleName) -> String {
    format!(
        "ALTER ROLE {} NOLOGIN PASSWORD NULL VALID UNTIL '-infinity'",
        role.quoted()
    )
}

/// Last step of a drop, one transaction, for a role that owns nothing: its privileges and
/// default privileges go, then the role.
pub fn drop_role(role: &RoleName) -> String {
    format!(
        "DROP OWNED BY {r}; DROP ROLE IF EXISTS {r}",
        r = role.quoted(),
    )
}

/// Ends the role's backends, waiting up to 5 s for each where the server can (14+), so
/// nothing it runs can commit after the drop began. The filter sits in a subquery so that
/// no plan can call the (volatile) terminate function on a row before it is filtered.
pub fn terminate_backends(server_version: i32) -> &'static str {
    if server_version >= 140_000 {
        "SELECT count(*) FILTER (WHERE ended) FROM (SELECT pg_terminate_backend(pid, 5000) \
         AS ended FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()) AS t"
    } else {
        "SELECT count(*) FILTER (WHERE ended) FROM (SELECT pg_terminate_backend(pid) \
         AS ended FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()) AS t"
    }
}

/// What a role holds that lockbox never gives one: special attributes, and the roles it
/// is a member of.
pub const ROLE_STATE: &str = "SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb \
     OR r.rolreplication OR r.rolbypassrls, \
     ARRAY(SELECT b.rolname::text FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid \
           WHERE m.member = r.oid) \
     FROM pg_roles r WHERE r.rolname = $1";

/// Whether the service role may create roles, and the server's version.
pub const SERVICE_ROLE_STATE: &str = "SELECT r.rolsuper OR r.rolcreaterole, \
     current_setting('server_version_num')::int \
     FROM pg_roles r WHERE r.rolname = current_user";

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2030-01-02T03:04:05.678901Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn role_names_keep_the_request_id() {
        let id = RequestId("req-00ff00ff00ff00ff".into());
        let role = RoleName::for_request(&id).expect("valid");
        assert_eq!(role.as_str(), "lockbox_req-00ff00ff00ff00ff");
        assert_eq!(role.quoted(), "\"lockbox_req-00ff00ff00ff00ff\"");
        assert_eq!(RoleName::request_id(role.as_str()), Some(id));
    }

    #[test]
    fn ids_that_cannot_name_a_role_are_refused() {
        for bad in ["", "req\"x", "req x", "req;DROP", "Ω", &"a".repeat(56)] {
            assert_eq!(RoleName::for_request(&RequestId(bad.into())), None, "{bad}");
        }
        assert!(RoleName::for_request(&RequestId("a".repeat(55))).is_some());
        assert_eq!(RoleName::request_id("lockbox_service"), None);
        assert_eq!(RoleName::request_id("sales_read"), None);
    }

    #[test]
    fn names_and_secrets_are_escaped() {
        let role = RoleName("lockbox_req-1".into());
        let terms = RoleTerms {
            until: at(),
            member_of: "odd\"role",
            sessions: None,
        };
        let sql = create_role(&role, "SCRAM'$x\\y", &terms);
        assert_eq!(
            sql,
            "CREATE ROLE \"lockbox_req-1\" LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE \
             NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1 PASSWORD  E'SCRAM''$x\\\\y' \
             VALID UNTIL '2030-01-02T03:04:05.678901Z' IN ROLE \"odd\"\"role\""
        );
        let terms = RoleTerms {
            member_of: "sales_read",
            sessions: Some(3),
            ..terms
        };
        assert_eq!(
            reset_role(&role, "v", &terms),
            "ALTER ROLE \"lockbox_req-1\" LOGIN CONNECTION LIMIT 4 PASSWORD 'v' VALID UNTIL \
             '2030-01-02T03:04:05.678901Z'; GRANT \"sales_read\" TO \"lockbox_req-1\""
        );
        assert!(
            create_role(&role, "v", &terms).contains(" CONNECTION LIMIT 4 "),
            "the session limit, and one for lockbox's reaper, is the role's connection limit"
        );
        assert_eq!(
            set_connection_limit(&role, terms.sessions),
            "ALTER ROLE \"lockbox_req-1\" CONNECTION LIMIT 4"
        );
        assert_eq!(
            ready_for_reaping(&role, "svc"),
            "SET lock_timeout = '5s'; SET statement_timeout = '10s'; \
             GRANT \"lockbox_req-1\" TO \"svc\""
        );
        assert_eq!(
            drop_role(&role),
            "DROP OWNED BY \"lockbox_req-1\"; DROP ROLE IF EXISTS \"lockbox_req-1\""
        );
    }
}
