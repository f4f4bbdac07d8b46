//! The relay loop of an admitted session: client messages are inspected, audited and
//! forwarded as received; upstream bytes are scanned for statement outcomes and forwarded
//! as received. The loop also ends the session when the grant expires or is revoked.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

#[cfg(test)]
mod allocation_tests;
mod buffers;
mod client_side;
#[cfg(test)]
mod end_tests;
mod farewell;
#[cfg(test)]
mod farewell_attack;
#[cfg(test)]
mod farewell_final_attack;
#[cfg(test)]
mod farewell_pass_tests;
mod fuzz;
mod grant;
mod hold;
mod inspect;
mod last_words;
mod limits;
mod names;
mod notices;
mod planning;
mod record;
mod settle;
use settle::Settled;
mod terminator;
mod upstream_side;
#[cfg(test)]
mod vectored_tests;

#[cfg(test)]
mod unexpected_message_tests {
    /// A zero byte (a second StartupMessage, an SSLRequest) is named in hex alone, not as
    /// Rust's escape of it; a letter is named as itself.
    #[test]
    fn an_unexpected_tag_is_named_without_escape_sequences() {
        assert_eq!(super::unexpected_message(0), "unexpected message type 0x00");
        assert_eq!(
            super::unexpected_message(b'Z'),
            "unexpected message type 'Z' (0x5a)"
        );
        assert_eq!(
            super::unexpected_message(0x7f),
            "unexpected message type 0x7f"
        );
    }
}

pub(crate) use buffers::write_flushed;
pub(crate) use buffers::BUFFER_CAPACITY;
pub(crate) use farewell::Farewell;
pub(crate) use fuzz::inspect_client_bytes;
pub use grant::{CancelKey, Grant, Limits};
pub(crate) use last_words::fatal_for;
use limits::StatementTimer;
pub(crate) use notices::login_notice;
use record::{take_copy_bytes, Pending};
pub use terminator::monotonic_deadline;
use terminator::Terminator;

use super::message_memory::{MessageMemory, MessageShare};
use super::registry::{Control, DropReason};
use super::statements::Statements;
use super::stream::BoxStream;
use super::tracker::{Outcome, Tracker, Work};
use crate::audit::{AuditEvent, AuditLog, SessionFields};
use crate::wire::{self, BackendScanner};

/// Bytes of a client batch (its messages, or the statement texts its records carry) past
/// which inspecting it, or encoding and writing its records, runs under
/// `runtime::blocking`: long enough to hold up the session thread's other sessions.
const BIG_BATCH: usize = 16 * 1024;

/// Why a relay ended.
#[derive(Debug)]
pub enum End {
    ClientGone,
    /// The client left while a statement was still running: the backend would run on,
    /// past the grant if need be, so it is cancelled and reaped like one the proxy ends.
    ClientLeftMidStatement,
    /// The client left while a statement ran, and the server closed the connection while
    /// its answers were awaited, after its FATAL: the backend is gone, nothing is left to
    /// cancel or reap.
    ClientLeftThenServerClosed,
    UpstreamGone,
    Dropped(DropReason),
    ProtocolError(String),
    AuditFailed,
    /// The server reported a setting that would make the proxy misread later statements.
    UnsafeSetting(String),
    /// A statement returned more rows than the grant allows.
    RowLimit(u64),
    /// A server reply answered no message the proxy knows it sent: from here on, replies
    /// could be matched to the wrong statements, and prepared statements named by the
    /// wrong text, so nothing more may run.
    LostTrack(String),
    /// The database's code could not be read again for two periods of `[timings]
    /// catalog_refresh` (`provision::code`): the session's read may miss what its
    /// statements run, so nothing more runs on it, as no login is admitted meanwhile.
    CodeUnreadable(std::sync::Arc<str>),
    /// A client message declared a size over `proxy.max_message_size`.
    MessageTooLarge(super::oversize::Oversize),
    /// A large client message found the sessions' shared room for such messages taken
    /// (`proxy.max_message_memory`).
    NoRoomForMessage(super::message_memory::NoRoom),
}

/// Runs `fut` unless the session has ended already or ends while `fut` waits.
///
/// `fut` is polled before the terminator: most guarded waits are over at once, and then
/// the terminator's registration would be wasted (see [`Terminator::ended`]).
async fn guarded<T>(
    term: &mut Terminator,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, End> {
    if let Some(reason) = term.ended() {
        return Err(End::Dropped(reason));
    }
    tokio::select! {
        biased;
        out = fut => Ok(out),
        reason = term.fired() => Err(End::Dropped(reason)),
    }
}

/// How a relay ended, and what is left to do.
pub(crate) struct RelayEnd {
    pub(crate) end: End,
    /// What the client is still to be told.
    pub(crate) farewell: Option<Farewell>,
    /// When the relay ended, before any wait for a statement of a client that left to
    /// settle: the reaper's window counts from then.
    pub(crate) ended_at: tokio::time::Instant,
    /// See [`Relay::backend_may_run_on`].
    pub(crate) backend_may_run_on: bool,
}

pub struct Relay {
    client: BoxStream,
    /// The TCP socket under `client`, for the farewell to see whether the client reads.
    client_fd: Option<std::os::fd::RawFd>,
    /// The upstream connection's halves: the relay reads upstream while it writes upstream,
    /// or a client's long pipeline and the server's results could each wait for the other.
    upstream_r: tokio::io::ReadHalf<BoxStream>,
    upstream_w: tokio::io::WriteHalf<BoxStream>,
    cbuf: BytesMut,
    ubuf: BytesMut,
    scanner: BackendScanner,
    tracker: Tracker,
    statements: Statements,
    session: Arc<SessionFields>,
    audit: AuditLog,
    max_message: usize,
    /// This session's share of the room all sessions have for large messages.
    message_share: MessageShare,
    /// The share of the same budget for what `statements` keeps.
    kept_share: MessageShare,
    term: Terminator,
    grant: Grant,
    /// COPY data bytes of the COPY now running (either direction), for its outcome.
    copy_bytes: u64,
    /// DataRows of the statement now returning rows.
    rows: u64,
    /// What the server is working on (`Tracker::working`) and since when, for the statement
    /// timeout.
    running: Option<(Work, Instant)>,
    /// The work whose timeout already sent a cancel.
    cancelled: Option<Work>,
    /// That cancel while the server may not have taken it yet (see `forward_upstream`).
    cancel_in_flight: Option<tokio::task::JoinHandle<()>>,
    statement_timer: StatementTimer,
    /// The session named a temporary relation or put a schema before pg_catalog on its
    /// search path: unqualified catalog names may be shadowed.
    catalog_shadowed: bool,
    /// Statements (by seq) whose rows a row limit does not count (catalog reads).
    uncounted: std::collections::BTreeSet<u64>,
    /// The client may be sending COPY FROM STDIN data: it sent CopyData, or the server
    /// asked for it, and neither the client's CopyDone or CopyFail nor the COPY's end has
    /// come since. A Sync then is refused (see `inspect::SYNC_IN_COPY`).
    copy_open: bool,
    /// A message whose fate depends on a reply not yet come waits at the front of `cbuf`,
    /// and what the client sends after it waits behind it (see `hold.rs`).
    held: bool,
    /// The portal a refused Execute's stand-in names (see `inspect::stand_in_execute`).
    stand_in_portal: String,
    /// A Flush is due upstream: the relay began to hold client messages until the server
    /// answers those it has (see `hold::backlogged`).
    flush_upstream: bool,
    /// The client's Terminate went upstream behind statements not yet answered (sent in
    /// one write, as a script may): their answers are still relayed, as PostgreSQL sends
    /// them before it reads the Terminate, until the server closes. Nothing more is read
    /// from the client (the server reads nothing past a Terminate); its socket is watched
    /// for a close instead, which ends the session as any client's leaving does.
    said_goodbye: bool,
    /// The Bind being inspected comes without its portal's Execute (see `planning.rs`).
    bind_alone: bool,
    /// The batch's last Bind, until its Execute is inspected (see `planning.rs`).
    bind_unexecuted: Option<planning::Unexecuted>,
    /// What the batch being inspected sent so far that the tracker does not know yet.
    batch: hold::BatchSoFar,
    /// Statements (by seq) that take rows from a portal (an Execute, a FETCH): a row limit
    /// counts the portal's rows across them.
    drawn_from: std::collections::BTreeMap<u64, String>,
    events: Vec<wire::LocatedEvent>,
    outcomes: Vec<Outcome>,
    /// `record_outcomes`' buffer, kept from call to call.
    outcome_records: Vec<AuditEvent>,
    /// A batch's pending statements, kept from batch to batch.
    spare_pending: Vec<Pending>,
    /// NOTICEs before the end of access, written at message boundaries.
    warnings: notices::Warnings,
    /// The last upstream message was an ErrorResponse: if the server closes now, the
    /// client has its reason already.
    upstream_said_why: bool,
    /// The server sent a FATAL (or PANIC): it ends the session, and a client that leaves
    /// after reading it leaves because of it.
    server_ended_it: bool,
    /// The first bytes of an upstream message not yet whole, held back from the client (up
    /// to `buffers::HOLD_LIMIT`) so that its stream is between two messages whenever the
    /// relay waits: a FATAL written then is read as one, not as the rest of a DataRow.
    torn: Vec<u8>,
    /// The client has part of a message (one too large to hold back, or a write cut short
    /// where the rest could not be told): nothing more can be said to it cleanly.
    client_mid_message: bool,
    /// The rest of the message a client write was cut short in by the session's end, to
    /// finish before the FATAL.
    cut_short: Vec<u8>,
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
        let shadowed_at_login = grant.search_path_shadows_catalog;
        let (upstream_r, upstream_w) = tokio::io::split(upstream);
        let warnings = notices::Warnings::new(
            &session.request_id,
            grant.ends_at,
            &grant.warn_before,
            deadline,
            kill.clone(),
        );
        Relay {
            client,
            client_fd: None,
            upstream_r,
            upstream_w,
            cbuf,
            ubuf: BytesMut::with_capacity(BUFFER_CAPACITY),
            scanner: BackendScanner::counting_rows(grant.limits.max_rows.is_some()),
            tracker: Tracker::default(),
            statements: Statements::default(),
            session,
            audit,
            max_message,
            message_share: MessageShare::default(),
            kept_share: MessageShare::default(),
            term: Terminator::new(kill, deadline),
            grant,
            copy_bytes: 0,
            rows: 0,
            running: None,
            cancelled: None,
            cancel_in_flight: None,
            statement_timer: StatementTimer::new(),
            uncounted: std::collections::BTreeSet::new(),
            drawn_from: std::collections::BTreeMap::new(),
            copy_open: false,
            held: false,
            stand_in_portal: inspect::new_stand_in_portal(),
            flush_upstream: false,
            said_goodbye: false,
            bind_alone: false,
            bind_unexecuted: None,
            batch: hold::BatchSoFar::default(),
            catalog_shadowed: shadowed_at_login,
            events: Vec::new(),
            outcomes: Vec::new(),
            outcome_records: Vec::new(),
            spare_pending: Vec::new(),
            warnings,
            upstream_said_why: false,
            server_ended_it: false,
            torn: Vec::new(),
            client_mid_message: false,
            cut_short: Vec::new(),
        }
    }

    /// Room for messages past a read buffer's usual size comes from `memory`, which holds
    /// at most `limit` bytes for all sessions (without it, each session may hold up to
    /// `max_message`).
    pub(crate) fn with_message_memory(mut self, memory: Arc<MessageMemory>, limit: usize) -> Self {
        self.message_share = MessageShare::of(memory.clone(), limit);
        self.kept_share = MessageShare::of(memory, limit);
        self
    }

    /// The TCP socket under the client stream (plain or TLS).
    pub(crate) fn with_client_fd(mut self, fd: std::os::fd::RawFd) -> Self {
        self.client_fd = Some(fd);
        self
    }

    /// Whether the backend may run on after the relay: the server's connection ended
    /// without its FATAL while a statement ran. Something in between (a load balancer's
    /// idle timeout) may have closed it, and a backend notices a closed socket only once
    /// its statement writes; the cancel and the reaper make sure, as for a session the
    /// proxy ended.
    pub(crate) fn backend_may_run_on(&self, end: &End) -> bool {
        matches!(end, End::UpstreamGone) && !self.server_ended_it && !self.tracker.is_idle()
    }

    /// Runs the session to its end and tells the client why, as [`Self::run_to_farewell`]
    /// then [`Farewell::deliver`].
    #[cfg(test)]
    pub(crate) async fn run(self) -> End {
        let RelayEnd { end, farewell, .. } = self.run_to_farewell().await;
        if let Some(farewell) = farewell {
            farewell.deliver().await;
        }
        end
    }

    /// Runs the session to its end, closes upstream and records what was left unsettled.
    /// What the client is still to be told comes back, to be delivered beside the reaper:
    /// a slow reader may take a while to read up to it.
    /// Also returns when the relay ended (before any wait for a statement of a client that
    /// left to settle): the reaper's window counts from then.
    pub(crate) async fn run_to_farewell(mut self) -> RelayEnd {
        let mut end = match self.relay().await {
            // The client read the server's FATAL and closed before the server did.
            End::ClientGone if self.server_ended_it => End::UpstreamGone,
            End::ClientGone if !self.tracker.is_idle() => End::ClientLeftMidStatement,
            other => other,
        };
        let ended_at = tokio::time::Instant::now();
        let backend_may_run_on = self.backend_may_run_on(&end);
        if matches!(end, End::ClientLeftMidStatement) {
            match self.settle_after_client_left().await {
                Settled::Done => {}
                Settled::Dropped(reason) => end = End::Dropped(reason),
                Settled::ServerClosed => end = End::ClientLeftThenServerClosed,
            }
        }
        let message = last_words::fatal_for(&end, &self.session.request_id, self.upstream_said_why);
        self.close_upstream().await;
        let mut leftover = std::mem::take(&mut self.outcomes);
        let settled = leftover.len();
        self.tracker.interrupt_all(&mut leftover);
        for outcome in &mut leftover[settled..] {
            take_copy_bytes(&mut self.copy_bytes, outcome);
        }
        self.record_outcomes(leftover);
        // A client in the middle of a message would read the FATAL as the rest of it:
        // only one between messages is told (after the message a write was cut in, if any).
        // One in the middle still gets a farewell without words: over TLS, bytes it was
        // sent may wait in the TLS stream, and without that flush it would see whole rows
        // and a close, as if nothing were missing.
        let words = match message {
            Some(_) if self.client_mid_message => Some(Vec::new()),
            Some((code, text)) => {
                let mut words = BytesMut::from(&self.cut_short[..]);
                wire::error_response(&mut words, wire::Severity::Fatal, code, &text);
                Some(words.to_vec())
            }
            // The server said why itself, and its FATAL was relayed: the close that follows
            // must still be one the client can tell from a cut connection (over TLS, a
            // close_notify after every byte, as PostgreSQL ends it).
            None if matches!(end, End::UpstreamGone) => Some(Vec::new()),
            None => None,
        };
        let Relay {
            client, client_fd, ..
        } = self;
        let patient = last_words::may_be_patient(&end);
        let provoked = last_words::is_provoked(&end);
        let farewell = words.map(|words| Farewell {
            client,
            client_fd,
            patient,
            words,
            provoked,
            engineer: self.session.engineer.clone(),
        });
        RelayEnd {
            end,
            farewell,
            ended_at,
            backend_may_run_on,
        }
    }

    async fn close_upstream(&mut self) {
        let terminate = [b'X', 0, 0, 0, 4];
        let close = async {
            let _ = self.upstream_w.write_all(&terminate).await;
            let _ = self.upstream_w.shutdown().await;
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
        let mut hangup = None;
        loop {
            if self.held && !self.still_held() {
                // What it waited for came: the held message, and what came after it, go on.
                if let Err(end) = self.on_client_bytes().await {
                    return end;
                }
                continue;
            }
            let timeout = self.statement_deadline();
            // While a message is held, reading goes on (a client that leaves is seen) up to
            // a bound: what it sends waits behind it. Past the bound, its socket is watched
            // for a close instead.
            let reading =
                !self.said_goodbye && (!self.held || self.cbuf.len() < buffers::BUFFER_CAPACITY);
            if reading {
                hangup = None;
                if let Err(no_room) = self.message_share.reserve(&mut self.cbuf, self.max_message) {
                    return End::NoRoomForMessage(no_room);
                }
            } else if hangup.is_none() {
                hangup = crate::proxy::hangup::Hangup::watch(self.client_fd);
            }
            let step = tokio::select! {
                biased;
                reason = self.term.fired() => Err(End::Dropped(reason)),
                _ = self.statement_timer.wait(timeout) => {
                    self.cancel_running();
                    Ok(())
                }
                _ = self.warnings.timer(), if self.warnings.armed() => self.on_warning().await,
                read = self.client.read_buf(&mut self.cbuf), if reading => match read {
                    Ok(0) | Err(_) => Err(End::ClientGone),
                    Ok(_) => match self.message_share.cover(&self.cbuf) {
                        Ok(()) => self.on_client_bytes().await,
                        Err(no_room) => Err(End::NoRoomForMessage(no_room)),
                    },
                },
                () = crate::proxy::hangup::hung_up(&hangup), if !reading => Err(End::ClientGone),
                read = self.upstream_r.read_buf(&mut self.ubuf) => match read {
                    // The server closes once it has read the client's Terminate.
                    Ok(0) | Err(_) if self.said_goodbye => Err(End::ClientGone),
                    Ok(0) | Err(_) => Err(End::UpstreamGone),
                    Ok(_) => self.on_upstream_bytes().await,
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }
}

pub(super) fn unexpected_message(tag: u8) -> String {
    // A printable tag is shown as the letter too; any other byte (a second startup packet
    // begins with a zero) only in hex, not as an escape sequence.
    if tag.is_ascii_graphic() {
        format!(
            "unexpected message type '{}' (0x{tag:02x})",
            char::from(tag)
        )
    } else {
        format!("unexpected message type 0x{tag:02x}")
    }
}
