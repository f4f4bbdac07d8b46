//! The `lockbox` command line: `serve` and `demo` run the server; every other verb talks
//! to the HTTP API (`--server`/`LOCKBOX_SERVER`, `--api-key`/`LOCKBOX_API_KEY`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};

#[macro_use]
pub(crate) mod out;
#[cfg(test)]
mod attack_11;
mod audit;
mod connect;
mod display;
mod export;
mod ops;
mod report;
mod request;
mod status;
pub use audit::AuditCommand;
pub use export::ExportCommand;
pub use ops::SessionCommand;
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
    /// Tables: every column, at full width (by default they fit 100 columns).
    #[arg(long, global = true)]
    pub wide: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the proxy and the API.
    Serve {
        #[arg(long, env = "LOCKBOX_CONFIG")]
        config: PathBuf,
        /// Log lines as text, or as JSON objects (one per line) for log shippers.
        #[arg(long, env = "LOCKBOX_LOG_FORMAT", value_enum, default_value_t)]
        log_format: crate::logging::LogFormat,
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
        /// Run this many lockbox nodes sharing one state database on the demo's
        /// PostgreSQL (the env file gets LOCKBOX_NODE<i>_SERVER and _PROXY_PORT).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
        nodes: u16,
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
    /// Print the lockbox token of an approved request (only the token, for PGPASSWORD;
    /// with --json also host, port, database, user, sslmode, CA path and access end).
    Token { id: String },
    /// Run psql connected through the proxy for an approved request (token in PGPASSWORD,
    /// `sslmode=verify-full`); arguments after `--` go to psql.
    Connect {
        /// The approved request's id.
        id: String,
        /// Passed to psql as given (`-- -c 'SELECT 1'`); the CA is `LOCKBOX_CA_CERT` or the
        /// server's `[proxy] ca_cert`.
        #[arg(last = true)]
        psql_args: Vec<String>,
    },
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
    /// Write a new deployment into a folder: keys, CA and certificate, config, passwords.
    Init(crate::init::InitArgs),
    /// Check configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The nodes sharing the server's state store, seen recently: live sessions, audit
    /// sequence and audit sink lag of each.
    Status,
    /// List live proxy sessions, or end one.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one page per command into a folder.
    Man {
        /// Write `lockbox.1`, `lockbox-serve.1`, … into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum KeygenCommand {
    /// Write a new Ed25519 token-signing key (PKCS#8 PEM) and print its public key.
    SigningKey {
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Write a new certificate authority (certificate and key) to sign the proxy's certificate.
    Ca {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Write a TLS certificate and key for the proxy: self-signed, or signed by a CA.
    TlsCert {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Host names or IP addresses the certificate is for.
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
        /// Sign with this CA certificate (`keygen ca`) instead of self-signing.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The key of `--ca-cert`.
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
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
    display::set_wide(cli.wide);
    out::finish(run_verb(cli).await)
}

async fn run_verb(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Serve { config, .. } => serve(config).await,
        Command::Demo {
            keep,
            env_file,
            window,
            audit_durability,
            nodes,
        } => {
            crate::demo::run(crate::demo::DemoOptions {
                audit_durability: audit_durability.clone(),
                keep: *keep,
                env_file: env_file.clone(),
                window: *window,
                nodes: usize::from(*nodes),
            })
            .await
        }
        Command::Request { command } => request::run(&cli, command).await,
        Command::Policy { command } => request::policy(&cli, command).await,
        Command::Admin { command } => request::admin(&cli, command).await,
        Command::Notify { command } => request::notify(&cli, command).await,
        Command::Token { id } => connect::token(&cli, id).await,
        Command::Connect { id, psql_args } => connect::connect(&cli, id, psql_args).await,
        Command::Audit { command } => audit::run(&cli, command).await,
        Command::Export { command } => export::run(&cli, command).await,
        Command::Session { command } => ops::session(&cli, command).await,
        Command::Status => status::status(&cli).await,
        Command::Completion { shell } => {
            ops::completion(*shell);
            Ok(())
        }
        Command::Man { out } => ops::man(out.as_deref()),
        Command::Keygen { command } => crate::init::keygen::run(command),
        Command::Init(args) => crate::init::run(args),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => crate::init::config_check(config),
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

/// Prints `rows` under `header`: left-aligned columns, each as wide as its widest cell,
/// two spaces apart, cells escaped; without `--wide` the widest cells are cut short to fit
/// 100 columns, headers staying whole. Tables that know which columns matter use
/// `display::print_table` with their own columns.
fn print_columns(header: &[&'static str], rows: &[Vec<String>]) {
    let columns: Vec<display::Column> = header
        .iter()
        .map(|h| display::Column::flexible(h))
        .collect();
    display::print_table(&columns, rows);
}
