//! The audit trail: an append-only JSON Lines file of every lockbox action and every SQL
//! statement, with its own schema and durability. It is a data product, never `tracing`
//! output.
//!
//! Statement records are appended with [`AuditLog::append_durable`]: the session writes
//! its record itself, then (in `fsync` mode) waits for the syncer thread's fdatasync;
//! concurrent sessions share one fsync (group commit).

mod append;
mod arrival;
pub mod chain;
mod clip;
mod encode;
pub mod export;
mod file;
pub use file::lock_trail;
pub(crate) mod filters;
pub(crate) mod fleet;
mod journal;
/// A request record numbered `i`, for tests that need a trail of something.
#[cfg(test)]
pub(crate) use journal::tests::event as sample_event;
mod node;
pub mod pg_sink;
mod reader;
mod record;
pub mod redact;
mod rotation;
pub mod segments;
pub(crate) mod source;
mod syncer;
pub mod tail;
pub(crate) mod witness;
mod writer;

#[cfg(test)]
pub(crate) use append::may_lead_sync_here;
pub(crate) use append::{Landed, Unwritten};
pub use clip::ClipLimits;
pub(crate) use journal::{
    path_for as journal_path, recover as recover_journal, unrecovered as unrecovered_in_journal,
};
pub use reader::{open_segments, read_records, shown_statement, visit_records, AuditQuery};
pub use record::{
    AdminEvent, AdminRecord, AuditEvent, ExportEvent, ExportRecord, OutcomeRecord, OutcomeStatus,
    Protocol, RequestEvent, RequestRecord, SessionEvent, SessionFields, SessionRecord,
    StatementNames, StatementRecord,
};
pub use writer::{AuditLog, AuditOptions};

/// Why the audit trail could not take a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {message}")]
    Io { path: String, message: String },
    #[error("audit log is closed")]
    Closed,
    /// The trail ends before the checkpoint witnessed outside it: records were cut off.
    #[error("audit trail {path} ends at seq {last_seq}, but {witnessed_by} witnessed a checkpoint at seq {witnessed_seq}: the trail was truncated (records after seq {last_seq} are missing); nothing was appended")]
    Truncated {
        path: String,
        last_seq: u64,
        witnessed_seq: u64,
        witnessed_by: String,
    },
    /// Records follow the checkpoint a clean stop ended the trail with: they were written
    /// while lockbox was not running.
    #[error("audit trail {path}: records up to seq {last_seq} follow the checkpoint at seq {closed_seq} that lockbox ended the trail with when it stopped; they were written while lockbox was not running and no signature covers them. Nothing was appended: move them aside (or restore the trail) after investigating")]
    AppendedWhileStopped {
        path: String,
        closed_seq: u64,
        last_seq: u64,
    },
    /// The trail holds another record where the witnessed checkpoint was.
    #[error("audit trail {path}: seq {seq} is not the checkpoint {witnessed_by} witnessed at seq {witnessed_seq}: the trail was rewritten or replaced; nothing was appended")]
    Diverged {
        path: String,
        seq: u64,
        witnessed_seq: u64,
        witnessed_by: String,
    },
    /// The fleet's trail could not be read from the audit database.
    #[error("audit database: {message}")]
    Database { message: String },
}
