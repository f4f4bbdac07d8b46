//! `lockbox connect ID [-- PSQL ARGS…]` and `lockbox token ID [--json]`: everything an
//! engineer needs to reach the proxy, from one request id.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use super::Cli;
use crate::api::TokenResponse;

/// The CLI's CA certificate; it wins over the server's `[proxy] ca_cert`, which names a
/// path that need not exist on this machine.
const CA_ENV: &str = "LOCKBOX_CA_CERT (--ca-cert)";

/// Prints the token (plain: the token alone, for `PGPASSWORD=$(lockbox token ID)`; JSON:
/// with where and how to connect).
pub async fn token(cli: &Cli, id: &str) -> Result<()> {
    let token = with_local_ca(cli, cli.client()?.token(id).await?);
    if cli.json {
        super::display::print_json(&token)?;
    } else {
        outln!("{}", token.token);
    }
    Ok(())
}

/// Replaces this process with psql, connected to the request's database through the proxy:
/// psql's exit code is the command's, and Ctrl-C reaches psql alone.
pub async fn connect(cli: &Cli, id: &str, psql_args: &[String]) -> Result<()> {
    // Before a token is issued (and audited): without psql there is nothing to hand it to.
    let psql = find_program("psql", std::env::var_os("PATH")).ok_or_else(|| {
        anyhow!(
            "psql was not found on PATH; install the PostgreSQL client (e.g. `apt install postgresql-client`), \
             or use `lockbox token {id} --json` with another client"
        )
    })?;
    let token = with_local_ca(cli, cli.client()?.token(id).await?);
    insist_on_verify_full(&token)?;
    if token.ca_cert.is_none() {
        eprintln!(
            "lockbox: no CA certificate configured ([proxy] ca_cert or {CA_ENV}); psql verifies the proxy against ~/.postgresql/root.crt"
        );
    }
    let mut command = std::process::Command::new(&psql);
    command
        .arg(format!("--dbname={}", conninfo(&token)))
        .args(psql_args)
        // The token goes in psql's environment, never on a command line others can read.
        .env("PGPASSWORD", &token.token)
        .env_remove("LOCKBOX_API_KEY");
    exec(command, &psql)
}

#[cfg(unix)]
fn exec(mut command: std::process::Command, psql: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    // `exec` only returns on failure.
    let error = command.exec();
    Err(error).with_context(|| format!("cannot run {}", psql.display()))
}

#[cfg(not(unix))]
fn exec(mut command: std::process::Command, psql: &Path) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", psql.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// `--ca-cert` / `LOCKBOX_CA_CERT` names the deployment's CA on this machine: the one the
/// CLI trusts for an HTTPS API is the one psql verifies the proxy with.
fn with_local_ca(cli: &Cli, mut token: TokenResponse) -> TokenResponse {
    if let Some(ca) = cli.ca_cert.as_ref().filter(|p| !p.as_os_str().is_empty()) {
        token.ca_cert = Some(ca.to_string_lossy().into_owned());
    }
    token
}

/// The only sslmode `connect` hands psql: the token is a password, so psql sends it only
/// to a proxy whose certificate chains to the CA and names `host`.
const SSLMODE: &str = "verify-full";

/// Refuses an answer that asks for less than [`SSLMODE`]. The answer comes over the
/// network: taking its sslmode (`disable`, `require`: no certificate check) would let
/// whoever controls it, or a proxy configured without TLS, have psql send the token in
/// clear or to anyone answering at `host`.
fn insist_on_verify_full(token: &TokenResponse) -> Result<()> {
    if token.sslmode == SSLMODE {
        return Ok(());
    }
    Err(anyhow!(
        "the server says to connect with sslmode={}, but `lockbox connect` only connects \
         with sslmode={SSLMODE} (the token is a password); if this is a sandbox proxy \
         without TLS, use `lockbox token {} --json` with psql yourself",
        super::display::clean(&token.sslmode),
        super::display::clean(&token.request_id),
    ))
}

/// A libpq connection string for `token`'s target (without the password), always with
/// `sslmode=verify-full` whatever the answer said (see [`insist_on_verify_full`]).
fn conninfo(token: &TokenResponse) -> String {
    let mut pairs = vec![
        ("host", token.host.clone()),
        ("port", token.port.to_string()),
        ("dbname", token.database.clone()),
        ("user", token.user.clone()),
        ("sslmode", SSLMODE.to_owned()),
    ];
    if let Some(ca) = &token.ca_cert {
        pairs.push(("sslrootcert", ca.clone()));
    }
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={}", quote(&v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A conninfo value: single-quoted, with `\` and `'` escaped by a backslash.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The first executable `name` in the folders of `path` (a `PATH` value).
fn find_program(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    std::env::split_paths(&path?)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(test)]
#[path = "connect_attack_11.rs"]
mod attack_11;

#[cfg(test)]
mod tests {
    use super::*;

    fn token(ca: Option<&str>) -> TokenResponse {
        TokenResponse {
            token: "secret-token".into(),
            request_id: "req-1".into(),
            database: "sales db".into(),
            user: "o'brien".into(),
            expires_at: None,
            host: "proxy.example.com".into(),
            port: 6432,
            sslmode: "verify-full".into(),
            ca_cert: ca.map(str::to_owned),
        }
    }

    #[test]
    fn the_connection_string_quotes_values_and_leaves_the_token_out() {
        assert_eq!(
            conninfo(&token(Some(r"C:\ca.pem"))),
            r"host='proxy.example.com' port='6432' dbname='sales db' user='o\'brien' sslmode='verify-full' sslrootcert='C:\\ca.pem'"
        );
        assert!(!conninfo(&token(None)).contains("sslrootcert"));
        assert!(!conninfo(&token(None)).contains("secret-token"));
    }

    #[test]
    fn an_answer_asking_for_less_than_verify_full_is_refused() {
        assert!(insist_on_verify_full(&token(None)).is_ok());
        for weak in ["disable", "require", "verify-ca", ""] {
            let answer = TokenResponse {
                sslmode: weak.into(),
                ..token(None)
            };
            let refused = insist_on_verify_full(&answer).expect_err(weak);
            assert!(
                refused
                    .to_string()
                    .contains("only connects with sslmode=verify-full"),
                "{refused}"
            );
        }
    }

    #[test]
    fn programs_are_looked_up_on_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(find_program("psql", Some(dir.path().into())), None);
        assert_eq!(find_program("psql", None), None);
        let fake = dir.path().join("psql");
        std::fs::write(&fake, "#!/bin/sh\n").expect("write");
        assert_eq!(
            find_program("psql", Some(dir.path().into())),
            None,
            "not executable"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(find_program("psql", Some(dir.path().into())), Some(fake));
    }
}
