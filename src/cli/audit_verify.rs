//! `lockbox audit verify`: the chain, the checkpoint signatures and, with `--config`, the
//! checkpoint witnessed outside the trail (state store, audit database), so a trail cut
//! right after a checkpoint fails too. On a running deployment the records after the last
//! checkpoint are not signed yet: with `--config` (or `--live`) they are reported as
//! pending, not as a problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::audit::chain::Report;
use crate::audit::export::Witnessing;
use crate::audit::witness::{self, Kept};
use crate::config::Config;

/// Longest the audit database may take to say which checkpoint it holds.
const SINK_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn verify_audit(
    files: &[PathBuf],
    public_key: Option<&Path>,
    live: bool,
    config: Option<&Path>,
    json: bool,
) -> Result<()> {
    let config = config.map(Config::load).transpose()?;
    let whole_trail = files.is_empty();
    let files: Vec<PathBuf> = match (whole_trail, &config) {
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
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    // The writer signs its tail within seconds and at shutdown; a deployment read through
    // its config may be running, so an unsigned tail is pending there, not a failure. What
    // no signature covers, the witnessed checkpoint does.
    let pending_allowed = live || config.is_some();
    let report = crate::audit::chain::verify(&paths, key_pem.as_deref(), pending_allowed)
        .map_err(|e| anyhow!(e))?;
    let mut problems = report.problems.clone();
    let mut witnessed = Vec::new();
    if let (true, Some(c)) = (whole_trail, &config) {
        match crate::audit::unrecovered_in_journal(&c.audit_path) {
            Ok(0) => {}
            Ok(n) => problems.push(format!(
                "{n} record(s) are in the audit journal ({}) and not yet in the trail (a crash in fsync mode): lockbox writes them back when it starts",
                crate::audit::journal_path(&c.audit_path).display()
            )),
            Err(e) => problems.push(format!("the audit journal could not be read: {e}")),
        }
        if report.checkpoints > 0 && c.state_postgres.is_none() && !c.state_path.exists() {
            // The witness lives in the state store: without it a trail cut after a signed
            // checkpoint reads as whole (an attack review deleted both and verify passed).
            problems.push(format!(
                "the state store {} is missing, so the checkpoint it witnesses cannot be compared: a trail cut after its last checkpoint could not be told from a whole one",
                c.state_path.display()
            ));
        }
        for (by, kept) in witnesses_of(c).await {
            let last_file = paths.last().copied().unwrap_or(&c.audit_path);
            // A trail closed before it held a record has no checkpoint to find.
            let found = if kept.witness.seq == 0 {
                Ok(())
            } else {
                witness::check_files(&paths, &kept.witness, &by, &c.audit_path)
            };
            let checked = found
                .and_then(|()| {
                    witness::check_closed(&kept, last_file, report.last_seq.unwrap_or(0))
                })
                .and_then(|()| witness::check_closed_end(&kept, last_file, report.partial_tail));
            match checked {
                Ok(()) => witnessed.push((by, kept.witness.seq)),
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    let pending = if pending_allowed {
        report.uncovered_tail
    } else {
        0
    };
    let outcome = Outcome {
        report: &report,
        problems: &problems,
        pending,
        witnessed: &witnessed,
        keyed: key_pem.is_some(),
    };
    if json {
        outcome.print_json();
    } else {
        outcome.print_text();
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "the audit log failed verification ({} problem(s))",
            problems.len()
        ))
    }
}

/// What an export checks its source against besides the chain (as `verify --config`
/// does): the witnessed checkpoints, whether the state store holding them is gone, and
/// records only the journal holds.
pub(in crate::cli) async fn witnessing_of(config: &Config) -> Witnessing {
    let mut problems = Vec::new();
    match crate::audit::unrecovered_in_journal(&config.audit_path) {
        Ok(0) => {}
        Ok(n) => problems.push(format!(
            "{n} record(s) are in the audit journal and not yet in the trail (a crash in fsync mode): lockbox writes them back when it starts"
        )),
        Err(e) => problems.push(format!("the audit journal could not be read: {e}")),
    }
    Witnessing {
        witnesses: witnesses_of(config).await,
        store_missing: config.state_postgres.is_none() && !config.state_path.exists(),
        problems,
    }
}

/// The checkpoints witnessed outside the trail, each with where it was kept. A witness
/// that cannot be read is a warning: the chain is still checked.
async fn witnesses_of(config: &Config) -> Vec<(String, Kept)> {
    let mut out = Vec::new();
    match stored_witness(config).await {
        Ok(Some(w)) => out.push(("the state store".to_owned(), w)),
        // Witnesses are kept per node id and trail path: a trail verified elsewhere than
        // where it was written (another host's default node id, moved files) has none, and
        // a cut after its last checkpoint would pass unseen; say so rather than stay silent.
        Ok(None) if trail_has_records(&config.audit_path) => eprintln!(
            "warning: the state store holds no witnessed checkpoint of this trail (node id `{}`, {}): a trail cut after a checkpoint may go unnoticed (verify with the configuration of the node that wrote it)",
            config.node_id,
            config.audit_path.display()
        ),
        Ok(None) => {}
        Err(e) => eprintln!(
            "warning: cannot read the witnessed checkpoint from the state store {} ({e}); a trail cut after a checkpoint may go unnoticed",
            config.state_path.display()
        ),
    }
    if let Some(sink) = &config.audit_pg_sink {
        match tokio::time::timeout(
            SINK_TIMEOUT,
            witness::witnessed_checkpoint(sink),
        )
        .await
        {
            Ok(Ok(Some(witness))) => out.push((
                "the audit database".to_owned(),
                Kept {
                    witness,
                    closed: false,
                },
            )),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => eprintln!(
                "warning: cannot read the last checkpoint the audit database holds ({e})"
            ),
            Err(_) => eprintln!(
                "warning: the audit database did not answer within {SINK_TIMEOUT:?}; its checkpoint was not compared"
            ),
        }
    }
    out
}

/// Whether the trail whose active file is `active` holds any byte (a trail never written
/// has nothing to witness).
fn trail_has_records(active: &std::path::Path) -> bool {
    crate::audit::segments::segments(active).is_ok_and(|files| {
        files
            .iter()
            .any(|f| std::fs::metadata(&f.path).is_ok_and(|m| m.len() > 0))
    })
}

async fn stored_witness(config: &Config) -> Result<Option<Kept>> {
    // No state store yet: nothing was ever witnessed (and none is created here).
    if config.state_postgres.is_none() && !config.state_path.exists() {
        return Ok(None);
    }
    let store = crate::store::Store::from_config(config).await?;
    Ok(witness::kept(&store, &config.audit_path).await?)
}

struct Outcome<'a> {
    report: &'a Report,
    problems: &'a [String],
    pending: u64,
    witnessed: &'a [(String, u64)],
    keyed: bool,
}

impl Outcome<'_> {
    fn print_json(&self) {
        let r = self.report;
        let witnessed: Vec<serde_json::Value> = self
            .witnessed
            .iter()
            .map(|(by, seq)| serde_json::json!({ "by": by, "seq": seq }))
            .collect();
        outln!(
            "{}",
            serde_json::json!({
                "ok": self.problems.is_empty(),
                "records": r.records,
                "first_seq": r.first_seq,
                "last_seq": r.last_seq,
                "checkpoints": r.checkpoints,
                "checkpoints_verified": r.checkpoints_verified,
                "uncovered_tail": r.uncovered_tail,
                "pending": self.pending,
                "partial_tail": r.partial_tail,
                "witnessed": witnessed,
                "problems": self.problems,
            })
        );
    }

    fn print_text(&self) {
        let r = self.report;
        outln!(
            "{} record(s), seq {}..{}, {} checkpoint(s), {} signature(s) verified{}",
            r.records,
            r.first_seq.unwrap_or(0),
            r.last_seq.unwrap_or(0),
            r.checkpoints,
            r.checkpoints_verified,
            if self.keyed {
                ""
            } else {
                " (no public key: signatures not checked)"
            }
        );
        for (by, seq) in self.witnessed {
            outln!("checkpoint seq {seq} witnessed by {by}: present");
        }
        if self.pending > 0 {
            outln!(
                "pending: {} record(s) after the last checkpoint, not signed yet (the writer signs them within seconds, and at shutdown)",
                self.pending
            );
        }
        if r.partial_tail {
            outln!("pending: a record was being written at the end of the last file");
        }
        for problem in self.problems {
            outln!("PROBLEM: {problem}");
        }
    }
}
