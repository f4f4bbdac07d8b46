//! What `lockbox init` writes: the config file (with comments a first-time operator needs)
//! and the SQL that makes the upstream roles it names.

use postgres_protocol::escape::{escape_identifier, escape_literal};

/// The people `lockbox init` configures, one per role: `(name, role, what the role may do)`.
pub(crate) const USERS: &[(&str, &str, &str)] = &[
    (
        "eve",
        "engineer",
        "files access requests, fetches the token of an approved one, connects",
    ),
    (
        "carol",
        "approver",
        "the customer's approver: approves or denies requests (never their own), revokes",
    ),
    (
        "lena",
        "support-lead",
        "the provider's internal approver: write and admin requests need one first",
    ),
    (
        "alice",
        "admin",
        "reloads the config, sets which databases need approval, runs exports, revokes",
    ),
    ("dave", "auditor", "reads and exports the audit trail"),
];

/// The service role's name upstream.
pub(crate) const SERVICE_ROLE: &str = "lockbox_service";

/// The shape of a deployment, from `lockbox init`'s flags.
pub(crate) struct Plan {
    pub proxy_listen: String,
    pub api_listen: String,
    pub upstream_host: String,
    pub upstream_port: u16,
    pub database: String,
    /// `disable` or `require`.
    pub upstream_tls: String,
}

impl Plan {
    pub(crate) fn read_role(&self) -> String {
        format!("{}_read", self.database)
    }

    pub(crate) fn write_role(&self) -> String {
        format!("{}_write", self.database)
    }

    /// Password files, relative to the config: `(role, file)`.
    pub(crate) fn password_files(&self) -> [(String, String); 3] {
        let db = &self.database;
        [
            (SERVICE_ROLE.to_owned(), format!("{db}.password")),
            (self.read_role(), format!("{db}-read.password")),
            (self.write_role(), format!("{db}-write.password")),
        ]
    }
}

/// The config file. `hashes` are the users' `api_key_hash` values, in `USERS` order.
pub(crate) fn config_toml(plan: &Plan, hashes: &[String]) -> String {
    let db = &plan.database;
    let [(_, service_file), (read, read_file), (write, write_file)] = plan.password_files();
    let mut toml = format!(
        r#"# lockbox configuration, as `lockbox init DIR` writes it with the files it names (signing
# key, CA and proxy certificate, upstream passwords) and the users' API keys. Relative paths
# are resolved against this file's folder. `lockbox config check --config lockbox.toml`
# checks it and everything it names.

[proxy]
# PostgreSQL-protocol listener engineers connect to.
listen = "{proxy_listen}"
# Certificate presented to clients, signed by ca.pem: engineers connect with
# sslmode=verify-full sslrootcert=ca.pem. Tokens are only accepted over TLS.
tls_cert = "proxy-cert.pem"
tls_key = "proxy-key.pem"
allow_plaintext_loopback = false

[api]
# Control-plane HTTP API (the CLI, approvers, auditors), served over HTTPS with a certificate
# signed by ca.pem: the CLI trusts it with --ca-cert ca.pem or LOCKBOX_CA_CERT=ca.pem.
listen = "{api_listen}"
tls_cert = "api-cert.pem"
tls_key = "api-key.pem"
# The admin center (https://<listen>/ in a browser) signs users out after this long.
# web_session_ttl = "8h"

[state]
sqlite_path = "data/state.db"
# Several lockbox nodes share one PostgreSQL state store instead (README: Several proxies):
# url = "postgres://lockbox@state-db.internal:5432/lockbox"
# password_env = "LOCKBOX_STATE_DB_PASSWORD"

# [node]
# id = "lockbox-eu-1"   # names this node on audit records and sessions; default: the host name

[audit]
# Append-only JSON Lines file: every lockbox action and every SQL statement.
path = "data/audit/audit.jsonl"
# fsync: a statement runs once its record is on disk (in audit.jsonl.journal beside the
# trail, 32 MiB, written back into the trail at the next start after a crash).
durability = "fsync"

[token]
# Ed25519 private key that signs lockbox tokens (and the audit trail's checkpoints).
signing_key = "signing-key.pem"

[timings]
# Unanswered requests expire after this.
request_ttl = "12h"
# Access window when a request names no duration, and the longest one may ask for.
default_access = "8h"
max_access = "24h"

# The database engineers ask for; `name` is what they put in `dbname`.
[[databases]]
name = "{db}"
# Access needs the customer's approval.
protected = true
host = "{host}"
port = {port}
dbname = "{db}"
# The service role: it makes each grant's own role (CREATEROLE) and admin sessions log in
# as it. Engineers never see its password.
user = "{service}"
password_file = "{service_file}"
# "disable", "require" (encrypt), "verify-ca" or "verify-full" (with tls_ca = "file.pem").
tls = "{tls}"

# Read grants hold this role; it may only read. Required: a read grant never logs in as a
# role that can write. With per-grant roles (below) each grant's role joins it.
[databases.access.read]
user = "{read}"
password_file = "{read_file}"

# Write grants hold this role.
[databases.access.write]
user = "{write}"
password_file = "{write_file}"

[databases.provisioning]
# Unset: each grant gets a role of its own (lockbox_<request id>, member of the level's
# role, VALID UNTIL the window's end, dropped when the grant ends) when the service role may
# create roles, else sessions log in as the level's role. true: refuse to start without it.
# per_grant_roles = true

[databases.guardrails]
deny_drop = true
deny_truncate = true
deny_delete_without_where = true

# People. `roles` decides what each may do (rename them to your people; `lockbox keygen
# api-key` makes a new key and its hash):
"#,
        proxy_listen = plan.proxy_listen,
        api_listen = plan.api_listen,
        host = plan.upstream_host,
        port = plan.upstream_port,
        service = SERVICE_ROLE,
        tls = plan.upstream_tls,
    );
    for (_, role, may) in USERS {
        toml.push_str(&format!("#   {role:<13} {may}\n"));
    }
    toml.push_str(
        "# `mfa = true` says the user's API key was handed out after they signed in with\n\
         # multi-factor authentication. The default rules refuse access requests from users\n\
         # without it (rule `require-mfa`), so an engineer without it cannot file a request.\n",
    );
    for ((name, role, _), hash) in USERS.iter().zip(hashes) {
        toml.push_str(&format!(
            "\n[[users]]\nname = \"{name}\"\nroles = [\"{role}\"]\nmfa = true\napi_key_hash = \"{hash}\"\n"
        ));
    }
    toml
}

/// The SQL a superuser runs in the upstream database to make the roles the config names.
/// `passwords` are in `Plan::password_files` order.
pub(crate) fn upstream_sql(plan: &Plan, passwords: &[String; 3]) -> String {
    let db = escape_identifier(&plan.database);
    let service = escape_identifier(SERVICE_ROLE);
    let read = escape_identifier(&plan.read_role());
    let write = escape_identifier(&plan.write_role());
    let [service_pw, read_pw, write_pw] = passwords.each_ref().map(|p| escape_literal(p));
    format!(
        "-- lockbox: upstream roles (run as a superuser, connected to database {db})\n\
         CREATE ROLE {service} LOGIN CREATEROLE PASSWORD {service_pw};\n\
         -- The level roles are made by the service role, so it may hand them to each grant's role.\n\
         SET ROLE {service};\n\
         CREATE ROLE {read} LOGIN PASSWORD {read_pw};\n\
         CREATE ROLE {write} LOGIN PASSWORD {write_pw};\n\
         RESET ROLE;\n\
         GRANT USAGE ON SCHEMA public TO {read}, {write};\n\
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {read}, {write};\n\
         -- pg_dump reads each sequence's value; SELECT on a sequence allows no nextval.\n\
         GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {read};\n\
         GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {write};\n\
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {write};\n\
         -- Admin grants log in as {service}: grant it what an admin session may do, e.g.\n\
         -- GRANT ALL ON ALL TABLES IN SCHEMA public TO {service};\n\
         -- lockbox: end of upstream roles\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config/lockbox.toml` is what `lockbox init` writes for these flags, with the users'
    /// keys replaced by placeholders: the shipped example cannot drift from a config that
    /// `serve` accepts (the e2e `init` test runs one).
    #[test]
    fn the_shipped_config_is_what_init_writes() {
        let plan = Plan {
            proxy_listen: "0.0.0.0:6432".into(),
            api_listen: "127.0.0.1:8432".into(),
            upstream_host: "10.0.0.5".into(),
            upstream_port: 5432,
            database: "sales".into(),
            upstream_tls: "require".into(),
        };
        let hashes: Vec<String> = (0..USERS.len())
            .map(|i| format!("sha256:{}", i.to_string().repeat(64)))
            .collect();
        let shipped = include_str!("../../config/lockbox.toml");
        assert_eq!(
            shipped,
            config_toml(&plan, &hashes),
            "config/lockbox.toml and init's template differ: change them together"
        );
    }

    #[test]
    fn the_sql_escapes_passwords_and_names_every_role() {
        let plan = Plan {
            proxy_listen: "0.0.0.0:6432".into(),
            api_listen: "127.0.0.1:8432".into(),
            upstream_host: "db".into(),
            upstream_port: 5432,
            database: "sales".into(),
            upstream_tls: "disable".into(),
        };
        let sql = upstream_sql(&plan, &["a'b".into(), "r".into(), "w".into()]);
        assert!(sql.contains("PASSWORD 'a''b'"), "{sql}");
        assert!(
            sql.contains("CREATE ROLE \"sales_read\" LOGIN PASSWORD 'r'"),
            "{sql}"
        );
        assert!(sql.contains("TO \"sales_write\""), "{sql}");
        // pg_dump at read level reads every sequence's value.
        assert!(
            sql.contains("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO \"sales_read\";"),
            "{sql}"
        );
    }
}
