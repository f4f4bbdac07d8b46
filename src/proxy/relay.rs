//! The relay loop of an admitted session: client messages are inspected, audited and
//! forwarded as received; upstream bytes are scanned for statement outcomes and forwarded
//! as received. The loop also ends the session when the grant expires or is revoked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::registry::DropReason;
use super::stream::BoxStream;
use super::tracker::{Outcome, Tracker};
use crate::audit::{AuditEvent, AuditLog, OutcomeRecord, Protocol, SessionFields, StatementRecord};
use crate::sql::{self, StatementKind};
use crate::wire::{self, sqlstate, BackendEvent, BackendScanner, ParamValue};

/// Why a relay ended.
#[derive(Debug)]
pub enum End {
    ClientGone,
    UpstreamGone,
    Dropped(DropReason),
    ProtocolError(String),
    AuditFailed,
}

/// A statement prepared with Parse, by name ("" is the unnamed one).
#[derive(Clone)]
struct Prepared {
    text: Arc<str>,
    kind: StatementKind,
}

/// A portal created with Bind.
struct Portal {
    statement: Prepared,
    params: Vec<serde_json::Value>,
}

/// A statement record waiting to be written, and where its tracker slot goes.
enum Pending {
    Statement(AuditEvent),
    QueryEnd,
    Sync,
    CopyEnd,
}

/// Ends the session on expiry, revocation or shutdown, even in the middle of a write.
struct Terminator {
    kill: watch::Receiver<Option<DropReason>>,
    deadline: tokio::time::Instant,
}

impl Terminator {
    async fn fired(&mut self) -> DropReason {
        tokio::select! {
            _ = tokio::time::sleep_until(self.deadline) => DropReason::Expired,
            reason = wait_kill(&mut self.kill) => reason,
        }
    }
}

async fn wait_kill(kill: &mut watch::Receiver<Option<DropReason>>) -> DropReason {
    loop {
        if let Some(reason) = *kill.borrow_and_update() {
            return reason;
        }
        if kill.changed().await.is_err() {
            // The registry is gone: the proxy is going away.
            return DropReason::Shutdown;
        }
    }
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
    prepared: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    session: Arc<SessionFields>,
    audit: AuditLog,
    max_message: usize,
    term: Terminator,
    events: Vec<BackendEvent>,
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
        kill: watch::Receiver<Option<DropReason>>,
        deadline: tokio::time::Instant,
    ) -> Self {
        Relay {
            client,
            upstream,
            cbuf,
            ubuf: BytesMut::with_capacity(64 * 1024),
            scanner: BackendScanner::default(),
            tracker: Tracker::default(),
            prepared: HashMap::new(),
            portals: HashMap::new(),
            session,
            audit,
            max_message,
            term: Terminator { kill, deadline },
            events: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    pub async fn run(mut self) -> End {
        let end = self.relay().await;
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
            End::ClientGone | End::UpstreamGone => None,
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
            let step = tokio::select! {
                biased;
                reason = self.term.fired() => Err(End::Dropped(reason)),
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

    /// Inspects every complete client message, makes the batch's statement records
    /// durable, then forwards the batch exactly as received.
    async fn on_client_bytes(&mut self) -> Result<(), End> {
        let buf = std::mem::take(&mut self.cbuf);
        let scanned = self.inspect_batch(&buf);
        self.cbuf = buf;
        let (consumed, pending, terminate) = scanned?;
        if consumed == 0 {
            return Ok(());
        }
        let batch = self.cbuf.split_to(consumed);
        self.record_statements(pending).await?;
        guarded(&mut self.term, self.upstream.write_all(&batch))
            .await?
            .map_err(|_| End::UpstreamGone)?;
        if terminate {
            return Err(End::ClientGone);
        }
        Ok(())
    }

    /// Walks the complete messages at the front of `buf`: how many bytes they span, the
    /// records they need, and whether the client said goodbye.
    fn inspect_batch(&mut self, buf: &[u8]) -> Result<(usize, Vec<Pending>, bool), End> {
        let mut consumed = 0;
        let mut pending = Vec::new();
        while let Some(len) = wire::frame_len(&buf[consumed..], self.max_message)
            .map_err(|e| End::ProtocolError(e.to_string()))?
        {
            let frame = &buf[consumed..consumed + len];
            self.inspect(frame[0], &frame[5..], &mut pending)
                .map_err(End::ProtocolError)?;
            consumed += len;
            if frame[0] == b'X' {
                return Ok((consumed, pending, true));
            }
        }
        Ok((consumed, pending, false))
    }

    /// Writes the batch's statement records durably and opens their tracker slots.
    async fn record_statements(&mut self, pending: Vec<Pending>) -> Result<(), End> {
        let records: Vec<AuditEvent> = pending
            .iter()
            .filter_map(|p| match p {
                Pending::Statement(e) => Some(e.clone()),
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
        for p in pending {
            match p {
                Pending::Statement(_) => {
                    self.tracker.statement(seq, started);
                    seq += 1;
                }
                Pending::QueryEnd => self.tracker.query_end(),
                Pending::Sync => self.tracker.sync(),
                Pending::CopyEnd => self.tracker.copy_end(),
            }
        }
        Ok(())
    }

    /// Looks at one client message; statements it carries are added to `pending`.
    fn inspect(&mut self, tag: u8, body: &[u8], pending: &mut Vec<Pending>) -> Result<(), String> {
        match tag {
            b'Q' => {
                let text = wire::decode_query(body).map_err(|e| e.to_string())?;
                for statement in sql::classify_all(&text) {
                    let record = self.statement_record(
                        Protocol::Simple,
                        statement.text,
                        statement.kind,
                        None,
                    );
                    pending.push(Pending::Statement(record));
                }
                pending.push(Pending::QueryEnd);
            }
            b'P' => {
                let (name, text) = wire::decode_parse(body).map_err(|e| e.to_string())?;
                let kind = sql::classify(&text);
                self.prepared.insert(
                    name,
                    Prepared {
                        text: text.into(),
                        kind,
                    },
                );
            }
            b'B' => {
                let bind = wire::decode_bind(body).map_err(|e| e.to_string())?;
                let statement = self
                    .prepared
                    .get(&bind.statement)
                    .cloned()
                    .unwrap_or(Prepared {
                        text: "".into(),
                        kind: StatementKind::Unknown,
                    });
                let params = bind.params.into_iter().map(param_json).collect();
                self.portals
                    .insert(bind.portal, Portal { statement, params });
            }
            b'E' => {
                let portal = wire::decode_execute(body).map_err(|e| e.to_string())?;
                let (text, kind, params) = match self.portals.get(&portal) {
                    Some(p) => (
                        p.statement.text.to_string(),
                        p.statement.kind,
                        Some(p.params.clone()),
                    ),
                    None => (String::new(), StatementKind::Unknown, None),
                };
                let record = self.statement_record(Protocol::Extended, text, kind, params);
                pending.push(Pending::Statement(record));
            }
            b'C' => {
                let (kind, name) = wire::decode_close(body).map_err(|e| e.to_string())?;
                match kind {
                    b'S' => {
                        self.prepared.remove(&name);
                    }
                    _ => {
                        self.portals.remove(&name);
                    }
                }
            }
            b'S' => pending.push(Pending::Sync),
            b'c' | b'f' => pending.push(Pending::CopyEnd),
            b'F' => {
                let oid = body
                    .get(0..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or("truncated FunctionCall")?;
                let text = format!("-- FunctionCall of function oid {oid}");
                let record =
                    self.statement_record(Protocol::FunctionCall, text, StatementKind::Other, None);
                pending.push(Pending::Statement(record));
                pending.push(Pending::QueryEnd);
            }
            b'D' | b'H' | b'd' | b'X' => {}
            other => {
                return Err(format!(
                    "unexpected message type '{}' (0x{other:02x})",
                    char::from(other).escape_default()
                ))
            }
        }
        Ok(())
    }

    fn statement_record(
        &self,
        protocol: Protocol,
        statement: String,
        kind: StatementKind,
        params: Option<Vec<serde_json::Value>>,
    ) -> AuditEvent {
        AuditEvent::Statement(StatementRecord {
            session: self.session.clone(),
            protocol,
            statement,
            params,
            kind,
        })
    }

    /// Scans what upstream sent for outcomes, records them, forwards the bytes untouched.
    async fn on_upstream_bytes(&mut self) -> Result<(), End> {
        self.scanner.feed(&self.ubuf, &mut self.events);
        for event in self.events.drain(..) {
            self.tracker.on_event(event, &mut self.outcomes);
        }
        if !self.outcomes.is_empty() {
            let outcomes = std::mem::take(&mut self.outcomes);
            self.record_outcomes(outcomes);
        }
        guarded(&mut self.term, self.client.write_all(&self.ubuf))
            .await?
            .map_err(|_| End::ClientGone)?;
        self.ubuf.clear();
        Ok(())
    }

    fn record_outcomes(&self, outcomes: Vec<Outcome>) {
        if outcomes.is_empty() {
            return;
        }
        let records = outcomes
            .into_iter()
            .map(|o| {
                AuditEvent::Outcome(OutcomeRecord {
                    statement_seq: o.statement_seq,
                    session_id: self.session.session_id.clone(),
                    request_id: self.session.request_id.clone(),
                    rows: o.rows(),
                    status: o.status,
                    command_tag: o.command_tag,
                    sqlstate: o.sqlstate,
                    message: o.message,
                    duration_ms: o.duration_ms,
                })
            })
            .collect();
        self.audit.append(records);
    }
}

fn param_json(value: ParamValue) -> serde_json::Value {
    match value {
        ParamValue::Null => serde_json::Value::Null,
        ParamValue::Text(t) => serde_json::Value::String(t),
        ParamValue::Binary(b) => serde_json::json!({ "binary_hex": hex::encode(b) }),
    }
}
