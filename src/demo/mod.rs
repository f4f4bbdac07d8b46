//! `lockbox demo`: the whole lockbox flow on one machine, with nothing but PostgreSQL's
//! server binaries installed. Also the deployment generator the tests and benches share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::policy::{AccessLevel, NewRequest};
use crate::sandbox::PgSandbox;

mod admin_center;
mod deployment;
mod interrupt;
mod nodes;
pub use deployment::{write_deployment, Deployment, DeploymentDatabase, DeploymentSpec};

/// Demo users and their roles, in the order the env file lists them.
pub const DEMO_USERS: &[(&str, &str, &str)] = &[
    ("eve", "engineer", "LOCKBOX_ENGINEER_KEY"),
    ("carol", "approver", "LOCKBOX_APPROVER_KEY"),
    ("alice", "admin", "LOCKBOX_ADMIN_KEY"),
    ("dave", "auditor", "LOCKBOX_AUDITOR_KEY"),
    ("lena", "support-lead", "LOCKBOX_LEAD_KEY"),
    ("cleo", "approver", "LOCKBOX_APPROVER2_KEY"),
];

/// The service role: owns the sample database, makes each grant's role; admin grants log in as it.
pub const SERVICE_ROLE: &str = "lockbox_service";

/// Options of `lockbox demo`.
pub struct DemoOptions {
    /// `fsync` or `write` (see `[audit] durability`).
    pub audit_durability: String,
    pub keep: bool,
    pub env_file: Option<PathBuf>,
    pub window: Duration,
    /// Lockbox nodes sharing one state database (1: one node on SQLite).
    pub nodes: usize,
}

const SAMPLE_DB: &str = "sales";

fn say(step: &str) {
    println!("\n==> {step}");
}

/// Creates the sample database, owned by the service role, with a table of customers.
/// The service role may create roles: each grant gets its own.
pub fn create_sample_database(pg: &PgSandbox, service_password: &str) -> Result<()> {
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {SERVICE_ROLE} LOGIN CREATEROLE PASSWORD '{service_password}'"),
    )?;
    pg.psql(
        "postgres",
        &format!("CREATE DATABASE {SAMPLE_DB} OWNER {SERVICE_ROLE}"),
    )?;
    pg.psql(
        SAMPLE_DB,
        &format!(
            "SET ROLE {SERVICE_ROLE};
             CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text NOT NULL, plan text NOT NULL);
             INSERT INTO customers (name, email, plan) VALUES
               ('Ada Lovelace', 'ada@example.com', 'enterprise'),
               ('Grace Hopper', 'grace@example.com', 'team'),
               ('Edsger Dijkstra', 'edsger@example.com', 'team'),
               ('Barbara Liskov', 'barbara@example.com', 'enterprise');"
        ),
    )?;
    // One group role per access level, with just those privileges: each grant's own role
    // joins its level's, so the database enforces the grant too. Nobody logs in as them.
    // Made by the service role, which may then grant them (PostgreSQL 16 asks for that).
    // `admin` grants use the owner role above.
    pg.psql(
        "postgres",
        &format!(
            "SET ROLE {SERVICE_ROLE};
             CREATE ROLE sales_read NOLOGIN;
             CREATE ROLE sales_write NOLOGIN;"
        ),
    )?;
    pg.psql(
        SAMPLE_DB,
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO sales_read, sales_write;
         GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO sales_read, sales_write;
         GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO sales_write;
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO sales_write;",
    )?;
    Ok(())
}

pub async fn run(options: DemoOptions) -> Result<()> {
    // Before anything is made: a stop signal from here on cleans up instead of killing.
    let mut stop = interrupt::StopSignals::install()?;
    let mut held = interrupt::Held::default();
    println!("lockbox demo: the whole customer-lockbox flow on this machine.");
    let result = tokio::select! {
        result = demo(&mut held, &options) => result,
        signal = stop.recv() => Err(anyhow!("interrupted by {signal}")),
    };
    if result.is_ok() && options.keep {
        say("The sandbox keeps running; press Ctrl-C to stop and clean up");
        if let Some(path) = &options.env_file {
            println!("    in another terminal: source {}", path.display());
        }
        stop.recv().await;
    }
    say("Cleaning up");
    held.cleanup().await;
    println!("    stopped lockbox and PostgreSQL, removed the sandbox");
    result
}

/// Everything up to the end of the walk-through; what it makes goes into `held`, so an
/// interruption at any await leaves nothing behind.
async fn demo(held: &mut interrupt::Held, options: &DemoOptions) -> Result<()> {
    say("Starting a throwaway PostgreSQL server");
    let pg = held.start_pg().await?;
    println!(
        "    PostgreSQL listens on 127.0.0.1:{} (superuser url {})",
        pg.port,
        pg.url(SAMPLE_DB)
    );

    say("Creating the sample database `sales` (table customers), owned by the service role");
    let service_password = crate::keys::generate_password();
    create_sample_database(pg, &service_password)?;
    println!("    service role `{SERVICE_ROLE}` (CREATEROLE: it makes a role per grant), with a password engineers never see");
    let pg_port = pg.port;

    say("Generating a deployment: Ed25519 signing key, a CA and the proxy's TLS certificate, config, API keys");
    let dir = held
        .dir
        .insert(tempfile::Builder::new().prefix("lockbox-demo-").tempdir()?);
    let deployment = write_deployment(
        dir.path(),
        &DeploymentSpec {
            databases: vec![DeploymentDatabase {
                name: SAMPLE_DB,
                host: "127.0.0.1",
                extra: "",
                port: pg_port,
                user: SERVICE_ROLE,
                password: &service_password,
                levels: vec![("read", "sales_read", ""), ("write", "sales_write", "")],
                guardrails:
                    "deny_drop = true\ndeny_truncate = true\ndeny_delete_without_where = true",
                provisioning: "per_grant_roles = true",
            }],
            users: DEMO_USERS.iter().map(|(n, r, _)| (*n, vec![*r])).collect(),
            without_mfa: Vec::new(),
            // Like production: tokens only over TLS, verified against the deployment's CA.
            allow_plaintext_loopback: false,
            proxy_ca: true,
            proxy_extra: "",
            timings: "request_ttl = \"12h\"\ndefault_access = \"8h\"\nmax_access = \"24h\"",
            audit_durability: &options.audit_durability,
        },
    )?;
    println!("    config: {}", deployment.config_path.display());
    if options.nodes > 1 {
        nodes::share_state(held.pg()?, &deployment)?;
        println!("    state: the shared database `lockbox_state` on the demo's PostgreSQL");
    }

    say("Starting lockbox (SQLite state, audit file, proxy + API in one process)");
    let config = crate::config::Config::load(&deployment.config_path)?;
    let audit_path = config.audit_path.clone();
    let server = held.server.insert(crate::server::start(config).await?);
    println!(
        "    proxy on {} (TLS only), API on {}",
        server.proxy_addr, server.api_addr
    );
    for i in 2..=options.nodes {
        let node = nodes::start_node(&deployment, i).await?;
        println!(
            "    node-{i}: proxy on {}, API on {}",
            node.proxy_addr, node.api_addr
        );
        held.other_nodes.push(node);
    }
    for line in admin_center::lines(&deployment) {
        println!("{line}");
    }
    if let Some(path) = &options.env_file {
        held.env_file = Some(path.clone());
        let node_lines = match options.nodes {
            1 => Vec::new(),
            _ => nodes::env_lines(&deployment, &held.other_nodes),
        };
        write_env_file(path, &deployment, held.pg()?, &audit_path, node_lines)?;
        println!(
            "    environment for other terminals written to {}",
            path.display()
        );
    }
    walk_through(&deployment, held.pg()?, options).await
}

/// The rules send write access to a support lead before the customer is asked.
async fn show_staged_write(deployment: &Deployment) -> Result<()> {
    say("Write access needs a support lead's approval before the customer is asked");
    let write = deployment
        .client("eve")
        .create_request(&NewRequest {
            database: SAMPLE_DB.into(),
            ticket: "SUP-1042".into(),
            reason: "Repair the duplicated invoice rows".into(),
            access: AccessLevel::Write,
            duration: Some("30m".into()),
            ..NewRequest::default()
        })
        .await?;
    println!(
        "    $ lockbox request create … --access write   → {} is {}",
        write.id, write.status
    );
    let led = deployment
        .client("lena")
        .approve(&write.id.0, "Lead: the repair is needed")
        .await?;
    println!(
        "    support lead lena approves                 → {}",
        led.status
    );
    let cancelled = deployment
        .client("eve")
        .cancel(&write.id.0, "read access was enough after all")
        .await?;
    println!(
        "    $ lockbox request cancel {}           → {}",
        write.id, cancelled.status
    );
    Ok(())
}

async fn walk_through(
    deployment: &Deployment,
    pg: &PgSandbox,
    options: &DemoOptions,
) -> Result<()> {
    let engineer = deployment.client("eve");
    let approver = deployment.client("carol");
    let auditor = deployment.client("dave");

    say("Engineer eve files an access request");
    let window = humantime::format_duration(options.window).to_string();
    let request = engineer
        .create_request(&NewRequest {
            database: SAMPLE_DB.into(),
            ticket: "SUP-1042".into(),
            reason: "Customer reports missing invoices; inspect customer plans".into(),
            access: AccessLevel::Read,
            duration: Some(window.clone()),
            statement_timeout: None,
            max_rows: None,
            ..NewRequest::default()
        })
        .await?;
    println!("    $ lockbox request create --database {SAMPLE_DB} --ticket SUP-1042 --reason '…' --access read --duration {window}");
    println!("    request {} is {}", request.id, request.status);

    say("Customer approver carol approves it");
    let approved = approver
        .approve(&request.id.0, "Approved for SUP-1042")
        .await?;
    println!(
        "    $ lockbox request approve {} --reason 'Approved for SUP-1042'",
        request.id
    );
    println!(
        "    request {} is {}, access until {}",
        approved.id,
        approved.status,
        approved
            .access_expires_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    );

    show_staged_write(deployment).await?;

    say("Eve fetches her time-bound lockbox token");
    let token = engineer.token(&request.id.0).await?;
    println!("    $ export PGPASSWORD=$(lockbox token {})", request.id);
    println!("    connect with any client, verifying the proxy's certificate against the demo's CA, e.g.:");
    println!(
        "    PGPASSWORD=<token> psql \"host=127.0.0.1 port={} dbname={SAMPLE_DB} user=eve sslmode=verify-full sslrootcert=$LOCKBOX_CA_CERT\"",
        deployment.proxy_port
    );

    say("Eve connects through the proxy over TLS (tokio-postgres) and runs a few statements");
    let (client, connection_ended) = connect_tls(deployment, &token.token).await?;
    let role = client
        .query_one(
            "SELECT current_user::text, rolvaliduntil::text, \
             (SELECT string_agg(b.rolname, ', ') FROM pg_auth_members m \
              JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = r.oid) \
             FROM pg_roles r WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (who, until, member_of): (String, Option<String>, Option<String>) =
        (role.get(0), role.get(1), role.get(2));
    println!("    connected; the database sees user `{who}`, eve never saw its password:");
    println!(
        "    a role of this grant only, member of `{}`, valid until {}",
        member_of.unwrap_or_default(),
        until.unwrap_or_default()
    );
    let count: i64 = client
        .query_one("SELECT count(*) FROM customers", &[])
        .await?
        .get(0);
    println!("    SELECT count(*) FROM customers                    -> {count}");
    let rows = client
        .query(
            "SELECT name FROM customers WHERE plan = $1 ORDER BY id",
            &[&"enterprise"],
        )
        .await?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    println!(
        "    SELECT name FROM customers WHERE plan = $1 ('enterprise') -> {}",
        names.join(", ")
    );
    client.batch_execute("SELECT 1; SELECT now()").await?;
    println!("    SELECT 1; SELECT now()                            -> two statements, two audit records");
    match client
        .batch_execute("UPDATE customers SET plan = 'free'")
        .await
    {
        Err(e) => println!(
            "    UPDATE customers SET plan = 'free'                -> refused: {}",
            db_message(&e.into())
        ),
        Ok(()) => bail!("a read grant was able to write"),
    }
    run_psql(deployment, &token.token);

    say("Auditor dave reads the audit trail for the request");
    let records = auditor
        .audit(&crate::audit::AuditQuery {
            request: Some(request.id.0.clone()),
            ..Default::default()
        })
        .await?;
    for r in &records {
        println!("    {}", summarize(r));
    }

    say(&format!(
        "Waiting for the {window} access window to end: the proxy drops the session"
    ));
    let outcome =
        tokio::time::timeout(options.window + Duration::from_secs(10), connection_ended).await;
    let told = match outcome {
        Ok(Ok(Some(message))) => message,
        Ok(_) => "nothing (the connection was closed)".to_owned(),
        Err(_) => bail!("the session outlived its access window"),
    };
    ended_with_the_window(approved.access_expires_at, chrono::Utc::now(), &told)?;
    println!("    the client was told: {told}");
    // The drop is recorded once the upstream query has been cancelled: wait for it.
    for _ in 0..50 {
        let records = auditor
            .audit(&crate::audit::AuditQuery {
                request: Some(request.id.0.clone()),
                ..Default::default()
            })
            .await?;
        if let Some(dropped) = records.iter().find(|r| r["event"] == "dropped_expired") {
            println!("    audit: {}", summarize(dropped));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = connect_tls(deployment, &token.token).await;
    match refused {
        Err(e) => println!(
            "    reconnecting with the same token is refused: {}",
            db_message(&e)
        ),
        Ok(_) => bail!("an expired token was accepted"),
    }
    wait_for_role_dropped(pg, &who).await
}

/// The demo's session ended `now`: by the proxy's drop only if its window (ending at `end`)
/// is over. Something else that ended it first (the database restarted, say) would
/// otherwise be taken for the drop, and the checks after it fail for the wrong reason.
fn ended_with_the_window(
    end: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    told: &str,
) -> Result<()> {
    let early = end.map_or(chrono::TimeDelta::zero(), |end| end - now);
    if early > chrono::TimeDelta::seconds(1) {
        bail!(
            "the session ended {}s before its access window did, not by the proxy's drop; \
             the client was told: {told}",
            early.num_seconds()
        );
    }
    Ok(())
}

/// The grant is over: its role goes from the database too.
async fn wait_for_role_dropped(pg: &PgSandbox, role: &str) -> Result<()> {
    let query = format!(
        "SELECT count(*) FROM pg_roles WHERE rolname = {}",
        postgres_protocol::escape::escape_literal(role)
    );
    for _ in 0..150 {
        if pg.psql(SAMPLE_DB, &query)? == "0" {
            println!("    the database dropped role `{role}`: nobody can log in as it any more");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("role `{role}` outlived its grant")
}

/// Connects through the proxy with TLS, verifying the proxy's certificate and name against
/// the demo's CA (libpq's `verify-full`). The receiver yields the server's last error
/// message once the connection ends.
async fn connect_tls(
    deployment: &Deployment,
    token: &str,
) -> Result<(
    tokio_postgres::Client,
    tokio::sync::oneshot::Receiver<Option<String>>,
)> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
        (*crate::tls::client_config_verified(ca_cert(deployment)?, true)?).clone(),
    );
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(deployment.proxy_port)
        .dbname(SAMPLE_DB)
        .user("eve")
        .password(token)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config.connect(tls).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let message = connection.await.err().map(|e| {
            e.as_db_error()
                .map(|d| format!("{} (SQLSTATE {})", d.message(), d.code().code()))
                .unwrap_or_else(|| e.to_string())
        });
        let _ = tx.send(message);
    });
    Ok((client, rx))
}

/// The CA that signed the demo proxy's certificate.
fn ca_cert(deployment: &Deployment) -> Result<&Path> {
    deployment
        .ca_path
        .as_deref()
        .context("the demo's deployment has no CA")
}

/// The server's message inside a client error, if there is one.
fn db_message(e: &anyhow::Error) -> String {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .map(|d| format!("{} (SQLSTATE {})", d.message(), d.code().code()))
        .unwrap_or_else(|| e.to_string())
}

/// Shows the same session with psql, when psql is installed.
fn run_psql(deployment: &Deployment, token: &str) {
    let (Ok(bin), Ok(ca)) = (crate::sandbox::find_server_binaries(), ca_cert(deployment)) else {
        return;
    };
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname={SAMPLE_DB} user=eve sslmode=verify-full sslrootcert={}",
        deployment.proxy_port,
        ca.display()
    );
    let sql = "SELECT plan, count(*) FROM customers GROUP BY plan ORDER BY plan";
    let out = std::process::Command::new(bin.join("psql"))
        .args(["-X", "-A", "-F", " | ", "-c", sql, &conninfo])
        .env("PGPASSWORD", token)
        .output();
    if let Ok(out) = out {
        println!("    $ psql \"{conninfo}\" -c \"{sql}\"");
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            println!("      {line}");
        }
    }
}

fn summarize(r: &serde_json::Value) -> String {
    let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("");
    match s("type") {
        "statement" => format!("#{} statement [{}] {}", r["seq"], s("kind"), s("statement")),
        "outcome" => format!(
            "#{} outcome of #{}: {} {}",
            r["seq"],
            r["statement_seq"],
            s("status"),
            r.get("command_tag")
                .and_then(|v| v.as_str())
                .or(r.get("message").and_then(|v| v.as_str()))
                .unwrap_or("")
        ),
        "session" => format!("#{} session {} {}", r["seq"], s("event"), s("reason")),
        "request" => format!("#{} request {} by {}", r["seq"], s("event"), s("actor")),
        other => format!("#{} {other}", r["seq"]),
    }
}

fn write_env_file(
    path: &Path,
    d: &Deployment,
    pg: &PgSandbox,
    audit_path: &Path,
    node_lines: Vec<String>,
) -> Result<()> {
    let mut lines = vec![
        format!("export LOCKBOX_SERVER='{}'", d.server_url()),
        format!("export LOCKBOX_CONFIG='{}'", d.config_path.display()),
        "export LOCKBOX_PROXY_HOST='127.0.0.1'".to_owned(),
        format!("export LOCKBOX_PROXY_PORT='{}'", d.proxy_port),
        // The CA that signed the proxy's certificate: `sslmode=verify-full sslrootcert=…`.
        format!("export LOCKBOX_CA_CERT='{}'", ca_cert(d)?.display()),
        format!("export LOCKBOX_DATABASE='{SAMPLE_DB}'"),
        format!("export LOCKBOX_UPSTREAM_URL='{}'", pg.url(SAMPLE_DB)),
        "export LOCKBOX_ENGINEER='eve'".to_owned(),
        format!(
            "export LOCKBOX_AUDIT_DIR='{}'",
            audit_path.parent().unwrap_or(Path::new(".")).display()
        ),
    ];
    lines.extend(node_lines);
    for (user, _, var) in DEMO_USERS {
        lines.push(format!(
            "export {var}='{}'",
            d.api_keys.get(*user).map(String::as_str).unwrap_or("")
        ));
    }
    // It holds API keys: 0600. Renamed into place, so a script polling for the file never
    // reads half of it.
    crate::init::write_all(
        &[crate::init::NewFile::private(path, lines.join("\n") + "\n")],
        true,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ended_with_the_window;

    #[test]
    fn a_session_ended_before_its_window_is_not_taken_for_the_drop() {
        let now = chrono::Utc::now();
        let told = "FATAL: terminating connection due to administrator command";
        let early = ended_with_the_window(Some(now + chrono::TimeDelta::seconds(30)), now, told)
            .expect_err("30 s early");
        let early = early.to_string();
        assert!(
            early.contains("ended 30s before its access window"),
            "{early}"
        );
        assert!(early.contains(told), "{early}");
        // At the window's end, or a moment around it (the timer's and this clock's skew),
        // the end is the drop.
        for skew in [-2, 0, 1] {
            let end = now + chrono::TimeDelta::seconds(skew);
            assert!(
                ended_with_the_window(Some(end), now, told).is_ok(),
                "{skew}"
            );
        }
    }
}
