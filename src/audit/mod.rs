//! The audit trail: an append-only JSON Lines file of every lockbox action and every SQL
//! statement, with its own schema and durability. It is a data product, never `tracing`
//! output.
//!
//! Statement records are appended with [`AuditLog::append_durable`]: the session writes
//! its record itself, then (in `fsync` mode) waits for the syncer thread's fdatasync;
//! concurrent sessions share one fsync (group commit).

pub mod chain;
mod clip;
pub mod export;
mod file;
pub mod pg_sink;
mod reader;
mod record;
pub mod redact;
pub mod segments;
mod syncer;
pub mod tail;
mod writer;

pub use clip::ClipLimits;
pub use reader::{open_segments, read_records, AuditQuery};
pub use record::{
    AdminEvent, AdminRecord, AuditEvent, ExportEvent, ExportRecord, OutcomeRecord, OutcomeStatus,
    Protocol, RequestEvent, RequestRecord, SessionEvent, SessionFields, SessionRecord,
    StatementRecord,
};
pub use writer::{AuditLog, AuditOptions};

/// Why the audit trail could not take a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {message}")]
    Io { path: String, message: String },
    #[error("audit log is closed")]
    Closed,
}
