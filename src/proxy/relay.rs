//! The relay loop of an admitted session: client messages are inspected, audited and
//! forwarded as received; upstream bytes are scanned for statement outcomes and forwarded
//! as received. The loop also ends the session when the grant expires or is revoked.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::registry::{Control, DropReason};
use super::statements::{self, Confirmation, Portal, Prepared, SqlChange, Statements};
use super::stream::BoxStream;
use super::tracker::{Outcome, Tracker};
use crate::audit::redact::{self, Redaction};
use crate::audit::{
    AuditEvent, AuditLog, OutcomeRecord, OutcomeStatus, Protocol, SessionFields, StatementRecord,
};
use crate::guard::{self, Guardrails, NameChange, Refusal};
use crate::policy::AccessLevel;
use crate::sql::StatementKind;
use crate::wire::{self, sqlstate, BackendEvent, BackendScanner, ParamValue};

/// Why a relay ended.
#[derive(Debug)]
pub enum End {
    ClientGone,
    /// The client left while a statement was still running: the backend would run on,
    /// past the grant if need be, so it is cancelled and reaped like one the proxy ends.
    ClientLeftMidStatement,
    UpstreamGone,
    Dropped(DropReason),
    ProtocolError(String),
    AuditFailed,
    /// The server reported a setting that would make the proxy misread later statements.
    UnsafeSetting(String),
    /// A statement returned more rows than the grant allows.
    RowLimit(u64),
}

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
}

/// The upstream backend's cancel key and where to send it.
#[derive(Clone, Debug)]
pub struct CancelKey {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
}

/// Grace past the grant's statement timeout before the proxy cancels: the server's own
/// timeout, when still in force, ends the statement first with its usual error.
const TIMEOUT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What the session's grant and database allow and ask for, fixed at admission.
#[derive(Clone, Debug)]
pub struct Grant {
    pub access: AccessLevel,
    /// The database's own statement rules.
    pub rules: Guardrails,
    pub limits: Limits,
    /// What the audit trail keeps out of this session's records.
    pub redaction: Redaction,
    /// The database's own function names, read at login when it has statement rules.
    pub database_functions: Arc<std::collections::HashSet<String>>,
}

/// A statement record waiting to be written, and where its tracker slot goes.
enum Pending {
    Statement(AuditEvent),
    /// Refused by a guardrail; a failing stand-in goes upstream in its place.
    Refused(AuditEvent, Arc<Refusal>),
    /// Recorded, but will not run (another statement of its query string was refused).
    NotRun(AuditEvent),
    QueryEnd,
    Sync,
    CopyEnd,
    /// The next statement reads the system catalogs only: a row limit does not count it.
    RowsUncounted,
}

/// The stand-in sent upstream for a refused statement: it fails at parse time on every
/// server (a column reference with no FROM), in order with the rest of the pipeline, so
/// the server's transaction state matches what the client is told. Its error is replaced
/// by the refusal before the client sees it.
const STAND_IN: &str = "SELECT \"lockbox refused this statement\"";

fn stand_in_query() -> Vec<u8> {
    tagged(b'Q', &[STAND_IN.as_bytes(), b"\0"].concat())
}

/// An Execute of a portal that cannot exist (portal names from clients never hold a
/// newline and this marker), so it fails like the stand-in query.
fn stand_in_execute() -> Vec<u8> {
    tagged(b'E', b"lockbox\nrefused this portal\0\0\0\0\0")
}

fn unknown_name_refusal(rule: &'static str, name: &str) -> Refusal {
    Refusal {
        rule,
        message: format!(
            "lockbox: \"{name}\" was not created by a statement lockbox recorded, so what it runs cannot be recorded (rule {rule})"
        ),
    }
}

fn stand_in_parse(name: &str) -> Vec<u8> {
    tagged(
        b'P',
        &[name.as_bytes(), b"\0", STAND_IN.as_bytes(), b"\0\0\0"].concat(),
    )
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Ends the session on expiry, revocation or shutdown, even in the middle of a write.
struct Terminator {
    kill: watch::Receiver<Control>,
    deadline: tokio::time::Instant,
}

impl Terminator {
    async fn fired(&mut self) -> DropReason {
        loop {
            let control = *self.kill.borrow_and_update();
            match control {
                Control::Drop(reason) => return reason,
                Control::ExtendTo(end) => {
                    self.deadline = self.deadline.max(monotonic_deadline(end));
                }
                Control::Run => {}
            }
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => return DropReason::Expired,
                changed = self.kill.changed() => if changed.is_err() {
                    // The registry is gone: the proxy is going away.
                    return DropReason::Shutdown;
                },
            }
        }
    }
}

/// A wall-clock end, counted on the monotonic clock from now.
pub fn monotonic_deadline(end: chrono::DateTime<chrono::Utc>) -> tokio::time::Instant {
    let remaining = (end - chrono::Utc::now())
        .to_std()
        .unwrap_or(std::time::Duration::ZERO);
    tokio::time::Instant::now() + remaining
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether a statement record was sent with the extended protocol (Execute).
fn is_extended(record: &AuditEvent) -> bool {
    matches!(
        record,
        AuditEvent::Statement(StatementRecord {
            protocol: Protocol::Extended,
            ..
        })
    )
}

/// Runs `fut` unless the terminator fires first.
async fn guarded<T>(
    term: &mut Terminator,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, End> {
    tokio::select! {
        biased;
        reason = term.fired() => Err(End::Dropped(reason)),
        out = fut => Ok(out),
    }
}

pub struct Relay {
    client: BoxStream,
    upstream: BoxStream,
    cbuf: BytesMut,
    ubuf: BytesMut,
    scanner: BackendScanner,
    tracker: Tracker,
    statements: Statements,
    session: Arc<SessionFields>,
    audit: AuditLog,
    max_message: usize,
    term: Terminator,
    grant: Grant,
    /// COPY data bytes of the COPY now running (either direction), for its outcome.
    copy_bytes: u64,
    /// DataRows of the statement now returning rows.
    rows: u64,
    /// The statement the server is working on and since when, for the statement timeout.
    running: Option<(u64, Instant)>,
    /// The statement whose timeout already sent a cancel.
    cancelled: Option<u64>,
    /// Statements (by seq) whose rows a row limit does not count (catalog reads).
    uncounted: std::collections::BTreeSet<u64>,
    events: Vec<wire::LocatedEvent>,
    outcomes: Vec<Outcome>,
}

impl Relay {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: BoxStream,
        upstream: BoxStream,
        cbuf: BytesMut,
        session: Arc<SessionFields>,
        audit: AuditLog,
        max_message: usize,
        kill: watch::Receiver<Control>,
        deadline: tokio::time::Instant,
        grant: Grant,
    ) -> Self {
        Relay {
            client,
            upstream,
            cbuf,
            ubuf: BytesMut::with_capacity(64 * 1024),
            scanner: BackendScanner::counting_rows(grant.limits.max_rows.is_some()),
            tracker: Tracker::default(),
            statements: Statements::default(),
            session,
            audit,
            max_message,
            term: Terminator { kill, deadline },
            grant,
            copy_bytes: 0,
            rows: 0,
            running: None,
            cancelled: None,
            uncounted: std::collections::BTreeSet::new(),
            events: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    pub async fn run(mut self) -> End {
        let end = match self.relay().await {
            End::ClientGone if !self.tracker.is_idle() => End::ClientLeftMidStatement,
            other => other,
        };
        let message = match &end {
            End::Dropped(DropReason::Expired) => Some((
                sqlstate::ADMIN_SHUTDOWN,
                format!(
                    "lockbox access for request {} has expired",
                    self.session.request_id
                ),
            )),
            End::Dropped(DropReason::Revoked) => Some((
                sqlstate::ADMIN_SHUTDOWN,
                format!(
                    "lockbox access for request {} was revoked",
                    self.session.request_id
                ),
            )),
            End::Dropped(DropReason::Shutdown) => Some((
                sqlstate::ADMIN_SHUTDOWN,
                "lockbox proxy is shutting down".to_owned(),
            )),
            End::ProtocolError(m) => Some((sqlstate::PROTOCOL_VIOLATION, m.clone())),
            End::AuditFailed => Some((
                sqlstate::IO_ERROR,
                "lockbox could not write the audit record; the statement was not executed"
                    .to_owned(),
            )),
            End::UnsafeSetting(m) => Some((sqlstate::INSUFFICIENT_PRIVILEGE, m.clone())),
            End::RowLimit(n) => Some((
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "lockbox: a statement returned more than {n} rows, the max_rows of request {}; the session is ended",
                    self.session.request_id
                ),
            )),
            End::ClientGone | End::ClientLeftMidStatement | End::UpstreamGone => None,
        };
        if let Some((code, text)) = message {
            super::session::send_fatal(&mut self.client, code, &text).await;
        }
        self.close_upstream().await;
        let mut leftover = std::mem::take(&mut self.outcomes);
        self.tracker.interrupt_all(&mut leftover);
        self.record_outcomes(leftover);
        end
    }

    async fn close_upstream(&mut self) {
        let terminate = [b'X', 0, 0, 0, 4];
        let close = async {
            let _ = self.upstream.write_all(&terminate).await;
            let _ = self.upstream.shutdown().await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), close).await;
    }

    async fn relay(&mut self) -> End {
        // The client may have pipelined messages behind its password.
        if !self.cbuf.is_empty() {
            if let Err(end) = self.on_client_bytes().await {
                return end;
            }
        }
        loop {
            let timeout = self.statement_deadline();
            let step = tokio::select! {
                biased;
                reason = self.term.fired() => Err(End::Dropped(reason)),
                _ = sleep_until_some(timeout) => {
                    self.cancel_running();
                    Ok(())
                }
                read = self.client.read_buf(&mut self.cbuf) => match read {
                    Ok(0) | Err(_) => Err(End::ClientGone),
                    Ok(_) => self.on_client_bytes().await,
                },
                read = self.upstream.read_buf(&mut self.ubuf) => match read {
                    Ok(0) | Err(_) => Err(End::UpstreamGone),
                    Ok(_) => self.on_upstream_bytes().await,
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Whether the rows arriving now count against the grant's row limit: not those of a
    /// statement that reads the system catalogs only.
    fn counts_rows(&self) -> bool {
        self.tracker
            .running()
            .is_none_or(|seq| !self.uncounted.contains(&seq))
    }

    /// When the statement the server is working on passes the grant's statement timeout.
    fn statement_deadline(&mut self) -> Option<tokio::time::Instant> {
        let limit = self.grant.limits.statement_timeout?;
        let Some(seq) = self.tracker.running() else {
            self.running = None;
            return None;
        };
        let since = match self.running {
            Some((running, since)) if running == seq => since,
            _ => {
                let now = Instant::now();
                self.running = Some((seq, now));
                now
            }
        };
        if self.cancelled == Some(seq) {
            return None;
        }
        Some(tokio::time::Instant::from_std(since) + limit + TIMEOUT_GRACE)
    }

    /// Cancels the running statement, once; its error comes back as its outcome.
    fn cancel_running(&mut self) {
        let Some((seq, _)) = self.running else {
            return;
        };
        self.cancelled = Some(seq);
        let Some(key) = self.grant.limits.cancel.clone() else {
            return;
        };
        tracing::info!(
            statement_seq = seq,
            "statement timeout of the grant: cancelling"
        );
        tokio::spawn(async move {
            if let Err(e) =
                super::upstream::send_cancel(&key.host, key.port, key.pid, key.secret).await
            {
                tracing::warn!(error = %e, "could not cancel a statement past the grant's timeout");
            }
        });
    }

    /// Inspects every complete client message, makes the batch's statement records
    /// durable, then forwards the batch as received (refused messages swapped for stand-ins).
    async fn on_client_bytes(&mut self) -> Result<(), End> {
        let buf = std::mem::take(&mut self.cbuf);
        // Parsing a large batch takes a while: let the runtime move other sessions' work
        // off this thread meanwhile.
        let big = buf.len() > 16 * 1024
            && tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread;
        let scanned = if big {
            tokio::task::block_in_place(|| self.inspect_batch(&buf))
        } else {
            self.inspect_batch(&buf)
        };
        self.cbuf = buf;
        let batch = scanned?;
        if batch.consumed == 0 {
            return Ok(());
        }
        let bytes = self.cbuf.split_to(batch.consumed);
        self.record_statements(batch.pending).await?;
        let outgoing = splice(&bytes, batch.replacements);
        guarded(&mut self.term, self.upstream.write_all(&outgoing))
            .await?
            .map_err(|_| End::UpstreamGone)?;
        if batch.terminate {
            return Err(End::ClientGone);
        }
        // A bad message left behind the forwarded ones ends the session now.
        match self.cbuf.first() {
            Some(&tag) if !FRONTEND_TAGS.contains(&tag) => {
                Err(End::ProtocolError(unexpected_message(tag)))
            }
            _ => Ok(()),
        }
    }

    /// Walks the complete messages at the front of `buf`.
    fn inspect_batch(&mut self, buf: &[u8]) -> Result<Batch, End> {
        let mut batch = Batch::default();
        while let Some(&tag) = buf.get(batch.consumed) {
            // A message type nobody sends after login (a second StartupMessage starts with a
            // zero byte) is refused at once, not after waiting for the length it seems to
            // declare. Messages before it are forwarded first.
            if !FRONTEND_TAGS.contains(&tag) {
                if batch.consumed == 0 {
                    return Err(End::ProtocolError(unexpected_message(tag)));
                }
                break;
            }
            let Some(len) = wire::frame_len(&buf[batch.consumed..], self.max_message)
                .map_err(|e| End::ProtocolError(e.to_string()))?
            else {
                break;
            };
            let at = batch.consumed;
            let frame = &buf[at..at + len];
            if let Some(stand_in) = self
                .inspect(frame[0], &frame[5..], &mut batch.pending)
                .map_err(End::ProtocolError)?
            {
                batch.replacements.push((at..at + len, stand_in));
            }
            batch.consumed += len;
            if frame[0] == b'X' {
                batch.terminate = true;
                break;
            }
        }
        Ok(batch)
    }

    /// Writes the batch's statement records durably and opens their tracker slots.
    async fn record_statements(&mut self, pending: Vec<Pending>) -> Result<(), End> {
        let records: Vec<AuditEvent> = pending
            .iter()
            .filter_map(|p| match p {
                Pending::Statement(e) | Pending::Refused(e, _) | Pending::NotRun(e) => {
                    Some(e.clone())
                }
                _ => None,
            })
            .collect();
        let mut seq = if records.is_empty() {
            0
        } else {
            match guarded(&mut self.term, self.audit.append_durable(records)).await? {
                Ok(first) => first,
                Err(e) => {
                    tracing::error!(error = %e, "audit write failed; statement refused");
                    return Err(End::AuditFailed);
                }
            }
        };
        let started = Instant::now();
        let mut not_run = Vec::new();
        let mut uncounted = false;
        for p in pending {
            match p {
                Pending::RowsUncounted => uncounted = true,
                Pending::Statement(record) => {
                    if std::mem::take(&mut uncounted) {
                        self.uncounted.insert(seq);
                    }
                    self.tracker.statement(seq, started, is_extended(&record));
                    seq += 1;
                }
                Pending::Refused(record, refusal) => {
                    tracing::info!(rule = refusal.rule, "statement refused by guardrail");
                    self.tracker
                        .refused(seq, started, refusal, is_extended(&record));
                    seq += 1;
                }
                Pending::NotRun(_) => {
                    not_run.push(Outcome::not_run(seq));
                    seq += 1;
                }
                Pending::QueryEnd => self.tracker.query_end(),
                Pending::Sync => self.tracker.sync(),
                Pending::CopyEnd => self.tracker.copy_end(),
            }
        }
        self.record_outcomes(not_run);
        Ok(())
    }

    /// Looks at one client message; statements it carries are added to `pending`. Returns
    /// the stand-in to send instead when a guardrail refuses the message.
    fn inspect(
        &mut self,
        tag: u8,
        body: &[u8],
        pending: &mut Vec<Pending>,
    ) -> Result<Option<Vec<u8>>, String> {
        match tag {
            b'Q' => {
                let text = wire::decode_query(body).map_err(|e| e.to_string())?;
                let statements = guard::analyze_query_cached(&text);
                let uncertain = self.lexer_uncertain(&text, &statements, pending);
                // One refused statement refuses the string: PostgreSQL runs it as one
                // transaction. The first refused statement carries the refusal.
                let mut records = Vec::with_capacity(statements.len());
                let mut verdicts = Vec::with_capacity(statements.len());
                for (i, s) in statements.iter().enumerate() {
                    let piece = text.get(s.range.clone()).unwrap_or(&text);
                    let (record, recorded) = self.statement_record(
                        Protocol::Simple,
                        piece,
                        self.kind_of(&s.analysis),
                        None,
                    );
                    let verdict = match (i, &uncertain) {
                        (0, Some(refusal)) => Err(refusal.clone()),
                        _ => recorded
                            .and_then(|()| self.check(&s.analysis))
                            .and_then(|()| self.check_names(&s.analysis)),
                    };
                    if verdict.is_ok() {
                        // Later statements of the string see what this one will create;
                        // it takes effect only once the server confirms it.
                        self.note_names(piece, &s.analysis, None)?;
                    }
                    verdicts.push(verdict);
                    records.push(record);
                }
                let refused_at = verdicts.iter().position(Result::is_err);
                let refusal = verdicts.into_iter().find_map(Result::err).map(Arc::new);
                for (i, (record, s)) in records.into_iter().zip(statements.iter()).enumerate() {
                    if refusal.is_none() && s.analysis.facts.catalog_only {
                        pending.push(Pending::RowsUncounted);
                    }
                    pending.push(match (&refusal, refused_at) {
                        (Some(r), Some(at)) if at == i => Pending::Refused(record, r.clone()),
                        (Some(_), _) => Pending::NotRun(record),
                        _ => Pending::Statement(record),
                    });
                }
                pending.push(Pending::QueryEnd);
                self.statements.group_end().map_err(|e| e.to_string())?;
                return Ok(refusal.map(|_| stand_in_query()));
            }
            b'P' => {
                let (name, text) = wire::decode_parse(body).map_err(|e| e.to_string())?;
                let analyses = guard::analyze_query_cached(&text);
                let analysis = match &analyses[..] {
                    [one] => one.analysis.clone(),
                    _ => guard::Analysis::rejected(),
                };
                let kind = self.kind_of(&analysis);
                let (record, recorded) =
                    self.statement_record(Protocol::Extended, &text, kind, None);
                let stable = match self.lexer_uncertain(&text, &analyses, pending) {
                    Some(refusal) => Err(refusal),
                    None => Ok(()),
                };
                if let Err(refusal) = recorded.and(stable).and_then(|()| self.check(&analysis)) {
                    pending.push(Pending::Refused(record, Arc::new(refusal)));
                    return Ok(Some(stand_in_parse(&name)));
                }
                let statement = Prepared {
                    text: text.into(),
                    kind,
                    names: analysis.facts.names.clone(),
                    catalog_only: analysis.facts.catalog_only,
                };
                self.statements
                    .parse(name, statement)
                    .map_err(|e| e.to_string())?;
            }
            b'B' => {
                let bind = wire::decode_bind(body).map_err(|e| e.to_string())?;
                let params = bind.params.into_iter().map(param_json).collect();
                self.statements
                    .bind(bind.portal, &bind.statement, params)
                    .map_err(|e| e.to_string())?;
            }
            b'E' => {
                let portal = wire::decode_execute(body).map_err(|e| e.to_string())?;
                let Some(found) = self.statements.portal(&portal).filter(|p| {
                    !p.statement.text.is_empty() || p.statement.kind != StatementKind::Unknown
                }) else {
                    // A portal (or the statement it was bound to) that lockbox never saw
                    // created — server-side code can PREPARE and OPEN cursors: what it
                    // runs cannot be recorded, so below admin it does not run.
                    let text = format!("-- Execute of portal \"{portal}\", whose statement lockbox did not see prepared");
                    let (record, _) = self.statement_record(
                        Protocol::Extended,
                        &text,
                        StatementKind::Unknown,
                        None,
                    );
                    if self.grant.access != AccessLevel::Admin {
                        pending.push(Pending::Refused(
                            record,
                            Arc::new(unknown_name_refusal("unknown_statement", &portal)),
                        ));
                        return Ok(Some(stand_in_execute()));
                    }
                    pending.push(Pending::Statement(record));
                    return Ok(None);
                };
                if found.statement.catalog_only {
                    pending.push(Pending::RowsUncounted);
                }
                let (text, kind, params, names) = (
                    found.statement.text.clone(),
                    found.statement.kind,
                    Some(found.params),
                    found.statement.names,
                );
                if let Some(change) = &names {
                    // A Parse of `PREPARE …`, `DECLARE …`, `DEALLOCATE …` changes the
                    // namespaces each time its portal runs.
                    let analysis = guard::analyze_cached(&text);
                    self.note_names(&text, &analysis, Some(change))?;
                }
                // The text was checked when it was parsed; what is recorded is the text of
                // the statement the server holds under that name.
                let (record, _) = self.statement_record(Protocol::Extended, &text, kind, params);
                pending.push(Pending::Statement(record));
            }
            b'C' => {
                let (kind, name) = wire::decode_close(body).map_err(|e| e.to_string())?;
                match kind {
                    b'S' => self.statements.close_statement(name),
                    _ => self.statements.close_portal(name),
                }
                .map_err(|e| e.to_string())?;
            }
            b'S' => {
                self.statements.group_end().map_err(|e| e.to_string())?;
                pending.push(Pending::Sync);
            }
            b'c' | b'f' => pending.push(Pending::CopyEnd),
            b'F' => {
                let call = wire::decode_function_call(body).map_err(|e| e.to_string())?;
                let known = guard::function_call_class(call.oid, &call.args);
                let text = match known {
                    Some((name, _)) => format!("-- FunctionCall of {name} (oid {})", call.oid),
                    None => format!("-- FunctionCall of function oid {}", call.oid),
                };
                // A FunctionCall names a function by OID. The large-object functions libpq's
                // API calls are known and judged like their SQL forms; any other OID could be
                // anything (lo_import, set_config, …), so only an admin grant may call it.
                let class = known.map_or(guard::Class::Escalation("function_call"), |(_, c)| c);
                // The arguments say what the call does (a file name for lo_import, …).
                let args = call.args.into_iter().map(param_json).collect();
                let (record, _) = self.statement_record(
                    Protocol::FunctionCall,
                    &text,
                    StatementKind::Other,
                    Some(args),
                );
                if let Err(refusal) = guard::check_class(self.grant.access, class) {
                    pending.push(Pending::Refused(record, Arc::new(refusal)));
                    pending.push(Pending::QueryEnd);
                    self.statements.group_end().map_err(|e| e.to_string())?;
                    return Ok(Some(stand_in_query()));
                }
                pending.push(Pending::Statement(record));
                pending.push(Pending::QueryEnd);
                self.statements.group_end().map_err(|e| e.to_string())?;
            }
            b'd' => self.copy_bytes += body.len() as u64,
            b'D' | b'H' | b'X' => {}
            other => return Err(unexpected_message(other)),
        }
        Ok(None)
    }

    /// A query text that must not be forwarded yet: something sent before it is still
    /// running and could have changed a lexer setting (the server says so only at its
    /// ReadyForQuery), and the text would read differently if it had.
    fn lexer_uncertain(
        &self,
        text: &str,
        analyses: &[guard::StatementAnalysis],
        pending: &[Pending],
    ) -> Option<Refusal> {
        let in_flight = !self.tracker.is_idle()
            || pending
                .iter()
                .any(|p| matches!(p, Pending::Statement(_) | Pending::Refused(..)));
        (in_flight && !guard::lexing_is_stable(text, analyses)).then(guard::lexer_uncertain)
    }

    /// `EXECUTE name`, `FETCH`/`MOVE` from a cursor: the name must be one lockbox saw
    /// created, or the audit could not say what runs (server-side code can PREPARE and open
    /// cursors). An admin grant may still use them.
    fn check_names(&self, analysis: &guard::Analysis) -> Result<(), Refusal> {
        if self.grant.access == AccessLevel::Admin {
            return Ok(());
        }
        match &analysis.facts.names {
            Some(NameChange::Execute(name)) if self.statements.statement(name).is_none() => {
                Err(unknown_name_refusal("unknown_statement", name))
            }
            Some(NameChange::Fetch(name)) if self.statements.portal(name).is_none() => {
                Err(unknown_name_refusal("unknown_cursor", name))
            }
            _ => Ok(()),
        }
    }

    /// The grant, the database's rules and the grant's limits, for one statement.
    fn check(&self, analysis: &guard::Analysis) -> Result<(), Refusal> {
        guard::check_analysis(self.grant.access, &self.grant.rules, analysis)?;
        guard::check_database_functions(
            &self.grant.rules,
            &analysis.facts,
            &self.grant.database_functions,
        )?;
        // Setting statement_timeout is fine (the proxy enforces the grant's own); a setting
        // whose name is computed could be anything and is not.
        if self.grant.limits.statement_timeout.is_some()
            && analysis.facts.settings.iter().any(|s| s == "*")
        {
            return Err(Refusal {
                rule: "statement_timeout",
                message: "lockbox: this grant has a statement timeout; changing it is not allowed (rule statement_timeout)"
                    .into(),
            });
        }
        Ok(())
    }

    /// The statement record of `statement`, redacted as the database asks. A statement
    /// whose literals cannot be found when they must be masked is recorded as unreadable
    /// and refused (`Err`): it is never hidden and never runs.
    fn statement_record(
        &self,
        protocol: Protocol,
        statement: &str,
        kind: StatementKind,
        params: Option<Vec<serde_json::Value>>,
    ) -> (AuditEvent, Result<(), Refusal>) {
        let redaction = self.grant.redaction;
        let (statement, recorded) = if redaction.literals {
            match redact::mask_literals(statement) {
                Ok(masked) => (masked, Ok(())),
                Err(e) => (
                    redact::UNREADABLE.to_owned(),
                    Err(Refusal {
                        rule: "unscannable",
                        message: format!(
                            "lockbox: {e}; this database's audit masks literals, so it cannot run (rule unscannable)"
                        ),
                    }),
                ),
            }
        } else {
            (statement.to_owned(), Ok(()))
        };
        let params = match params {
            Some(p) if redaction.parameters => Some(redact::mask_parameters(p)),
            other => other,
        };
        let record = AuditEvent::Statement(StatementRecord {
            session: self.session.clone(),
            protocol,
            statement,
            params,
            kind,
            redacted: redaction.names(),
        });
        (record, recorded)
    }

    /// The audit kind of a statement; `EXECUTE name` takes the kind of what it runs.
    fn kind_of(&self, analysis: &guard::Analysis) -> StatementKind {
        match &analysis.facts.names {
            Some(NameChange::Execute(name)) if analysis.kind == StatementKind::Other => self
                .statements
                .statement(name)
                .map_or(analysis.kind, |p| p.kind),
            _ => analysis.kind,
        }
    }

    /// Queues what a statement about to run does to the prepared statements and cursors;
    /// it takes effect when the server confirms it.
    fn note_names(
        &mut self,
        text: &str,
        analysis: &guard::Analysis,
        change: Option<&NameChange>,
    ) -> Result<(), String> {
        let Some(change) = change.or(analysis.facts.names.as_ref()) else {
            return Ok(());
        };
        let own = |kind| Prepared {
            text: text.into(),
            kind,
            names: None,
            catalog_only: false,
        };
        let sql_change = match change {
            NameChange::Prepare(name) => {
                let kind = crate::guard::prepared_kind(text);
                SqlChange::Prepare(name.clone(), own(kind))
            }
            NameChange::Declare(name) => SqlChange::Declare(
                name.clone(),
                Portal {
                    statement: own(StatementKind::Select),
                    params: Vec::new(),
                    held: crate::guard::declares_held_cursor(text),
                },
            ),
            NameChange::Deallocate(name) => SqlChange::Deallocate(name.clone()),
            NameChange::Close(name) => SqlChange::Close(name.clone()),
            NameChange::DiscardAll => SqlChange::DiscardAll,
            NameChange::Execute(_) | NameChange::Fetch(_) => return Ok(()),
        };
        self.statements.sql(sql_change).map_err(|e| e.to_string())
    }

    /// Scans what upstream sent for outcomes, records them, and forwards the bytes as read
    /// (except that a refused statement's stand-in error becomes the refusal).
    async fn on_upstream_bytes(&mut self) -> Result<(), End> {
        // The event buffer is reused from read to read (taken out so the loop may borrow self).
        let mut events = std::mem::take(&mut self.events);
        self.scanner.feed_located(&self.ubuf, &mut events);
        let mut rewrites = Vec::new();
        for (event, range) in events.drain(..) {
            if let BackendEvent::Parameter { name, value } = &event {
                if !guard::reported_setting_is_safe(name, value) {
                    // End before forwarding anything more: later statements would be split
                    // differently by the server than by the audit.
                    return Err(End::UnsafeSetting(format!(
                        "lockbox: {name} changed to \"{value}\"; the session is ended so that no statement escapes the audit"
                    )));
                }
            }
            match &event {
                BackendEvent::DataRow => {
                    self.rows += u64::from(self.counts_rows());
                    if let Some(max) = self.grant.limits.max_rows.filter(|max| self.rows > *max) {
                        // Forward what came before this row, then end the session.
                        let upto = range.as_ref().map_or(0, |r| r.start);
                        let head = splice(&self.ubuf[..upto], std::mem::take(&mut rewrites));
                        let _ = guarded(&mut self.term, self.client.write_all(&head)).await;
                        return Err(End::RowLimit(max));
                    }
                    continue;
                }
                BackendEvent::CopyData(n) => {
                    self.copy_bytes += n;
                    // COPY … TO STDOUT sends one CopyData per row: a row limit counts them.
                    self.rows += u64::from(self.counts_rows());
                    if let Some(max) = self.grant.limits.max_rows.filter(|max| self.rows > *max) {
                        let upto = range.as_ref().map_or(0, |r| r.start);
                        let head = splice(&self.ubuf[..upto], std::mem::take(&mut rewrites));
                        let _ = guarded(&mut self.term, self.client.write_all(&head)).await;
                        return Err(End::RowLimit(max));
                    }
                    continue;
                }
                BackendEvent::Complete(tag) => {
                    self.rows = 0;
                    if statements::is_namespace_tag(tag) {
                        self.statements.confirm(Confirmation::Command(tag.clone()));
                    }
                }
                BackendEvent::Error { .. } | BackendEvent::Empty | BackendEvent::Suspended => {
                    self.rows = 0
                }
                BackendEvent::ParseComplete => self.statements.confirm(Confirmation::Parse),
                BackendEvent::BindComplete => self.statements.confirm(Confirmation::Bind),
                BackendEvent::CloseComplete => self.statements.confirm(Confirmation::Close),
                BackendEvent::Ready(status) => {
                    self.statements.ready(*status);
                    // Statements before this Ready are settled.
                    if let Some(next) = self.tracker.running() {
                        self.uncounted = self.uncounted.split_off(&next);
                    } else {
                        self.uncounted.clear();
                    }
                }
                _ => {}
            }
            let settled = self.outcomes.len();
            self.tracker.on_event(event, &mut self.outcomes);
            let refused = self.outcomes[settled..]
                .iter()
                .find(|o| o.status == OutcomeStatus::Refused);
            if let (Some(outcome), Some(range)) = (refused, range) {
                let mut error = BytesMut::new();
                wire::error_response(
                    &mut error,
                    wire::Severity::Error,
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    outcome.message.as_deref().unwrap_or("lockbox: refused"),
                );
                rewrites.push((range, error.to_vec()));
            }
        }
        self.events = events;
        if !self.outcomes.is_empty() {
            let outcomes = std::mem::take(&mut self.outcomes);
            self.record_outcomes(outcomes);
        }
        // While a stand-in's error is due, an unfinished message is held back until it is
        // whole, so the error can be swapped before any of it reaches the client.
        let held = match self
            .tracker
            .refusal_pending()
            .then(|| self.scanner.unfinished_start())
        {
            Some(Some(start)) => {
                self.scanner.rewind();
                Some(self.ubuf.split_off(start))
            }
            _ => None,
        };
        let outgoing = splice(&self.ubuf, rewrites);
        guarded(&mut self.term, self.client.write_all(&outgoing))
            .await?
            .map_err(|_| End::ClientGone)?;
        self.ubuf.clear();
        if let Some(rest) = held {
            self.ubuf.unsplit(rest);
        }
        Ok(())
    }

    fn record_outcomes(&mut self, outcomes: Vec<Outcome>) {
        if outcomes.is_empty() {
            return;
        }
        let records = outcomes
            .into_iter()
            .map(|o| {
                // The bytes a COPY moved belong to its outcome (or its failure).
                let is_copy = o
                    .command_tag
                    .as_deref()
                    .is_some_and(|t| t.starts_with("COPY"));
                let bytes = (is_copy || (o.status == OutcomeStatus::Error && self.copy_bytes > 0))
                    .then(|| std::mem::take(&mut self.copy_bytes));
                AuditEvent::Outcome(OutcomeRecord {
                    bytes,
                    statement_seq: o.statement_seq,
                    session_id: self.session.session_id.clone(),
                    request_id: self.session.request_id.clone(),
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
                    break_glass: self.session.break_glass,
                })
            })
            .collect();
        self.audit.append(records);
    }
}

/// Message types a client may send after login.
const FRONTEND_TAGS: &[u8] = b"QPBEDCHSFdcfX";

fn unexpected_message(tag: u8) -> String {
    format!(
        "unexpected message type '{}' (0x{tag:02x})",
        char::from(tag).escape_default()
    )
}

/// What one read of client bytes holds.
#[derive(Default)]
struct Batch {
    consumed: usize,
    pending: Vec<Pending>,
    /// Byte ranges of refused messages and their stand-ins.
    replacements: Vec<(std::ops::Range<usize>, Vec<u8>)>,
    terminate: bool,
}

/// `bytes` with each range replaced; borrowed as is when nothing is replaced.
fn splice(
    bytes: &[u8],
    replacements: Vec<(std::ops::Range<usize>, Vec<u8>)>,
) -> std::borrow::Cow<'_, [u8]> {
    if replacements.is_empty() {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut at = 0;
    for (range, with) in replacements {
        out.extend_from_slice(&bytes[at..range.start]);
        out.extend_from_slice(&with);
        at = range.end;
    }
    out.extend_from_slice(&bytes[at..]);
    std::borrow::Cow::Owned(out)
}

fn param_json(value: ParamValue) -> serde_json::Value {
    match value {
        ParamValue::Null => serde_json::Value::Null,
        ParamValue::Text(t) => serde_json::Value::String(t),
        ParamValue::Binary(b) => serde_json::json!({ "binary_hex": hex::encode(b) }),
    }
}
