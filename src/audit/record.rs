//! The audit record schema. Field names are a contract with auditors' tooling: add,
//! never rename.

use std::sync::Arc;

use serde::Serialize;

use crate::sql::StatementKind;

/// One thing that happened. The writer adds `seq` and `time` to each.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuditEvent {
    Statement(StatementRecord),
    Outcome(OutcomeRecord),
    Session(SessionRecord),
    Request(RequestRecord),
    Admin(AdminRecord),
    Export(ExportRecord),
}

/// Who is behind a proxied session; shared by all of its records.
#[derive(Debug, Clone, Serialize)]
pub struct SessionFields {
    pub session_id: String,
    pub request_id: String,
    pub ticket: String,
    pub engineer: String,
    pub database: String,
    pub client_addr: String,
    /// The session runs on break-glass access.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// Statements recorded so far (for `lockbox session list`); not part of the record.
    #[serde(skip)]
    pub statements: crate::metrics::Counter,
    /// These members as JSON, serialized once for all of the session's records.
    #[serde(skip)]
    pub(crate) encoded: super::encode::EncodedMembers,
}

impl SessionFields {
    /// The only way to build one outside this crate: the JSON of these members is cached
    /// inside on first use ((`members`)), so they are set once, here.
    pub fn new(
        session_id: String,
        request_id: String,
        ticket: String,
        engineer: String,
        database: String,
        client_addr: String,
        break_glass: bool,
    ) -> SessionFields {
        SessionFields {
            session_id,
            request_id,
            ticket,
            engineer,
            database,
            client_addr,
            break_glass,
            statements: Default::default(),
            encoded: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Simple,
    Extended,
    FunctionCall,
    /// A Bind whose portal's Execute did not follow it: the server planned the statement
    /// (running what planning runs) and the record stands for that.
    Bind,
}

/// A statement, written before it is forwarded.
#[derive(Debug, Clone, Serialize)]
pub struct StatementRecord {
    #[serde(flatten)]
    pub session: Arc<SessionFields>,
    pub protocol: Protocol,
    /// Shared with the prepared statement it runs, if any (an Execute records it without a
    /// copy), unless its literals are masked.
    pub statement: Arc<str>,
    /// Bind parameters (extended protocol) or FunctionCall arguments: text values as
    /// strings, NULL as null, binary values as `{"binary_hex": "…"}`. Shared with the portal
    /// they were bound to, unless they are masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Arc<[serde_json::Value]>>,
    pub kind: StatementKind,
    /// What the database's redaction settings kept out of this record (`literals`,
    /// `parameters`); absent when the record is verbatim.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<&'static str>,
    /// What the parser found `statement` names, carried only for a text long enough to be
    /// clipped: a clipped record keeps them in `statement_clipped`, so text padded past the
    /// limit cannot carry a table out of the record. Never serialized beside a whole text.
    #[serde(skip)]
    pub mentions: Option<StatementNames>,
}

/// The relations and functions one statement names (`guard::Facts`), shared with its
/// analysis: no copy per record.
#[derive(Debug, Clone, Default)]
pub struct StatementNames {
    pub relations: Arc<[String]>,
    pub functions: Arc<[String]>,
    /// Names used as fields (`t.name`): columns, or calls in column notation.
    pub fields: Arc<[String]>,
    /// The text without its comments and long string constants (`sql::skeleton`): what a
    /// statement padded past the limit does, kept in `statement_clipped` as far as the
    /// record has room.
    pub skeleton: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// CommandComplete (or EmptyQueryResponse, PortalSuspended).
    Ok,
    /// ErrorResponse.
    Error,
    /// An earlier error in the same query string or pipeline made the server skip it.
    NotExecuted,
    /// The session ended before the server's answer reached the proxy. Whether it ran is
    /// not known: the server may have completed (and committed) it before it saw the end.
    Interrupted,
    /// A guardrail refused it; it never reached the database.
    Refused,
}

/// What became of a statement; `statement_seq` points at its statement record. It names
/// the session like its statement does (request, engineer, database, …), so every filter
/// and every per-database export holds outcomes too; the fields are the session's own,
/// shared, so an outcome costs no copy of them.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeRecord {
    pub statement_seq: u64,
    #[serde(flatten)]
    pub session: Arc<SessionFields>,
    pub status: OutcomeStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The guardrail rule behind a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// COPY data bytes moved (client to server for FROM STDIN, server to client for TO).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEvent {
    Connected,
    AuthenticationFailed,
    Disconnected,
    DroppedExpired,
    DroppedRevoked,
    DroppedShutdown,
    /// An admin or approver, or the session's own engineer, ended the session
    /// (`lockbox session kill`, `reason`).
    DroppedKilled,
    /// A login whose token held, refused for its grant's session limit (`reason`); not a
    /// failed login, so it counts toward no source's `failed_login_limit`.
    SessionRefused,
    /// Logins from one source past `[proxy] failed_login_limit`, refused without a record
    /// each: one summary per source and window, `reason` giving the count.
    LoginsThrottled,
    /// The backend of a session the proxy ended was still running after
    /// `timings.terminate_after`; the proxy terminated it.
    BackendTerminated,
    /// The backend of a session the proxy ended went away on its own.
    BackendGone,
    /// The proxy could not make sure the backend of a session it ended is gone (`reason`).
    BackendTerminationFailed,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    pub event: SessionEvent,
    pub session_id: String,
    pub client_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engineer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The upstream server's process id of the session's backend (`backend_*` events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_pid: Option<i32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestEvent {
    Created,
    /// A rule denied it before anyone was asked.
    Rejected,
    /// One approval counted; the stage needs more.
    ApprovalRecorded,
    /// The internal stage is complete; the customer's approvers are asked.
    CustomerNotified,
    Approved,
    Denied,
    Expired,
    Revoked,
    Cancelled,
    TokenIssued,
    Completed,
    /// An extension of this request was asked for / approved.
    ExtensionRequested,
    Extended,
    /// Emergency access granted without approvals.
    BreakGlassGranted,
    /// An approver reviewed a break-glass grant after the fact.
    Acknowledged,
    /// The change recorded just before for this request did not take effect.
    Superseded,
    /// An admin or approver ended one live session of this request (`reason`).
    SessionKilled,
}

/// A control-plane action on an access request.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub event: RequestEvent,
    pub request_id: String,
    /// Who did it (`lockbox` for the expiry sweeper).
    pub actor: String,
    pub engineer: String,
    pub database: String,
    pub ticket: String,
    pub access: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_expires_at: Option<String>,
    /// The request's status after the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Set on every record of break-glass access.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminEvent {
    /// Which databases need customer approval changed.
    PolicyChanged,
    ConfigReloaded,
    /// A reload was refused; the running configuration stays.
    ConfigReloadRejected,
}

/// A change to how lockbox itself is configured.
#[derive(Debug, Clone, Serialize)]
pub struct AdminRecord {
    pub event: AdminEvent,
    pub actor: String,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportEvent {
    ScheduleCreated,
    Completed,
    Failed,
}

/// A scheduled export was set up, or one of its runs completed or failed.
#[derive(Debug, Clone, Serialize)]
pub struct ExportRecord {
    pub event: ExportEvent,
    pub schedule: String,
    /// Who did it (`lockbox` for the scheduler).
    pub actor: String,
    pub format: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The run covered the records after this sequence number…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// …up to this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub through_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
