//! Operational counters, rendered for `GET /metrics` in the Prometheus text exposition
//! format (version 0.0.4).
//!
//! The data plane pays one relaxed atomic add per counted thing: every family is a fixed
//! array of atomics indexed by an enum (statement kind, outcome, refusal rule), so no lock,
//! map lookup or allocation happens per statement. Statement, outcome and session counts
//! are taken where every such event already passes: the audit writer (`Metrics::count`),
//! so what the metrics say is what the trail says. Values that cost I/O (pending
//! notifications, database reachability) are read at scrape time only (`metrics_api.rs`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::audit::{AuditEvent, OutcomeStatus, SessionEvent};
use crate::sql::StatementKind;

/// Every statement kind, in the order of [`kind_index`].
const KINDS: [&str; 9] = [
    "select", "insert", "update", "delete", "ddl", "other", "unknown", "empty", "merge",
];

fn kind_index(kind: StatementKind) -> usize {
    match kind {
        StatementKind::Select => 0,
        StatementKind::Insert => 1,
        StatementKind::Update => 2,
        StatementKind::Delete => 3,
        StatementKind::Ddl => 4,
        StatementKind::Other => 5,
        StatementKind::Unknown => 6,
        StatementKind::Empty => 7,
        StatementKind::Merge => 8,
    }
}

/// Every outcome status, in the order of [`outcome_index`].
const OUTCOMES: [&str; 5] = ["ok", "error", "not_executed", "interrupted", "refused"];

fn outcome_index(status: OutcomeStatus) -> usize {
    match status {
        OutcomeStatus::Ok => 0,
        OutcomeStatus::Error => 1,
        OutcomeStatus::NotExecuted => 2,
        OutcomeStatus::Interrupted => 3,
        OutcomeStatus::Refused => 4,
    }
}

/// The guard's rule names (`guard::Refusal::rule`); anything else counts as `other`. A
/// refusal is rare next to a statement, so finding its slot by comparing names is cheap.
const RULES: [&str; 32] = [
    "read_only",
    "unparsable",
    "off_limits",
    "deny_drop",
    "deny_truncate",
    "delete_without_where",
    "update_without_where",
    "opaque_statement",
    "unknown_statement",
    "unknown_cursor",
    "statement_timeout",
    "unscannable",
    "lexer_uncertain",
    "lexer_setting",
    "alter_system",
    "copy_file",
    "copy_program",
    "create_extension",
    "cursor_with_hold",
    "do_block",
    "function_call",
    "load",
    "read_only_setting",
    "read_write_transaction",
    "remote_server",
    "role_change",
    "role_management",
    "server_object",
    "escaping_function",
    "own_login",
    "ownership",
    "other",
];

fn rule_index(rule: &str) -> usize {
    RULES
        .iter()
        .position(|r| *r == rule)
        .unwrap_or(RULES.len() - 1)
}

/// Why the proxy ended a session on its own.
const DROPS: [&str; 4] = ["expired", "revoked", "shutdown", "killed"];

/// What became of an upstream connection dialed before its login was done.
const EARLY_DIALS: [&str; 4] = ["used", "unused", "failed", "stale"];

/// What became of a backend logged in ahead for a grant's next session.
const SPARE_BACKENDS: [&str; 4] = ["used", "expired", "closed", "failed"];

/// What became of a spare backend (see `proxy::spare`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpareOutcome {
    /// Handed to a session of its grant.
    Used = 0,
    /// Closed unused after its idle time, or at its grant's end.
    Expired = 1,
    /// Closed unused for any other reason: its grant's sessions were dropped (revocation),
    /// the proxy stopped, or the server had closed it or said something to it.
    Closed = 2,
    /// Its login failed (the grant's session was never affected).
    Failed = 3,
}

/// What became of an early dial (see `proxy::early_dial`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EarlyDialOutcome {
    /// Its connection was handed to the login (which dials again should the server have
    /// closed it meanwhile).
    Used = 0,
    /// Closed with nothing sent: the login failed or was given up.
    Unused = 1,
    /// The dial failed (the login dials again when it failed fast: refused, reset).
    Failed = 2,
    /// The database was configured differently by the time of the login (dialed again).
    Stale = 3,
}

/// Why a connection that had not logged in yet was closed for a newer one.
const SHED: [&str; 2] = ["source_cap", "max_connections"];

/// Why a connection that had not logged in yet was closed for a newer one (see
/// `proxy::preauth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shed {
    /// Its source opened one more past its quarter of `max_connections`.
    SourceCap = 0,
    /// Every slot was held when another connection came.
    MaxConnections = 1,
}

/// Why a connection was refused before or at login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A token or startup refused (each one audited as `authentication_failed`).
    Authentication = 0,
    /// The source is past `[proxy] failed_login_limit`: refused without a look.
    FailedLoginLimit = 1,
    /// `[proxy] max_connections` reached.
    MaxConnections = 2,
    /// The grant's session limit reached (`max_sessions`, `[proxy] max_sessions_per_grant`).
    GrantSessions = 3,
}

const REFUSED: [&str; 4] = [
    "authentication",
    "failed_login_limit",
    "max_connections",
    "grant_sessions",
];

/// A counter that travels inside a cloned value (a session's statement count in
/// `SessionFields`); a clone starts from the value it was cloned from.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Clone for Counter {
    fn clone(&self) -> Self {
        Counter(AtomicU64::new(self.get()))
    }
}

impl Counter {
    pub fn inc(&self) {
        inc(&self.0);
    }

    pub fn get(&self) -> u64 {
        load(&self.0)
    }
}

/// A histogram with fixed upper bounds, in integer units (microseconds, records).
pub(crate) struct Histogram {
    bounds: &'static [u64],
    /// One more than `bounds`: the last one is `+Inf`.
    buckets: [AtomicU64; MAX_BUCKETS],
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, value: u64) {
        let slot = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines; `per_unit` units make one of the
    /// exposed unit (1e6 for microseconds → seconds). Dividing keeps bounds exact in
    /// decimal (`0.0001`, where multiplying by 1e-6 would print `0.00009999999999999999`).
    fn render(&self, out: &mut String, name: &str, per_unit: f64) {
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let le = *bound as f64 / per_unit;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / per_unit;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Audit append latency bounds, in microseconds (100 µs … 5 s).
const LATENCY_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// fdatasync durations, in microseconds (25 µs … 1 s): fine where disks answer, so the
/// share of a statement's latency that is the disk's own shows. Every 25 µs up to 200 µs,
/// where a local disk's syncs fall: a median read from these buckets is then good to about
/// 12 µs, close enough to tell lockbox's own few tens of µs around a sync (benches).
const FSYNC_US: [u64; 19] = [
    25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 400, 500, 750, 1_000, 2_500, 10_000, 50_000,
    250_000, 1_000_000,
];

/// Records made durable by one fsync.
const BATCH: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// A histogram's buckets: its bounds and `+Inf`.
const MAX_BUCKETS: usize = 20;
const _: () = assert!(
    LATENCY_US.len() < MAX_BUCKETS && FSYNC_US.len() < MAX_BUCKETS && BATCH.len() < MAX_BUCKETS
);

/// One server's counters (one per `AuditLog`, so a test process can run several).
pub(crate) struct Metrics {
    statements: [AtomicU64; KINDS.len()],
    outcomes: [AtomicU64; OUTCOMES.len()],
    refusals: [AtomicU64; RULES.len()],
    sessions_admitted: AtomicU64,
    sessions_ended: AtomicU64,
    drops: [AtomicU64; DROPS.len()],
    refused: [AtomicU64; REFUSED.len()],
    /// Failed logins not written one by one (rate-limited into summary records).
    failed_logins_unrecorded: AtomicU64,
    /// Unauthenticated connections closed for newer ones, by why.
    shed: [AtomicU64; SHED.len()],
    /// Upstream dials started during a login: used by it, or closed unused.
    early_dials: [AtomicU64; EARLY_DIALS.len()],
    /// Backends logged in ahead for a grant's next session, by what became of them.
    spare_backends: [AtomicU64; SPARE_BACKENDS.len()],
    /// API calls by status class (1xx … 5xx).
    api_calls: [AtomicU64; 5],
    /// Time from an `append_durable` call until its records are durable.
    pub(crate) append_latency: Histogram,
    /// Records made durable per fsync (group commit).
    pub(crate) fsync_batch: Histogram,
    /// How long each fdatasync of the audit file took, failed ones too.
    pub(crate) fsync_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            statements: Default::default(),
            outcomes: Default::default(),
            refusals: [const { AtomicU64::new(0) }; RULES.len()],
            sessions_admitted: AtomicU64::new(0),
            sessions_ended: AtomicU64::new(0),
            drops: Default::default(),
            refused: Default::default(),
            failed_logins_unrecorded: AtomicU64::new(0),
            shed: Default::default(),
            early_dials: Default::default(),
            spare_backends: Default::default(),
            api_calls: Default::default(),
            append_latency: Histogram::new(&LATENCY_US),
            fsync_batch: Histogram::new(&BATCH),
            fsync_latency: Histogram::new(&FSYNC_US),
        }
    }
}

fn micros(took: Duration) -> u64 {
    u64::try_from(took.as_micros()).unwrap_or(u64::MAX)
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Counts one audit record as it is written: statements by kind, outcomes by status
    /// (refusals also by rule), sessions admitted, refused and ended.
    pub(crate) fn count(&self, event: &AuditEvent) {
        match event {
            AuditEvent::Statement(s) => {
                inc(&self.statements[kind_index(s.kind)]);
                s.session.statements.inc();
            }
            AuditEvent::Outcome(o) => {
                inc(&self.outcomes[outcome_index(o.status)]);
                if let Some(rule) = &o.rule {
                    inc(&self.refusals[rule_index(rule)]);
                }
            }
            AuditEvent::Session(s) => self.count_session(s.event),
            _ => {}
        }
    }

    fn count_session(&self, event: SessionEvent) {
        let drop = |i: usize| {
            inc(&self.drops[i]);
            inc(&self.sessions_ended);
        };
        match event {
            SessionEvent::Connected => inc(&self.sessions_admitted),
            SessionEvent::AuthenticationFailed => self.refused(Refused::Authentication),
            SessionEvent::SessionRefused => self.refused(Refused::GrantSessions),
            SessionEvent::Disconnected => inc(&self.sessions_ended),
            SessionEvent::DroppedExpired => drop(0),
            SessionEvent::DroppedRevoked => drop(1),
            SessionEvent::DroppedShutdown => drop(2),
            SessionEvent::DroppedKilled => drop(3),
            _ => {}
        }
    }

    pub(crate) fn refused(&self, why: Refused) {
        inc(&self.refused[why as usize]);
    }

    pub(crate) fn failed_login_unrecorded(&self) {
        inc(&self.failed_logins_unrecorded);
    }

    pub(crate) fn shed(&self, why: Shed, count: usize) {
        self.shed[why as usize].fetch_add(count as u64, Ordering::Relaxed);
    }

    pub(crate) fn early_dial(&self, outcome: EarlyDialOutcome) {
        inc(&self.early_dials[outcome as usize]);
    }

    /// Early dials so far, by outcome.
    #[cfg(test)]
    pub(crate) fn early_dials(&self, outcome: EarlyDialOutcome) -> u64 {
        load(&self.early_dials[outcome as usize])
    }

    pub(crate) fn spare_backend(&self, outcome: SpareOutcome) {
        inc(&self.spare_backends[outcome as usize]);
    }

    /// Spare backends so far, by outcome.
    #[cfg(test)]
    pub(crate) fn spare_backends(&self, outcome: SpareOutcome) -> u64 {
        load(&self.spare_backends[outcome as usize])
    }

    pub(crate) fn api_call(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        inc(&self.api_calls[class]);
    }

    pub(crate) fn observe_append(&self, took: Duration) {
        self.append_latency.observe(micros(took));
    }

    pub(crate) fn observe_fsync(&self, took: Duration) {
        self.fsync_latency.observe(micros(took));
    }

    /// Sessions admitted and not yet ended.
    pub(crate) fn sessions_open(&self) -> u64 {
        let admitted = self.sessions_admitted.load(Ordering::Relaxed);
        admitted.saturating_sub(self.sessions_ended.load(Ordering::Relaxed))
    }

    /// The exposition text: these counters, then the values read at scrape time.
    pub(crate) fn render(&self, scrape: &Scrape) -> String {
        let mut out = String::with_capacity(8192);
        let o = &mut out;
        family(
            o,
            "lockbox_sessions_open",
            "gauge",
            "Sessions admitted and not yet ended.",
        );
        sample(o, "lockbox_sessions_open", "", self.sessions_open());
        family(
            o,
            "lockbox_sessions_admitted_total",
            "counter",
            "Sessions admitted (audited as connected).",
        );
        sample(
            o,
            "lockbox_sessions_admitted_total",
            "",
            load(&self.sessions_admitted),
        );
        labelled(
            o,
            "lockbox_sessions_refused_total",
            "counter",
            "Connections refused before or at login, by reason.",
            "reason",
            &REFUSED,
            &self.refused,
        );
        labelled(
            o,
            "lockbox_sessions_dropped_total",
            "counter",
            "Sessions the proxy ended, by reason.",
            "reason",
            &DROPS,
            &self.drops,
        );
        labelled(
            o,
            "lockbox_upstream_early_dials_total",
            "counter",
            "Upstream connections dialed while their login was still being checked, by what became of them.",
            "outcome",
            &EARLY_DIALS,
            &self.early_dials,
        );
        labelled(
            o,
            "lockbox_spare_backends_total",
            "counter",
            "Upstream backends logged in ahead for the next session of a grant that reconnects, by what became of them.",
            "outcome",
            &SPARE_BACKENDS,
            &self.spare_backends,
        );
        labelled(
            o,
            "lockbox_unauthenticated_shed_total",
            "counter",
            "Connections that had not sent their token, closed to make room for newer ones.",
            "why",
            &SHED,
            &self.shed,
        );
        family(o, "lockbox_failed_logins_unrecorded_total", "counter", "Failed logins past the per-source limit, counted in summary records instead of one record each.");
        sample(
            o,
            "lockbox_failed_logins_unrecorded_total",
            "",
            load(&self.failed_logins_unrecorded),
        );
        labelled(
            o,
            "lockbox_statements_total",
            "counter",
            "Statements recorded, by kind.",
            "kind",
            &KINDS,
            &self.statements,
        );
        labelled(
            o,
            "lockbox_statement_outcomes_total",
            "counter",
            "Statement outcomes recorded, by outcome.",
            "outcome",
            &OUTCOMES,
            &self.outcomes,
        );
        labelled(
            o,
            "lockbox_refusals_total",
            "counter",
            "Statements refused by the guard, by rule.",
            "rule",
            &RULES,
            &self.refusals,
        );
        labelled(
            o,
            "lockbox_api_requests_total",
            "counter",
            "API calls answered, by status class.",
            "class",
            &["1xx", "2xx", "3xx", "4xx", "5xx"],
            &self.api_calls,
        );
        family(
            o,
            "lockbox_audit_append_seconds",
            "histogram",
            "Time until an audit append is durable.",
        );
        self.append_latency
            .render(o, "lockbox_audit_append_seconds", 1e6);
        family(
            o,
            "lockbox_audit_fsync_batch_records",
            "histogram",
            "Records made durable by one fsync.",
        );
        self.fsync_batch
            .render(o, "lockbox_audit_fsync_batch_records", 1.0);
        family(
            o,
            "lockbox_audit_fsync_seconds",
            "histogram",
            "Time one fdatasync of the audit file took.",
        );
        self.fsync_latency
            .render(o, "lockbox_audit_fsync_seconds", 1e6);
        scrape.render(o);
        out
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name}{labels} {value}");
}

#[allow(clippy::too_many_arguments)]
fn labelled(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    values: &[&str],
    counters: &[AtomicU64],
) {
    family(out, name, kind, help);
    for (value, counter) in values.iter().zip(counters) {
        sample(
            out,
            name,
            &format!("{{{label}=\"{value}\"}}"),
            load(counter),
        );
    }
}

/// Values read when `/metrics` is scraped.
#[derive(Debug, Default)]
pub(crate) struct Scrape {
    /// Connections the proxy holds now (logging in or admitted).
    pub(crate) connections: usize,
    /// Ended sessions' clients still being told why, patiently (slow readers).
    pub(crate) farewells: usize,
    /// Logins waiting for one of their grant's places (a grant at its session limit).
    pub(crate) logins_waiting_for_place: usize,
    /// Bytes sessions hold together for large client messages (`proxy.max_message_memory`).
    pub(crate) message_memory: usize,
    /// Connections on each session thread (`[proxy] threads`), by thread.
    pub(crate) thread_sessions: Vec<usize>,
    pub(crate) audit_healthy: bool,
    /// `(written, shipped)` sequence numbers of the PostgreSQL audit sink, when configured.
    pub(crate) sink: Option<(u64, u64)>,
    pub(crate) pending_notifications: Option<u64>,
    /// Each database and whether its last probe reached it.
    pub(crate) databases: Vec<(String, bool)>,
}

impl Scrape {
    fn render(&self, o: &mut String) {
        family(
            o,
            "lockbox_connections",
            "gauge",
            "Client connections the proxy holds (logging in or admitted).",
        );
        sample(o, "lockbox_connections", "", self.connections);
        family(
            o,
            "lockbox_farewells",
            "gauge",
            "Clients of ended sessions still reading up to the FATAL that says why (no slot, no backend; at most max_connections).",
        );
        sample(o, "lockbox_farewells", "", self.farewells);
        family(
            o,
            "lockbox_logins_waiting_for_place",
            "gauge",
            "Logins of a grant at its session limit waiting up to 2 s for one of its places (at most the limit per grant).",
        );
        sample(
            o,
            "lockbox_logins_waiting_for_place",
            "",
            self.logins_waiting_for_place,
        );
        family(
            o,
            "lockbox_message_memory_bytes",
            "gauge",
            "Bytes the sessions hold together for client messages larger than 256 KiB (at most proxy.max_message_memory).",
        );
        sample(o, "lockbox_message_memory_bytes", "", self.message_memory);
        family(
            o,
            "lockbox_session_thread_connections",
            "gauge",
            "Client connections each session thread serves ([proxy] threads; a connection is placed on the thread with the fewest).",
        );
        for (thread, connections) in self.thread_sessions.iter().enumerate() {
            sample(
                o,
                "lockbox_session_thread_connections",
                &format!("{{thread=\"{thread}\"}}"),
                connections,
            );
        }
        family(
            o,
            "lockbox_audit_healthy",
            "gauge",
            "1 while the audit log can be written.",
        );
        sample(o, "lockbox_audit_healthy", "", u8::from(self.audit_healthy));
        if let Some((written, shipped)) = self.sink {
            family(
                o,
                "lockbox_audit_sink_lag_records",
                "gauge",
                "Audit records in the file not yet in the PostgreSQL sink.",
            );
            sample(
                o,
                "lockbox_audit_sink_lag_records",
                "",
                written.saturating_sub(shipped),
            );
        }
        if let Some(pending) = self.pending_notifications {
            family(
                o,
                "lockbox_notifications_pending",
                "gauge",
                "Notifications waiting to be delivered.",
            );
            sample(o, "lockbox_notifications_pending", "", pending);
        }
        family(
            o,
            "lockbox_database_up",
            "gauge",
            "1 when the database answered its last reachability probe.",
        );
        for (name, up) in &self.databases {
            let label = format!("{{database=\"{}\"}}", escape_label(name));
            sample(o, "lockbox_database_up", &label, u8::from(*up));
        }
    }
}

/// A label value as the exposition format wants it: backslash, quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
