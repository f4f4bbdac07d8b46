//! What became of one recorded statement, as the tracker settles it.

use std::time::Instant;

use crate::audit::OutcomeStatus;

/// What became of one recorded statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub statement_seq: u64,
    pub status: OutcomeStatus,
    pub command_tag: Option<String>,
    pub sqlstate: Option<String>,
    pub message: Option<String>,
    pub duration_ms: f64,
    /// The guardrail rule that refused it.
    pub rule: Option<&'static str>,
    /// COPY data bytes it moved (either direction), set by the relay as it settles.
    pub bytes: Option<u64>,
    /// Rows an Execute returned before it stopped at its row limit (PortalSuspended, which
    /// has no command tag), set by the relay.
    pub suspended_after: Option<u64>,
}

impl Outcome {
    pub(crate) fn new(seq: u64, started: Instant, status: OutcomeStatus) -> Self {
        Outcome {
            statement_seq: seq,
            status,
            command_tag: None,
            sqlstate: None,
            message: None,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            rule: None,
            bytes: None,
            suspended_after: None,
        }
    }

    /// A statement recorded but never sent (its query string was refused).
    pub fn not_run(seq: u64) -> Self {
        Outcome::new(seq, Instant::now(), OutcomeStatus::NotExecuted)
    }

    /// A statement recorded but never sent: the session ended while its record was
    /// being made durable.
    pub fn never_sent(seq: u64) -> Self {
        Outcome::new(seq, Instant::now(), OutcomeStatus::Interrupted)
    }

    /// Row count from the command tag (`SELECT 3`, `INSERT 0 5`, `COPY 10`), or of an
    /// Execute that stopped at its row limit, the rows it returned.
    pub fn rows(&self) -> Option<u64> {
        let tagged = self
            .command_tag
            .as_deref()
            .and_then(|tag| tag.rsplit(' ').next()?.parse().ok());
        tagged.or(self.suspended_after)
    }
}
