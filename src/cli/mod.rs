//! The `lockbox` command line: `serve` and `demo` run the server; every other verb talks
//! to the HTTP API (`--server`/`LOCKBOX_SERVER`, `--api-key`/`LOCKBOX_API_KEY`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};

#[macro_use]
pub(crate) mod out;
mod audit;
mod export;
mod report;
mod request;
pub use audit::AuditCommand;
pub use export::ExportCommand;
pub use report::report;
pub use request::{AdminCommand, NotifyCommand, PolicyCommand, RequestCommand};

use crate::client::ApiClient;
use crate::policy::{AccessLevel, RequestStatus};

#[derive(Parser)]
#[command(
    name = "lockbox",
    version,
    about = "Customer-lockbox access proxy for PostgreSQL"
)]
pub struct Cli {
    /// URL of the lockbox API.
    #[arg(
        long,
        env = "LOCKBOX_SERVER",
        global = true,
        default_value = "http://127.0.0.1:8432"
    )]
    pub server: String,
    /// Your API key.
    #[arg(long, env = "LOCKBOX_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// PEM file of the CA that signed the API's certificate (a private CA); trusted instead
    /// of the public CAs for an https:// server.
    #[arg(long, env = "LOCKBOX_CA_CERT", global = true, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the proxy and the API.
    Serve {
        #[arg(long, env = "LOCKBOX_CONFIG")]
        config: PathBuf,
    },
    /// Run the whole flow end to end in a throwaway sandbox.
    Demo {
        /// Leave the sandbox running until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Write `export` lines for other terminals and scripts to this file.
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Length of the demo's access window.
        #[arg(long, default_value = "8s", value_parser = parse_duration)]
        window: Duration,
        /// Audit durability of the sandbox: fsync or write.
        #[arg(long, default_value = "fsync", value_parser = ["fsync", "write"])]
        audit_durability: String,
    },
    /// File, list, decide and revoke access requests.
    Request {
        #[command(subcommand)]
        command: RequestCommand,
    },
    /// Show or change which databases need customer approval.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Notification deliveries and their state.
    Notify {
        #[command(subcommand)]
        command: NotifyCommand,
    },
    /// Operate a running server.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the lockbox token of an approved request (only the token, for PGPASSWORD).
    Token { id: String },
    /// Read the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Scheduled audit exports (data packages): create, list, history, run. Admin only.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// Generate key material.
    Keygen {
        #[command(subcommand)]
        command: KeygenCommand,
    },
    /// Check configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
pub enum KeygenCommand {
    /// Write a new Ed25519 token-signing key (PKCS#8 PEM) and print its public key.
    SigningKey {
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a self-signed TLS certificate and key for the proxy.
    TlsCert {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Host names or IP addresses the certificate is for.
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
    },
    /// Print a new API key and the `api_key_hash` line for the config file.
    ApiKey,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file; prints what is wrong, naming the key.
    Check {
        #[arg(long, env = "LOCKBOX_CONFIG")]
        config: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_access(s: &str) -> Result<AccessLevel, String> {
    s.parse()
}

fn parse_status(s: &str) -> Result<RequestStatus, String> {
    s.parse()
}

impl Cli {
    fn client(&self) -> Result<ApiClient> {
        let key = self
            .api_key
            .as_deref()
            .ok_or_else(|| anyhow!("no API key: pass --api-key or set LOCKBOX_API_KEY"))?;
        Ok(ApiClient::with_ca(
            &self.server,
            key,
            self.ca_cert.as_deref(),
        )?)
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    out::finish(run_verb(cli).await)
}

async fn run_verb(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Demo {
            keep,
            env_file,
            window,
            audit_durability,
        } => {
            crate::demo::run(crate::demo::DemoOptions {
                audit_durability: audit_durability.clone(),
                keep: *keep,
                env_file: env_file.clone(),
                window: *window,
            })
            .await
        }
        Command::Request { command } => request::run(&cli, command).await,
        Command::Policy { command } => request::policy(&cli, command).await,
        Command::Admin { command } => request::admin(&cli, command).await,
        Command::Notify { command } => request::notify(&cli, command).await,
        Command::Token { id } => {
            let token = cli.client()?.token(id).await?;
            if cli.json {
                outln!("{}", serde_json::to_string_pretty(&token)?);
            } else {
                outln!("{}", token.token);
            }
            Ok(())
        }
        Command::Audit { command } => audit::run(&cli, command).await,
        Command::Export { command } => export::run(&cli, command).await,
        Command::Keygen { command } => keygen(command),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let c = crate::config::Config::load(config)?;
            outln!(
                "{}: ok ({} database(s), {} user(s))",
                config.display(),
                c.databases.len(),
                c.users.len()
            );
            Ok(())
        }
    }
}

async fn serve(path: &std::path::Path) -> Result<()> {
    let config = crate::config::Config::load(path)?;
    crate::https::warn_if_plaintext(&config);
    let server = crate::server::start(config).await?;
    let lockbox = server.lockbox.clone();
    let reloads = tokio::spawn(async move {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::error!("cannot install the SIGHUP handler; use `lockbox admin reload`");
            return;
        };
        while hangup.recv().await.is_some() {
            match lockbox.reload("SIGHUP").await {
                Ok(report) => tracing::info!(?report, "configuration reloaded on SIGHUP"),
                Err(e) => {
                    tracing::error!(error = %e, "configuration reload refused; the running configuration stays")
                }
            }
        }
    });
    wait_for_stop_signal().await?;
    reloads.abort();
    tracing::info!("stop signal received; shutting down");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_stop_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    Ok(())
}

fn keygen(command: &KeygenCommand) -> Result<()> {
    match command {
        KeygenCommand::SigningKey { out } => {
            let pem = crate::keys::generate_signing_key_pem()?;
            write_new_private(out, &pem)?;
            let authority =
                crate::token::TokenAuthority::from_pem(&pem, "lockbox", "lockbox-proxy")
                    .map_err(|e| anyhow!(e))?;
            eprintln!("wrote {}; its public key:", out.display());
            out!("{}", authority.public_key_pem());
        }
        KeygenCommand::TlsCert { cert, key, hosts } => {
            let (cert_pem, key_pem) = crate::tls::generate_self_signed(hosts)?;
            std::fs::write(cert, cert_pem)
                .with_context(|| format!("writing {}", cert.display()))?;
            write_new_private(key, &key_pem)?;
            outln!("wrote {} and {}", cert.display(), key.display());
        }
        KeygenCommand::ApiKey => {
            let key = crate::keys::generate_api_key();
            outln!("api key (give to the user): {key}");
            outln!(
                "api_key_hash = \"{}\"",
                crate::keys::api_key_hash_string(&key)
            );
        }
    }
    Ok(())
}

/// Writes a secret file readable by its owner only, refusing to overwrite one.
fn write_new_private(path: &std::path::Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Prints `rows` under `header`: left-aligned columns, each as wide as its widest cell,
/// two spaces apart.
fn print_columns(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i).map(String::len))
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
