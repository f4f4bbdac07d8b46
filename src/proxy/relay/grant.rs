//! What an admitted session's grant allows, fixed at admission and handed to the relay.

use std::sync::Arc;

use crate::audit::redact::Redaction;
use crate::guard::Guardrails;
use crate::policy::AccessLevel;

/// Per-grant limits the relay enforces.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// The grant's statement timeout. It is set upstream as the session's default, and the
    /// proxy cancels a statement that outlives it anyway: a client may set its own
    /// `statement_timeout` (pg_dump sets 0) without lifting the grant's.
    pub statement_timeout: Option<std::time::Duration>,
    /// Most rows one statement may return.
    pub max_rows: Option<u64>,
    /// How to cancel the upstream backend's running statement.
    pub cancel: Option<CancelKey>,
    /// How long a client that left mid-statement has its statements' answers waited for
    /// (see `settle.rs`): half the reaper's window (`timings.terminate_after`), which
    /// counts from the relay's end, so the wait never lets a backend run longer.
    pub settle_within: std::time::Duration,
}

/// The upstream backend's cancel key and where to send it.
#[derive(Clone, Debug)]
pub struct CancelKey {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
}

/// What the session's grant and database allow and ask for, fixed at admission.
#[derive(Clone, Debug)]
pub struct Grant {
    pub access: AccessLevel,
    /// The database's own statement rules.
    pub rules: Guardrails,
    pub limits: Limits,
    /// What the audit trail keeps out of this session's records.
    pub redaction: Redaction,
    /// The database's own function names, read at login when it has statement rules or
    /// the grant a row limit.
    pub database_functions: Arc<std::collections::HashSet<String>>,
    /// The links between its relations that `catalog_reach` was computed from.
    pub database_links: Arc<[crate::guard::RelationLink]>,
    /// How many reads of the database's code that differ from the one before this session
    /// took up (`Relay::catch_up_on_code`): 0 for the login's. A prepared statement checked
    /// under an earlier one is checked again where the server plans it again.
    pub code_epoch: u64,
    /// What naming a relation reaches without naming it, from the database's catalog at
    /// login: an off-limits table's rows (through a parent, a partition, a view…), or one
    /// of the database's functions (a view's expressions, a trigger…).
    pub catalog_reach: Arc<crate::guard::CatalogReach>,
    /// The session's search path, as the server set it at login (role and database
    /// defaults), searches a schema before pg_catalog: unqualified catalog names may find
    /// another relation. Asked only under a row limit; true when it could not be asked.
    pub search_path_shadows_catalog: bool,
    /// The database's code generation (`Provisioner::code_generation`), counted up by every
    /// session of this process that forwards DDL to it, and its value before
    /// `database_functions` was read: once it moves, that list may miss a function.
    pub code_generation: Arc<std::sync::atomic::AtomicU64>,
    pub code_generation_at_login: u64,
    /// The reads of the database's code made after the one above (`provision::code`): the
    /// session takes each up at its next batch, so what the customer made since login
    /// (a view over a function) reaches it too. None where the session reads no code.
    pub code_updates: Option<crate::provision::CodeUpdates>,
    /// When the session's access ends (wall clock), for the warnings before it.
    pub ends_at: chrono::DateTime<chrono::Utc>,
    /// `[timings] warn_before`: offsets before the end that get a NOTICE, longest first.
    pub warn_before: Vec<std::time::Duration>,
    /// The server's encoding is UTF8, as the parser's: both cut a name over 63 bytes at the
    /// same place (see `upstream::greeting_says_utf8`).
    pub server_utf8: bool,
}

impl Grant {
    /// A read grant without rules, limits or redaction, ending at `ends_at`: what the
    /// relay's tests and its fuzz target start from.
    pub(crate) fn plain_read(ends_at: chrono::DateTime<chrono::Utc>) -> Grant {
        Grant {
            access: AccessLevel::Read,
            rules: Default::default(),
            limits: Limits::default(),
            redaction: Default::default(),
            database_functions: Default::default(),
            database_links: Arc::from([]),
            code_epoch: 0,
            catalog_reach: Default::default(),
            search_path_shadows_catalog: false,
            code_generation: Default::default(),
            code_generation_at_login: 0,
            code_updates: None,
            ends_at,
            warn_before: Vec::new(),
            server_utf8: true,
        }
    }
}
