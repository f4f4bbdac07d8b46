//! The relay's side of the audit trail: a batch's statement records, written (and in
//! `fsync` mode made durable) before the batch goes upstream, each opening its tracker
//! slot; and the outcome records of settled statements, which wait for nothing.

use std::sync::Arc;
use std::time::Instant;

use super::{guarded, End, Relay, BIG_BATCH};
use crate::audit::{
    redact, AuditEvent, AuditLog, Landed, OutcomeRecord, OutcomeStatus, Protocol, StatementRecord,
    Unwritten,
};
use crate::guard::Refusal;
use crate::proxy::statements::MessageId;
use crate::proxy::tracker::{Outcome, Step};

/// A statement record waiting to be written, and where its tracker slot goes.
pub(super) enum Pending {
    /// A statement; the name change (PREPARE, DECLARE, …) its CommandComplete confirms;
    /// the portal it takes rows from (an Execute's, a FETCH's cursor).
    Statement {
        record: AuditEvent,
        change: Option<MessageId>,
        portal: Option<String>,
    },
    /// Refused by a guardrail; a failing stand-in goes upstream in its place. The message id
    /// is that of the name change the stand-in's failure makes (`Statements::refused_parse`).
    Refused(AuditEvent, Arc<Refusal>, Option<MessageId>),
    /// Recorded, but will not run (another statement of its query string was refused).
    NotRun(AuditEvent),
    /// The end of a query string or FunctionCall (message id).
    QueryEnd(MessageId),
    Sync(MessageId),
    /// A Parse, Bind, Close or Describe (message id), which the server answers.
    Step(Step, MessageId),
    /// A Bind without its portal's Execute, recorded for the planning it runs (see
    /// `planning.rs`); its outcome is the server's answer to the Bind.
    Planned(AuditEvent, MessageId),
    CopyEnd,
    /// The next statement reads the system catalogs only: a row limit does not count it.
    RowsUncounted,
    /// The next statement is COPY … FROM STDIN (see `Tracker::copy_start_awaited`).
    CopyFromStdin,
}

/// Whether a statement record was sent with the extended protocol (an Execute, or a Bind
/// recorded for its planning): an error makes the server skip to the next Sync.
fn is_extended(record: &AuditEvent) -> bool {
    matches!(
        record,
        AuditEvent::Statement(StatementRecord {
            protocol: Protocol::Extended | Protocol::Bind,
            ..
        })
    )
}

fn statement_len(record: &AuditEvent) -> usize {
    match record {
        AuditEvent::Statement(s) => s.statement.len(),
        _ => 0,
    }
}

/// Appends a batch's statement records (see `AuditLog::append_durable_later`). Encoding
/// and writing a batch's worth of long texts takes a while: the session thread's other
/// sessions go on elsewhere meanwhile.
fn append_statements<'a>(
    audit: &'a AuditLog,
    records: impl Iterator<Item = &'a AuditEvent> + Clone,
) -> Result<
    (
        Landed,
        impl std::future::Future<Output = Result<u64, crate::audit::AuditError>> + 'a,
    ),
    Unwritten,
> {
    let text: usize = records.clone().map(statement_len).sum();
    let append = || audit.append_durable_later(records);
    if text > BIG_BATCH {
        crate::runtime::blocking(append)
    } else {
        append()
    }
}

impl Relay {
    /// Writes the batch's statement records durably and opens their tracker slots.
    pub(super) async fn record_statements(&mut self, mut pending: Vec<Pending>) -> Result<(), End> {
        let records = pending.iter().filter_map(|p| match p {
            Pending::Statement { record: e, .. }
            | Pending::Refused(e, ..)
            | Pending::NotRun(e)
            | Pending::Planned(e, _) => Some(e),
            _ => None,
        });
        let landed = if records.clone().next().is_none() {
            None
        } else {
            // Settled after the append's borrow of the audit log ends.
            let (landed, failed) = match append_statements(&self.audit, records) {
                Ok((landed, durable)) => match guarded(&mut self.term, durable).await {
                    Ok(Ok(_)) => (Some(landed), None),
                    // The records are in the trail (some of them, a large batch's earlier
                    // parts, maybe on disk), and none will be sent.
                    Ok(Err(e)) => (Some(landed), Some(Err(e))),
                    // The session ended while the records waited for their fsync: likewise.
                    Err(end) => (Some(landed), Some(Ok(end))),
                },
                // A large batch written in parts, one of which failed: the parts before it
                // are in the trail, and none of the batch will be sent.
                Err(Unwritten { error, written }) => (written.map(|w| *w), Some(Err(error))),
            };
            if let Some(failed) = failed {
                if let Some(landed) = landed {
                    self.record_outcomes(landed.seqs().map(Outcome::never_sent));
                }
                return Err(failed.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "audit write failed; statement refused");
                    End::AuditFailed
                }));
            }
            landed
        };
        // One sequence number per record, in the order of `pending`: consecutive within each
        // part the batch was written in.
        let mut seqs = landed.iter().flat_map(Landed::seqs);
        let started = Instant::now();
        let mut not_run = Vec::new();
        let mut uncounted = false;
        let mut copy_in = false;
        for p in pending.drain(..) {
            match p {
                Pending::RowsUncounted => uncounted = true,
                Pending::CopyFromStdin => copy_in = true,
                Pending::Statement {
                    record,
                    change,
                    portal,
                } => {
                    let seq = next_seq(&mut seqs)?;
                    let copy_in = std::mem::take(&mut copy_in);
                    if let Some(skipped) = self.tracker.skipped(seq, started, None) {
                        uncounted = false;
                        not_run.push(skipped);
                        continue;
                    }
                    if std::mem::take(&mut uncounted) {
                        self.uncounted.insert(seq);
                    }
                    // Only a row limit asks which portal rows come from.
                    if let Some(portal) = portal.filter(|_| self.grant.limits.max_rows.is_some()) {
                        self.drawn_from.insert(seq, portal);
                    }
                    self.tracker
                        .statement_changing(seq, started, is_extended(&record), change);
                    if copy_in {
                        self.tracker.copy_from_stdin();
                    }
                }
                Pending::Refused(record, refusal, change) => {
                    tracing::info!(rule = refusal.rule, "statement refused by guardrail");
                    let seq = next_seq(&mut seqs)?;
                    match self.tracker.skipped(seq, started, Some(&refusal)) {
                        Some(skipped) => not_run.push(skipped),
                        None => self.tracker.refused(
                            seq,
                            started,
                            refusal,
                            is_extended(&record),
                            change,
                        ),
                    }
                }
                Pending::NotRun(_) => not_run.push(Outcome::not_run(next_seq(&mut seqs)?)),
                Pending::QueryEnd(id) => self.tracker.query_end(id),
                Pending::Sync(id) => self.tracker.sync(id),
                Pending::Step(step, id) => self.tracker.step(step, id),
                Pending::Planned(_, id) => {
                    let seq = next_seq(&mut seqs)?;
                    not_run.extend(self.tracker.planned_bind(id, seq, started));
                }
                Pending::CopyEnd => self.tracker.copy_end(),
            }
        }
        self.spare_pending = super::buffers::emptied(pending);
        self.record_outcomes(not_run);
        Ok(())
    }

    /// Appends the records of settled statements; they ride the next write.
    pub(super) fn record_outcomes(&mut self, outcomes: impl IntoIterator<Item = Outcome>) {
        // The records are built in a buffer kept from call to call.
        let mut records = std::mem::take(&mut self.outcome_records);
        records.extend(outcomes.into_iter().map(|o| {
            AuditEvent::Outcome(OutcomeRecord {
                bytes: o.bytes,
                statement_seq: o.statement_seq,
                session: self.session.clone(),
                rows: o.rows(),
                status: o.status,
                command_tag: o.command_tag,
                sqlstate: o.sqlstate,
                // Error messages echo values ("invalid input syntax …: \"…\""), so they
                // are redacted along with the values themselves.
                message: if self.grant.redaction.any() {
                    o.message.map(|_| redact::MASK.to_owned())
                } else {
                    o.message
                },
                rule: o.rule.map(str::to_owned),
                duration_ms: o.duration_ms,
            })
        }));
        if !records.is_empty() {
            self.audit.append_slice(&records);
        }
        self.outcome_records = super::buffers::emptied(records);
    }
}

/// The sequence number of the batch's next statement record. The writer gives one per
/// record, so running out is a bug: the session ends rather than file an outcome under
/// another record's number.
fn next_seq(seqs: &mut impl Iterator<Item = u64>) -> Result<u64, End> {
    seqs.next()
        .ok_or_else(|| End::LostTrack("fewer audit sequence numbers than statement records".into()))
}

/// The COPY data bytes counted so far belong to `outcome` if it ends a COPY (or fails one)
/// and has none yet (an outcome held for its Sync's commit took them as it completed).
pub(super) fn take_copy_bytes(copy_bytes: &mut u64, outcome: &mut Outcome) {
    if outcome.bytes.is_some() {
        return;
    }
    let is_copy = outcome
        .command_tag
        .as_deref()
        .is_some_and(|t| t.starts_with("COPY"));
    if is_copy || (outcome.status == OutcomeStatus::Error && *copy_bytes > 0) {
        outcome.bytes = Some(std::mem::take(copy_bytes));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::SessionFields;
    use crate::sql::StatementKind;

    fn statement(session: &Arc<SessionFields>, text: &str) -> AuditEvent {
        AuditEvent::Statement(StatementRecord {
            session: session.clone(),
            protocol: Protocol::Simple,
            statement: text.into(),
            params: None,
            kind: StatementKind::Select,
            redacted: vec![],
            mentions: None,
        })
    }

    #[test]
    fn a_batch_of_long_texts_is_appended_off_the_session_threads_way_and_a_short_one_inline() {
        let dir = tempfile::tempdir().expect("dir");
        let (audit, _syncer) = AuditLog::open(&dir.path().join("audit.jsonl"), None).expect("open");
        let session = Arc::new(SessionFields::new(
            "s".into(),
            "r".into(),
            "t".into(),
            "eve".into(),
            "db".into(),
            "127.0.0.1".into(),
            false,
        ));
        let short = [
            statement(&session, "SELECT 1"),
            statement(&session, "SELECT 2"),
        ];
        let long_text = format!("SELECT '{}'", "x".repeat(BIG_BATCH / 2));
        let long = [
            statement(&session, &long_text),
            statement(&session, &long_text),
        ];

        let before = crate::runtime::blocking_calls();
        let (first, _) = append_statements(&audit, short.iter()).expect("short batch");
        assert_eq!(crate::runtime::blocking_calls(), before);
        let (next, _) = append_statements(&audit, long.iter()).expect("long batch");
        assert_eq!(crate::runtime::blocking_calls(), before + 1);
        // Both were appended, in order.
        assert_eq!(next.first(), first.first() + 2);
    }
}
