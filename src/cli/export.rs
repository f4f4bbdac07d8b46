//! `lockbox audit export` / `audit verify-export` (offline, on the audit files) and
//! `lockbox export …` (scheduled exports, through the API).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Args;

use super::Cli;
use crate::audit::chain::CheckpointSigner;
use crate::audit::export::{self, ExportFormat, ExportOutcome, ExportRequest, Progress};
use crate::config::Config;

/// Progress goes to stderr at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Args)]
pub struct AuditExportArgs {
    /// RFC 3339 time (2026-11-23T00:00:00Z), a date (2026-11-23: 00:00 UTC) or an age
    /// (30m, 1h, 2d: that long ago) (default: from the first record).
    #[arg(long, value_parser = crate::audit::filters::time_arg)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Same forms as --since (default: up to the last record).
    #[arg(long, value_parser = crate::audit::filters::time_arg)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// jsonl, csv or parquet.
    #[arg(long, default_value = "jsonl", value_parser = parse_format)]
    format: ExportFormat,
    /// Target folder; the run is written into a new folder inside it.
    #[arg(long)]
    to: PathBuf,
    /// Only records of this database.
    #[arg(long)]
    database: Option<String>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
    /// Finds the audit files and the signing key that signs the manifest.
    #[arg(long, env = "LOCKBOX_CONFIG")]
    config: PathBuf,
}

#[derive(Args)]
pub struct VerifyExportArgs {
    /// An export run folder (holding manifest.json), or a target folder holding runs.
    dir: PathBuf,
    /// Ed25519 public key (SPKI PEM file) that signs manifests (default: derived from the
    /// configured signing key; without either, signatures are not checked).
    #[arg(long)]
    public_key: Option<PathBuf>,
    #[arg(long, env = "LOCKBOX_CONFIG")]
    config: Option<PathBuf>,
}

fn parse_format(s: &str) -> Result<ExportFormat, String> {
    s.parse()
}

pub async fn audit_export(cli: &Cli, args: &AuditExportArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let request = ExportRequest {
        to: args.to.clone(),
        format: args.format,
        since: args.since,
        until: args.until,
        database: args.database.clone(),
        after_seq: None,
        schedule: None,
        created_by: "lockbox audit export".into(),
        witnessing: super::audit::verify::witnessing_of(&config).await,
    };
    let signer = signer_of(&config);
    let cancel = Arc::new(AtomicBool::new(false));
    let job = {
        let (active, cancel, quiet) = (config.audit_path.clone(), cancel.clone(), args.quiet);
        tokio::task::spawn_blocking(move || {
            let mut reporter = Reporter::new(quiet);
            export::export(
                &active,
                &request,
                signer.as_ref(),
                &mut |p| reporter.report(p),
                &cancel,
            )
        })
    };
    tokio::pin!(job);
    // Ctrl-C cancels cleanly: the staged run is removed, nothing half-written stays.
    let outcome = tokio::select! {
        done = &mut job => done,
        _ = tokio::signal::ctrl_c() => {
            cancel.store(true, Ordering::Relaxed);
            job.await
        }
    }
    .context("the export task failed")??
    .ok_or_else(|| anyhow!("nothing to export"))?;
    print_outcome(cli, &outcome, args.quiet)
}

/// The deployment's signing key, if it can be read: exports made without it are unsigned.
fn signer_of(config: &Config) -> Option<CheckpointSigner> {
    let pem = std::fs::read_to_string(&config.signing_key_path)
        .map_err(|e| {
            eprintln!(
                "warning: cannot read the signing key {} ({e}); the manifest will not be signed",
                config.signing_key_path.display()
            )
        })
        .ok()?;
    CheckpointSigner::from_pem(&pem)
        .map_err(|e| {
            eprintln!("warning: the signing key is unusable ({e}); the manifest will not be signed")
        })
        .ok()
}

fn print_outcome(cli: &Cli, outcome: &ExportOutcome, quiet: bool) -> Result<()> {
    let m = &outcome.manifest;
    if cli.json {
        outln!(
            "{}",
            serde_json::json!({ "path": outcome.path, "manifest": m })
        );
        return Ok(());
    }
    if !quiet {
        eprintln!(
            "exported {} record(s) (seq {}..{}) into {} file(s){}",
            m.records,
            m.first_seq.map_or("-".into(), |s| s.to_string()),
            m.last_seq.map_or("-".into(), |s| s.to_string()),
            m.files.len(),
            if m.signature.is_some() {
                ", manifest signed"
            } else {
                ", manifest NOT signed"
            }
        );
    }
    // stdout holds only the run's folder, for scripts.
    outln!("{}", outcome.path.display());
    Ok(())
}

/// Prints progress on stderr, at most once per `PROGRESS_INTERVAL`.
struct Reporter {
    quiet: bool,
    last: Instant,
}

impl Reporter {
    fn new(quiet: bool) -> Self {
        Reporter {
            quiet,
            last: Instant::now(),
        }
    }

    fn report(&mut self, p: &Progress) {
        if self.quiet || self.last.elapsed() < PROGRESS_INTERVAL {
            return;
        }
        self.last = Instant::now();
        eprintln!(
            "… {} record(s) read, {} exported, {:.1} MiB",
            p.scanned,
            p.exported,
            p.bytes as f64 / (1024.0 * 1024.0)
        );
    }
}

pub fn verify_export(cli: &Cli, args: &VerifyExportArgs) -> Result<()> {
    let key_pem = match (&args.public_key, &args.config) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        (None, Some(config)) => Some(derived_public_key(config)?),
        (None, None) => None,
    };
    let report = export::verify_exports(&args.dir, key_pem.as_deref()).map_err(|e| anyhow!(e))?;
    if cli.json {
        let runs: Vec<serde_json::Value> = report
            .runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "path": r.path,
                    "ok": r.ok(),
                    "records": r.records,
                    "files": r.files,
                    "signature_verified": r.signature_verified,
                    "problems": r.problems,
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::json!({ "ok": report.ok(), "runs": runs, "problems": report.problems })
        );
    } else {
        for r in &report.runs {
            let seqs = r.manifest.as_ref().map_or("-".into(), |m| {
                format!(
                    "{}..{}",
                    m.first_seq.map_or("-".into(), |s| s.to_string()),
                    m.last_seq.map_or("-".into(), |s| s.to_string())
                )
            });
            let signature = match (r.signature_verified, key_pem.is_some()) {
                (true, _) => "signature verified",
                (false, true) => "signature NOT verified",
                (false, false) => "no public key: signature not checked",
            };
            outln!(
                "{}: {} record(s) in {} file(s), seq {seqs}, {signature}",
                r.path.display(),
                r.records,
                r.files
            );
            for problem in &r.problems {
                outln!("PROBLEM: {}: {problem}", r.path.display());
            }
        }
        for problem in &report.problems {
            outln!("PROBLEM: {problem}");
        }
    }
    let count = report.problems.len() + report.runs.iter().map(|r| r.problems.len()).sum::<usize>();
    if count == 0 {
        Ok(())
    } else {
        Err(anyhow!(
            "the export failed verification ({count} problem(s))"
        ))
    }
}

fn derived_public_key(config: &Path) -> Result<String> {
    let c = Config::load(config)?;
    Ok(
        crate::token::TokenAuthority::load(&c.signing_key_path, &c.issuer, &c.audience)?
            .public_key_pem()
            .to_owned(),
    )
}

#[derive(clap::Subcommand)]
pub enum ExportCommand {
    /// Set up a scheduled export (a data package); admin only.
    Create {
        /// The data package's name: letters, digits, `-`, `_`.
        #[arg(long)]
        name: String,
        /// Only this database's records (default: every record).
        #[arg(long)]
        database: Option<String>,
        /// jsonl, csv or parquet.
        #[arg(long, value_parser = parse_format)]
        format: ExportFormat,
        /// Absolute folder on the lockbox server; each run adds a folder inside it.
        #[arg(long)]
        to: String,
        /// How often it runs: `1h`, `1d`, …
        #[arg(long)]
        every: String,
    },
    /// The data export page: every scheduled export and how its last run went.
    List,
    /// Every run of one export, newest first.
    History { name: String },
    /// Run one export now; exits non-zero if the run failed.
    Run { name: String },
}

pub async fn run(cli: &Cli, command: &ExportCommand) -> Result<()> {
    let client = cli.client()?;
    match command {
        ExportCommand::Create {
            name,
            database,
            format,
            to,
            every,
        } => {
            let new = crate::exports::NewExport {
                name: name.clone(),
                database: database.clone(),
                format: *format,
                to: to.clone(),
                every: every.clone(),
            };
            let created = client.create_export(&new).await?;
            if cli.json {
                super::display::print_json(&created)?;
            } else {
                outln!("{}", created.schedule.name);
            }
        }
        ExportCommand::List => {
            let list = client.list_exports().await?;
            if cli.json {
                super::display::print_json(&list)?;
            } else {
                print_schedules(&list);
            }
        }
        ExportCommand::History { name } => {
            let runs = client.export_history(name).await?;
            if cli.json {
                super::display::print_json(&runs)?;
            } else {
                print_runs(&runs);
            }
        }
        ExportCommand::Run { name } => {
            let run = client.run_export(name).await?;
            if cli.json {
                super::display::print_json(&run)?;
            } else {
                print_runs(std::slice::from_ref(&run));
            }
            if let Some(error) = &run.error {
                return Err(anyhow!("the export run failed: {error}"));
            }
        }
    }
    Ok(())
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_schedules(list: &[crate::exports::ExportStatus]) {
    let header = [
        "DATA PACKAGE",
        "DATABASE",
        "LAST EXPORT STATUS",
        "DATA LAST EXPORTED ON",
        "CREATED BY",
        "CREATED ON",
        "EXPORT HISTORY",
        "FORMAT",
        "EVERY",
        "EXPORTED THROUGH SEQ",
        "TARGET",
    ];
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let schedule = &s.schedule;
            vec![
                schedule.name.clone(),
                schedule.database.clone().unwrap_or_else(|| "(all)".into()),
                s.last_status.map_or("-", |st| st.as_str()).to_owned(),
                time(s.last_exported_at),
                schedule.created_by.clone(),
                time(Some(schedule.created_at)),
                format!("{} run(s)", s.runs),
                schedule.format.as_str().to_owned(),
                humantime::format_duration(Duration::from_secs(schedule.every_secs)).to_string(),
                schedule.watermark.to_string(),
                schedule.target.clone(),
            ]
        })
        .collect();
    super::print_columns(&header, &rows);
}

fn print_runs(runs: &[crate::store::ExportRun]) {
    let header = [
        "ID", "STARTED", "TRIGGER", "STATUS", "SEQ", "RECORDS", "FILES", "RESULT",
    ];
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let seq = if r.through_seq > r.after_seq {
                format!("{}..{}", r.after_seq + 1, r.through_seq)
            } else {
                format!("after {}", r.after_seq)
            };
            vec![
                r.id.to_string(),
                time(Some(r.started_at)),
                r.trigger.clone(),
                r.status.as_str().to_owned(),
                seq,
                r.records.to_string(),
                r.files.to_string(),
                r.error
                    .clone()
                    .or_else(|| r.path.clone())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    super::print_columns(&header, &rows);
}
