//! `lockbox audit …`: read, verify and export the audit trail.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;

use super::Cli;
use crate::audit::export::columns::csv_field;
use crate::audit::AuditQuery;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check hash chains, sequence continuity and checkpoint signatures of audit files.
    Verify {
        /// Audit files, oldest first (default: the configured audit file).
        files: Vec<PathBuf>,
        /// Ed25519 public key (SPKI PEM file) that signs checkpoints (default: derived from
        /// the configured signing key).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// The log is still being written: records after the last checkpoint are expected.
        #[arg(long)]
        live: bool,
        #[arg(long, env = "LOCKBOX_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print matching records: one JSON object per line (default), CSV or a table.
    List {
        #[arg(long)]
        request: Option<String>,
        #[arg(long)]
        database: Option<String>,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        engineer: Option<String>,
        /// Statement kind: select, insert, update, delete, ddl, other, unknown.
        #[arg(long)]
        kind: Option<String>,
        /// Outcome status: ok, error, not_executed, interrupted, refused.
        #[arg(long)]
        outcome: Option<String>,
        /// Statements containing this text.
        #[arg(long)]
        text: Option<String>,
        /// RFC 3339 time, e.g. 2026-11-23T09:00:00Z.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv", "table"])]
        format: String,
    },
    /// Write records of a time range as jsonl, csv or parquet, partitioned by date and
    /// database, with a signed manifest (reads the audit files; needs --config).
    Export(super::export::AuditExportArgs),
    /// Check an export: file hashes, counts, the chain and the manifest's signature.
    VerifyExport(super::export::VerifyExportArgs),
}

pub async fn run(cli: &Cli, command: &AuditCommand) -> Result<()> {
    match command {
        AuditCommand::List {
            request,
            database,
            session,
            engineer,
            kind,
            outcome,
            text,
            since,
            until,
            format,
        } => {
            let query = AuditQuery {
                request: request.clone(),
                database: database.clone(),
                session: session.clone(),
                engineer: engineer.clone(),
                kind: kind.clone(),
                outcome: outcome.clone(),
                text: text.clone(),
                since: *since,
                until: *until,
                ..Default::default()
            };
            let records = cli.client()?.audit(&query).await?;
            print_records(&records, format)
        }
        AuditCommand::Verify {
            files,
            public_key,
            live,
            config,
        } => verify_audit(
            files,
            public_key.as_deref(),
            *live,
            config.as_deref(),
            cli.json,
        ),
        AuditCommand::Export(args) => super::export::audit_export(cli, args).await,
        AuditCommand::VerifyExport(args) => super::export::verify_export(cli, args),
    }
}

/// Columns of the CSV and table forms of `audit list`.
const AUDIT_COLUMNS: &[&str] = &[
    "seq",
    "time",
    "type",
    "event",
    "request_id",
    "session_id",
    "engineer",
    "database",
    "kind",
    "statement",
    "status",
    "sqlstate",
    "rows",
    "reason",
];

fn print_records(records: &[serde_json::Value], format: &str) -> Result<()> {
    let cell = |r: &serde_json::Value, c: &str| match r.get(c) {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    match format {
        "csv" => {
            println!("{}", AUDIT_COLUMNS.join(","));
            for r in records {
                let row: Vec<String> = AUDIT_COLUMNS
                    .iter()
                    .map(|c| csv_field(&cell(r, c)))
                    .collect();
                println!("{}", row.join(","));
            }
        }
        "table" => {
            let columns = [
                "seq",
                "time",
                "type",
                "event",
                "engineer",
                "kind",
                "status",
                "statement",
            ];
            println!("{}", columns.join("\t").to_uppercase());
            for r in records {
                let row: Vec<String> = columns
                    .iter()
                    .map(|c| cell(r, c).replace(['\n', '\t'], " "))
                    .collect();
                println!("{}", row.join("\t"));
            }
        }
        _ => {
            for r in records {
                println!("{}", serde_json::to_string(r)?);
            }
        }
    }
    Ok(())
}

fn verify_audit(
    files: &[PathBuf],
    public_key: Option<&std::path::Path>,
    live: bool,
    config: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    let config = config.map(crate::config::Config::load).transpose()?;
    let files: Vec<PathBuf> = match (files.is_empty(), &config) {
        (false, _) => files.to_vec(),
        (true, Some(c)) => crate::audit::segments::segments(&c.audit_path)
            .with_context(|| format!("listing the audit files of {}", c.audit_path.display()))?
            .into_iter()
            .map(|s| s.path)
            .collect(),
        (true, None) => {
            return Err(anyhow!(
                "name the audit files, or pass --config / LOCKBOX_CONFIG"
            ))
        }
    };
    let key_pem = match (public_key, &config) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        (None, Some(c)) => Some(
            crate::token::TokenAuthority::load(&c.signing_key_path, &c.issuer, &c.audience)?
                .public_key_pem()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let paths: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
    let report =
        crate::audit::chain::verify(&paths, key_pem.as_deref(), live).map_err(|e| anyhow!(e))?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ok": report.ok(),
                "records": report.records,
                "first_seq": report.first_seq,
                "last_seq": report.last_seq,
                "checkpoints": report.checkpoints,
                "checkpoints_verified": report.checkpoints_verified,
                "uncovered_tail": report.uncovered_tail,
                "problems": report.problems,
            })
        );
    } else {
        println!(
            "{} record(s), seq {}..{}, {} checkpoint(s), {} signature(s) verified{}",
            report.records,
            report.first_seq.unwrap_or(0),
            report.last_seq.unwrap_or(0),
            report.checkpoints,
            report.checkpoints_verified,
            if key_pem.is_none() {
                " (no public key: signatures not checked)"
            } else {
                ""
            }
        );
        for problem in &report.problems {
            println!("PROBLEM: {problem}");
        }
    }
    if report.ok() {
        Ok(())
    } else {
        Err(anyhow!(
            "the audit log failed verification ({} problem(s))",
            report.problems.len()
        ))
    }
}
