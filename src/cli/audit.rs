//! `lockbox audit …`: read, verify and export the audit trail.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

use super::Cli;

#[path = "audit_verify.rs"]
pub(super) mod verify;
use crate::audit::export::columns::{csv_field, LIST_COLUMNS};
use crate::audit::filters::{time_arg, KINDS, OUTCOMES};
use crate::audit::AuditQuery;
use clap::builder::PossibleValuesParser;

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
        /// The log is still being written: records after the last checkpoint are expected
        /// (with --config they are reported as pending anyway).
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
        /// Statement kind: select, insert, update, delete, ddl, other, unknown, empty.
        #[arg(long, value_parser = PossibleValuesParser::new(KINDS))]
        kind: Option<String>,
        /// Outcome status: ok, error, not_executed, interrupted, refused.
        #[arg(long, value_parser = PossibleValuesParser::new(OUTCOMES))]
        outcome: Option<String>,
        /// Statements containing this text.
        #[arg(long)]
        text: Option<String>,
        /// RFC 3339 time (2026-11-23T09:00:00Z), a date (2026-11-23: 00:00 UTC) or an
        /// age (30m, 1h, 2d: that long ago).
        #[arg(long, value_parser = time_arg)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Same forms as --since.
        #[arg(long, value_parser = time_arg)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv", "table"])]
        format: String,
        /// At most this many records.
        #[arg(long, conflicts_with = "follow")]
        limit: Option<usize>,
        /// Keep printing records as they are written (until Ctrl-C).
        #[arg(long, short = 'f')]
        follow: bool,
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
            limit,
            follow: follow_live,
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
                limit: *limit,
                ..Default::default()
            };
            if *follow_live {
                return follow(cli, query, format).await;
            }
            let records = cli.client()?.audit(&query).await?;
            print_records(&records, format)
        }
        AuditCommand::Verify {
            files,
            public_key,
            live,
            config,
        } => {
            verify::verify_audit(
                files,
                public_key.as_deref(),
                *live,
                config.as_deref(),
                cli.json,
            )
            .await
        }
        AuditCommand::Export(args) => super::export::audit_export(cli, args).await,
        AuditCommand::VerifyExport(args) => super::export::verify_export(cli, args),
    }
}

/// The columns of the table form.
const TABLE_COLUMNS: &[&str] = &[
    "seq",
    "node",
    "time",
    "type",
    "event",
    "engineer",
    "kind",
    "status",
    "statement",
];

fn print_records(records: &[serde_json::Value], format: &str) -> Result<()> {
    print_header(format);
    for r in records {
        print_record(r, format)?;
    }
    Ok(())
}

fn print_header(format: &str) {
    match format {
        "csv" => outln!("{}", LIST_COLUMNS.join(",")),
        "table" => outln!("{}", TABLE_COLUMNS.join("\t").to_uppercase()),
        _ => {}
    }
}

fn print_record(r: &serde_json::Value, format: &str) -> Result<()> {
    let cell = |c: &str| match r.get(c) {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    match format {
        "csv" => {
            // Escaped like the table (a statement's escape sequences reach the terminal
            // either way); line breaks stay, quoted as RFC 4180 allows. The exact text is
            // in jsonl and in `audit export`.
            let row: Vec<String> = LIST_COLUMNS
                .iter()
                .map(|c| csv_field(&super::display::clean_keeping_lines(&cell(c))))
                .collect();
            outln!("{}", row.join(","));
        }
        "table" => {
            // A clipped statement says what was cut and what it names (its prefix may be
            // padding only); csv and jsonl keep the record's own fields.
            let shown = |c: &str| match c {
                "statement" => crate::audit::shown_statement(r),
                _ => cell(c),
            };
            let row: Vec<String> = TABLE_COLUMNS
                .iter()
                .map(|c| super::display::clean(&shown(c).replace(['\n', '\t'], " ")).into_owned())
                .collect();
            outln!("{}", row.join("\t"));
        }
        _ => outln!("{}", super::display::json_text(&serde_json::to_string(r)?)),
    }
    Ok(())
}

/// `audit list --follow`: records as they are written, like `tail -F`: when the stream
/// breaks (a server restart), it reconnects and goes on after the last record it printed.
async fn follow(cli: &Cli, mut query: AuditQuery, format: &str) -> Result<()> {
    let client = cli.client()?;
    print_header(format);
    super::out::exit_if_closed();
    let mut failures = 0u32;
    loop {
        let mut printed = Ok(());
        let result = client
            .follow_audit(&query, &mut |record| {
                if printed.is_ok() {
                    printed = print_record(&record, format);
                }
                super::out::exit_if_closed();
            })
            .await;
        printed?;
        match result {
            Ok(last) => {
                query.after_seq = last.or(query.after_seq);
                failures = 0;
            }
            Err(e @ crate::client::ClientError::Api { .. }) => return Err(e.into()),
            Err(e) => {
                failures += 1;
                eprintln!(
                    "lockbox: audit stream interrupted ({}); reconnecting",
                    super::display::clean(&e.to_string())
                );
            }
        }
        let backoff = Duration::from_millis(500 * u64::from(failures.min(10)) + 200);
        tokio::time::sleep(backoff).await;
    }
}
