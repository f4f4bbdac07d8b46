//! First run: `lockbox init DIR` writes a deployment that works as written (keys, a CA and
//! the proxy's certificate, a config with one user per role, upstream role passwords), and
//! prints the SQL for the upstream roles and the next commands. `lockbox keygen` writes key
//! material one piece at a time. Neither overwrites a file unless `--force`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

mod files;
pub(crate) mod keygen;
mod template;

pub(crate) use files::{write_all, NewFile};
use template::{Plan, USERS};

/// `lockbox init`'s flags.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Folder to write the deployment into (made if missing; it must be empty unless --force).
    pub dir: PathBuf,
    /// Host names or IP addresses engineers use to reach the proxy (its certificate's names).
    #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
    pub hosts: Vec<String>,
    /// Address of the PostgreSQL-protocol listener.
    #[arg(long, default_value = "0.0.0.0:6432")]
    pub proxy_listen: String,
    /// Address of the control-plane HTTP API.
    #[arg(long, default_value = "127.0.0.1:8432")]
    pub api_listen: String,
    /// The PostgreSQL server behind the proxy, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:5432")]
    pub upstream: String,
    /// The database engineers ask for (its name on the server too).
    #[arg(long, default_value = "app")]
    pub database: String,
    /// TLS towards the upstream server.
    #[arg(long, default_value = "require", value_parser = ["disable", "require"])]
    pub upstream_tls: String,
    /// Sign the proxy's certificate with this existing CA (e.g. your organisation's) instead
    /// of making one; its key is read, never copied.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The key of `--ca-cert`.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Write into a folder that is not empty, overwriting the files init writes.
    #[arg(long)]
    pub force: bool,
}

/// The files of a deployment, relative to its folder.
const CONFIG: &str = "lockbox.toml";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const API_KEYS: &str = "api-keys";

pub(crate) fn run(args: &InitArgs) -> Result<()> {
    let plan = plan(args)?;
    refuse_non_empty(&args.dir, args.force)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;

    let passwords = [(); 3].map(|_| crate::keys::generate_password());
    let (files, what): (Vec<NewFile>, Vec<String>) =
        deployment_files(&dir, args, &plan, &passwords)?
            .into_iter()
            .unzip();
    write_all(&files, args.force)?;
    let mut report = format!("Wrote a lockbox deployment to {}:\n", dir.display());
    for (file, what) in files.iter().zip(what) {
        let name = file.path.file_name().unwrap_or_default().to_string_lossy();
        writeln!(report, "  {name:<20} {what}")?;
    }
    next_steps(&mut report, &dir, args, &plan, &passwords)?;
    // Written in one go and checked: a closed pipe (`| head`) ends in an error, not a
    // panic. The passwords the SQL holds are in their files either way.
    std::io::stdout()
        .write_all(report.as_bytes())
        .context("printing the next steps")?;
    Ok(())
}

/// Every file of a new deployment, with what it is for.
fn deployment_files(
    dir: &Path,
    args: &InitArgs,
    plan: &Plan,
    passwords: &[String; 3],
) -> Result<Vec<(NewFile, String)>> {
    // The CA: the one given (its key stays where it is), else a new one.
    let (ca_pem, ca_key_pem, new_ca) = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => (read(cert)?, read(key)?, false),
        _ => {
            let (cert, key) = crate::tls::generate_ca()?;
            (cert, key, true)
        }
    };
    let (cert_pem, key_pem) = crate::tls::generate_signed_by(&args.hosts, &ca_pem, &ca_key_pem)?;
    let api_hosts = api_hosts(args);
    let (api_cert_pem, api_key_pem) =
        crate::tls::generate_signed_by(&api_hosts, &ca_pem, &ca_key_pem)?;
    let api_keys: Vec<String> = USERS
        .iter()
        .map(|_| crate::keys::generate_api_key())
        .collect();
    let hashes: Vec<String> = api_keys
        .iter()
        .map(|k| crate::keys::api_key_hash_string(k))
        .collect();
    let mut files = vec![
        (
            NewFile::public(dir.join(CONFIG), template::config_toml(plan, &hashes)),
            format!(
                "the config: one user per role, the database `{}`",
                plan.database
            ),
        ),
        (
            NewFile::private(
                dir.join("signing-key.pem"),
                crate::keys::generate_signing_key_pem()?,
            ),
            "signs tokens and audit checkpoints (0600)".to_owned(),
        ),
        (
            NewFile::public(dir.join(CA_CERT), ca_pem),
            "the CA that signs the proxy's certificate: engineers' clients trust it".to_owned(),
        ),
    ];
    if new_ca {
        files.push((
            NewFile::private(dir.join(CA_KEY), ca_key_pem),
            "the CA's key (0600): serve does not read it, keep it offline".to_owned(),
        ));
    }
    files.push((
        NewFile::public(dir.join("proxy-cert.pem"), cert_pem),
        format!(
            "the proxy's certificate for {}, signed by the CA",
            args.hosts.join(", ")
        ),
    ));
    files.push((
        NewFile::private(dir.join("proxy-key.pem"), key_pem),
        "its key (0600)".to_owned(),
    ));
    files.push((
        NewFile::public(dir.join("api-cert.pem"), api_cert_pem),
        format!(
            "the API's certificate for {}, signed by the CA",
            api_hosts.join(", ")
        ),
    ));
    files.push((
        NewFile::private(dir.join("api-key.pem"), api_key_pem),
        "its key (0600)".to_owned(),
    ));
    for ((role, file), password) in plan.password_files().into_iter().zip(passwords) {
        files.push((
            NewFile::private(dir.join(file), password.clone()),
            format!("password of the upstream role `{role}` (0600)"),
        ));
    }
    files.push((
        NewFile::private(dir.join(API_KEYS), api_keys_file(&api_keys)),
        "the users' API keys (0600): hand each out, then delete the file".to_owned(),
    ));
    Ok(files)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn plan(args: &InitArgs) -> Result<Plan> {
    let valid_name = !args.database.is_empty()
        && args.database.len() <= 40
        && args.database.starts_with(|c: char| c.is_ascii_lowercase())
        && args
            .database
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid_name {
        bail!(
            "--database `{}`: use lower-case letters, digits and _ (it names the upstream roles too)",
            args.database
        );
    }
    for (flag, addr) in [
        ("--proxy-listen", &args.proxy_listen),
        ("--api-listen", &args.api_listen),
    ] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            bail!("{flag} `{addr}` is not an address like 127.0.0.1:6432");
        }
    }
    if args.hosts.is_empty() {
        bail!("--host: name at least one host the proxy is reached at");
    }
    let (host, port) = split_host_port(&args.upstream).with_context(|| {
        format!(
            "--upstream `{}` is not HOST:PORT like db.internal:5432",
            args.upstream
        )
    })?;
    Ok(Plan {
        proxy_listen: args.proxy_listen.clone(),
        api_listen: args.api_listen.clone(),
        upstream_host: host,
        upstream_port: port,
        database: args.database.clone(),
        upstream_tls: args.upstream_tls.clone(),
    })
}

/// `db.internal:5432`, `10.0.0.5:5432`, `[::1]:5432`.
fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['"', '\\', ' ']) {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

/// A folder with anything in it may be someone's deployment: init only writes into it when
/// asked to (and then replaces only the files it writes).
fn refuse_non_empty(dir: &Path, force: bool) -> Result<()> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    if entries.next().is_some() && !force {
        bail!(
            "{} is not empty; nothing was written (pass --force to write into it anyway)",
            dir.display()
        );
    }
    Ok(())
}

fn api_keys_file(keys: &[String]) -> String {
    let mut text = String::from(
        "# The API keys `lockbox init` made, one per user. Hand each to its person (they set\n\
         # LOCKBOX_API_KEY to it), then delete this file: the config keeps only their hashes.\n",
    );
    for ((name, role, _), key) in USERS.iter().zip(keys) {
        text.push_str(&format!("{name}={key}    # {role}\n"));
    }
    text
}

/// The SQL for the upstream roles and the commands that follow `init`.
fn next_steps(
    out: &mut String,
    dir: &Path,
    args: &InitArgs,
    plan: &Plan,
    passwords: &[String; 3],
) -> std::fmt::Result {
    let config = dir.join(CONFIG);
    let ca = dir.join(CA_CERT);
    let host = args.hosts.first().map_or("localhost", String::as_str);
    let proxy_port = args
        .proxy_listen
        .rsplit_once(':')
        .map_or("6432", |(_, port)| port);
    let api = api_url(&args.api_listen);
    writeln!(out)?;
    writeln!(out, "1. Create the upstream roles: run this as a superuser of {}:{}, connected to database `{}`", plan.upstream_host, plan.upstream_port, plan.database)?;
    writeln!(out, "   (it holds the passwords above; pg_hba.conf must let these roles log in from the proxy):")?;
    writeln!(out)?;
    out.push_str(&template::upstream_sql(plan, passwords));
    writeln!(out)?;
    writeln!(out, "2. lockbox config check --config {}", config.display())?;
    writeln!(out, "3. lockbox serve --config {}", config.display())?;
    writeln!(
        out,
        "4. An engineer files a request, an approver approves it, the engineer connects:"
    )?;
    writeln!(
        out,
        "   export LOCKBOX_SERVER={api} LOCKBOX_CA_CERT={}",
        ca.display()
    )?;
    writeln!(out, "   id=$(LOCKBOX_API_KEY=<eve's key> lockbox request create --database {} --ticket T-1 --reason '…' --access read --duration 30m)", plan.database)?;
    writeln!(
        out,
        "   LOCKBOX_API_KEY=<carol's key> lockbox request approve \"$id\" --reason 'ok'"
    )?;
    writeln!(
        out,
        "   PGPASSWORD=$(LOCKBOX_API_KEY=<eve's key> lockbox token \"$id\") psql \"host={host} port={proxy_port} dbname={} user=eve sslmode=verify-full sslrootcert={}\"",
        plan.database,
        ca.display()
    )
}

/// `lockbox config check`: the summary when `serve` would start, else every problem (and a
/// non-zero exit).
pub(crate) fn config_check(path: &Path) -> Result<()> {
    let checked = crate::config::check(path).and_then(|config| {
        match crate::config::state_store_problem(&config) {
            Some(problem) => Err(vec![problem]),
            None => Ok(config),
        }
    });
    match checked {
        Ok(config) => {
            crate::cli::out::write(format_args!(
                "{}: ok ({} database(s), {} user(s))\n",
                path.display(),
                config.databases.len(),
                config.users.len()
            ));
            Ok(())
        }
        Err(problems) => {
            for problem in &problems {
                eprintln!("- {problem}");
            }
            bail!("{}: {} problem(s)", path.display(), problems.len())
        }
    }
}

/// The URL the CLI reaches an API listening on `listen` at (HTTPS: init gives the API a
/// certificate of its own).
fn api_url(listen: &str) -> String {
    let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "8432"));
    let host = match host {
        "0.0.0.0" | "[::]" => "127.0.0.1",
        other => other,
    };
    format!("https://{host}:{port}")
}

/// The names the API's certificate carries: the proxy's, loopback (the CLI on the lockbox
/// host), and the API's own address when it listens on one.
fn api_hosts(args: &InitArgs) -> Vec<String> {
    let mut hosts = args.hosts.clone();
    let listen_ip = args
        .api_listen
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| ip.to_string());
    for name in ["localhost".to_owned(), "127.0.0.1".to_owned()]
        .into_iter()
        .chain(listen_ip)
    {
        if !hosts.contains(&name) {
            hosts.push(name);
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_addresses() {
        let cases = [
            ("db.internal:5432", Some(("db.internal", 5432))),
            ("10.0.0.5:6543", Some(("10.0.0.5", 6543))),
            ("[::1]:5432", Some(("::1", 5432))),
            ("db.internal", None),
            (":5432", None),
            ("db:port", None),
        ];
        for (text, want) in cases {
            let got = split_host_port(text);
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), want, "{text}");
        }
    }

    #[test]
    fn api_urls_reach_a_wildcard_listener_on_loopback() {
        assert_eq!(api_url("0.0.0.0:8432"), "https://127.0.0.1:8432");
        assert_eq!(api_url("10.1.2.3:9000"), "https://10.1.2.3:9000");
    }
}
