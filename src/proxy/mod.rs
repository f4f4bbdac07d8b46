//! The data plane: a PostgreSQL-protocol listener that admits lockbox tokens, connects
//! upstream with the service credentials, relays the session and audits every statement.
//!
//! One task per client connection (`session`). The per-connection flow:
//! `negotiate` (SSL/GSS/cancel/startup) → `session` (token → admission → `upstream`)
//! → `relay` (forward bytes, audit statements via `tracker`) → end (disconnect, expiry,
//! revocation or shutdown, via `registry`) → `reaper` (a backend the proxy dropped that
//! outlives its session is terminated).

mod aftermath;
mod early_dial;
mod gate;
#[cfg(test)]
mod gate_attack_11;
mod hangup;
mod message_memory;
mod negotiate;
mod outcome;
mod oversize;
mod places;
mod preauth;
mod reaper;
mod registry;
mod relay;
mod scram;
mod session;
mod source;
mod spare;
mod statements;
mod stream;
#[cfg(test)]
mod test_tls;
mod threads;
mod tracker;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

pub use early_dial::EarlyDialPolicy;
pub use gate::Limits as ConnectionLimits;
pub(crate) use negotiate::ALPN_POSTGRESQL;
pub use registry::{DropReason, Registry, SessionInfo};
pub(crate) use relay::inspect_client_bytes;
pub(crate) use scram::cached as scram_cached;
pub(crate) use threads::SessionThreads;

use aftermath::Aftermath;

use crate::audit::{AuditEvent, SessionEvent, SessionRecord};
use crate::metrics::Refused;
use crate::service::Lockbox;

/// How long shutdown waits for sessions to end (their backends' window comes on top).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often failed-login windows that are over are closed (and summarised).
const GATE_SWEEP: Duration = Duration::from_secs(1);

/// How long a refused client has to send its startup packet to be told why.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a session needs, shared by all sessions.
pub struct Proxy {
    pub lockbox: Arc<Lockbox>,
    pub tls: Option<TlsAcceptor>,
    pub registry: Arc<Registry>,
    /// Where sessions run (see `threads`).
    pub(crate) threads: SessionThreads,
}

impl Proxy {
    /// Accepts connections until `shutdown` turns true, then waits (bounded) for the
    /// sessions, which the registry has told to end, to finish, and for their backends to
    /// be gone. Reapers and farewells run in the same set as sessions, so shutdown waits for
    /// them too.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let mut sessions: JoinSet<Option<Aftermath>> = JoinSet::new();
        let mut gate_sweep = tokio::time::interval(GATE_SWEEP);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = gate_sweep.tick() => self.sweep_gate(false),
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => self.spawn_session(&mut sessions, tcp, peer),
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                    spawn_aftermath(&mut sessions, done);
                }
            }
        }
        drop(listener);
        self.sweep_gate(true);
        self.registry.drop_all(DropReason::Shutdown);
        let drain = async {
            while let Some(done) = sessions.join_next().await {
                spawn_aftermath(&mut sessions, done);
            }
        };
        // A dropped session's backend may take its whole window before it is terminated.
        let grace = SHUTDOWN_GRACE + self.lockbox.config().terminate_after;
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("sessions still running after shutdown grace period; aborting them");
        }
        sessions.abort_all();
        self.threads.stop();
    }

    fn spawn_session(
        self: &Arc<Self>,
        sessions: &mut JoinSet<Option<Aftermath>>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) {
        let _ = tcp.set_nodelay(true);
        keep_alive(&tcp);
        let limits = self.lockbox.config().connection_limits;
        let metrics = self.lockbox.audit.metrics();
        // A full proxy sheds a connection that has not logged in before it refuses one.
        let slot = gate::take_slot(&self.registry, &limits).or_else(|| {
            let slot = gate::take_slot_shedding(&self.registry, &limits)?;
            metrics.shed(crate::metrics::Shed::MaxConnections, 1);
            Some(slot)
        });
        let Some(slot) = slot else {
            self.refuse_over_capacity(tcp);
            return;
        };
        // Counted at once, so that the next accept can shed it even before its task runs.
        let (pending, shed) = self
            .registry
            .preauth
            .enter(peer.ip(), preauth::per_source_cap(limits.max_connections));
        metrics.shed(crate::metrics::Shed::SourceCap, shed);
        let id = crate::ids::SessionId::generate();
        let span = tracing::info_span!(
            "session",
            session_id = %id,
            peer = %peer,
            user = tracing::field::Empty,
            database = tracing::field::Empty,
            request_id = tracing::field::Empty,
        );
        // The socket moves to its session thread's reactor (see `threads`).
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "accepted connection could not be handed to a session thread");
                return;
            }
        };
        let (thread, placed) = self.threads.place();
        let proxy = self.clone();
        sessions.spawn_on(
            async move {
                let _placed = placed;
                let tcp = match TcpStream::from_std(tcp) {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        tracing::warn!(error = %e, "session thread could not take the connection");
                        return None;
                    }
                };
                let after = session::serve(proxy, tcp, peer, id, pending).await;
                after.map(|after| after.releasing(slot, limits.max_connections))
            }
            .instrument(span),
            thread,
        );
    }

    /// Refuses a connection over `[proxy] max_connections` before any upstream work: it is
    /// told why (after its startup packet, so the client shows the message), counted, and
    /// closed. The task is not a session's: shutdown does not wait for it, and it is bounded
    /// by a timeout. (A source past its failed-login limit is refused later, only when its
    /// token fails: see `session::login`.)
    fn refuse_over_capacity(self: &Arc<Self>, tcp: TcpStream) {
        let why = Refused::MaxConnections;
        self.lockbox.audit.metrics().refused(why);
        let (code, message) = (
            crate::wire::sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already: lockbox's max_connections is reached",
        );
        tracing::debug!(reason = ?why, "connection refused at accept");
        let Some(refusing) = self.registry.gate.refusing() else {
            // Too many being told already: closing without a word is all a flood gets.
            return;
        };
        let proxy = self.clone();
        tokio::spawn(async move {
            let _refusing = refusing;
            let opened = tokio::time::timeout(
                REFUSAL_TIMEOUT,
                negotiate::negotiate(tcp, proxy.tls.as_ref(), &preauth::Progress::default()),
            )
            .await;
            match opened {
                Ok(Ok(negotiate::Opened::Session { mut stream, .. })) => {
                    session::send_fatal(&mut stream, code, message).await;
                }
                // A cancel still goes through: a full proxy must not leave a running
                // query uncancellable (PostgreSQL, too, serves cancels past its limit).
                Ok(Ok(negotiate::Opened::Cancel {
                    pid,
                    secret,
                    stream,
                })) => {
                    session::forward_cancel(&proxy, pid, secret).await;
                    negotiate::close_after_cancel(stream).await;
                }
                _ => {}
            }
        });
    }

    /// Counts a failed login of `peer`; true if it is to be audited on its own, false once
    /// the source is past its limit (then it is only counted, for the window's summary).
    fn failed_login(&self, source: std::net::IpAddr) -> bool {
        let limits = self.lockbox.config().connection_limits;
        let record = self.registry.gate.failed(source, &limits);
        if !record {
            // Its token was refused like an audited one; only its record is summarised.
            let metrics = self.lockbox.audit.metrics();
            metrics.refused(Refused::Authentication);
            metrics.failed_login_unrecorded();
        }
        record
    }

    /// Writes one `logins_throttled` record per source whose window is over (every window
    /// at shutdown) and that held failures not audited one by one.
    fn sweep_gate(&self, all: bool) {
        let limits = self.lockbox.config().connection_limits;
        let throttled = self.registry.gate.sweep(&limits, all);
        if throttled.is_empty() {
            return;
        }
        let records = throttled
            .into_iter()
            .map(|t| {
                tracing::warn!(source = %t.source, count = t.count, "failed logins past the limit");
                AuditEvent::Session(SessionRecord {
                    event: SessionEvent::LoginsThrottled,
                    session_id: crate::ids::SessionId::generate().0,
                    client_addr: t.source.to_string(),
                    engineer: None,
                    database: None,
                    request_id: None,
                    ticket: None,
                    reason: Some(format!(
                        "{} failed or refused logins since {} past the failed-login limit of {} per {}",
                        t.count,
                        t.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        limits.failed_login_limit,
                        humantime::format_duration(limits.failed_login_window),
                    )),
                    backend_pid: None,
                    break_glass: false,
                })
            })
            .collect();
        self.lockbox.audit.append(records);
    }
}

/// SQLSTATE 08004, sqlserver_rejected_establishment_of_sqlconnection: the server will not
/// take a connection from this client now.
pub(crate) const REJECTED_ESTABLISHMENT: &str = "08004";

/// Runs what a finished session handed back (its reaper, its farewell), beside the sessions.
fn spawn_aftermath(
    sessions: &mut JoinSet<Option<Aftermath>>,
    done: Result<Option<Aftermath>, JoinError>,
) {
    if let Ok(Some(after)) = done {
        sessions.spawn(async move {
            after.run().await;
            None
        });
    }
}

/// How long a client connection may be silent before the kernel probes it, how often it
/// probes, and how many unanswered probes end it: a client whose network went away (a
/// laptop closed, Wi-Fi lost) ends its session within about two minutes instead of holding
/// its backend, and its place under its grant's session limit, until the grant ends.
/// PostgreSQL does the same with the OS defaults (`tcp_keepalives_*`), two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;

/// Turns TCP keepalive on for a client connection (see `KEEPALIVE_IDLE`). A socket that
/// refuses it is served anyway, as before.
fn keep_alive(tcp: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not turn TCP keepalive on");
    }
}

#[cfg(test)]
mod keepalive_tests {
    use super::*;

    #[tokio::test]
    async fn client_connections_are_probed_when_silent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let sock = socket2::SockRef::from(&accepted);
        assert!(!sock.keepalive().expect("read"), "off until turned on");
        keep_alive(&accepted);
        assert!(sock.keepalive().expect("read"));
        assert_eq!(sock.tcp_keepalive_time().expect("read"), KEEPALIVE_IDLE);
        assert_eq!(
            sock.tcp_keepalive_interval().expect("read"),
            KEEPALIVE_INTERVAL
        );
        assert_eq!(
            sock.tcp_keepalive_retries().expect("read"),
            KEEPALIVE_PROBES
        );
    }
}
