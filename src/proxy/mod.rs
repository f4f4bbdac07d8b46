//! The data plane: a PostgreSQL-protocol listener that admits lockbox tokens, connects
//! upstream with the service credentials, relays the session and audits every statement.
//!
//! One task per client connection (`session`). The per-connection flow:
//! `negotiate` (SSL/GSS/cancel/startup) → `session` (token → admission → `upstream`)
//! → `relay` (forward bytes, audit statements via `tracker`) → end (disconnect, expiry,
//! revocation or shutdown, via `registry`) → `reaper` (a backend the proxy dropped that
//! outlives its session is terminated).

mod negotiate;
mod oversize;
mod reaper;
mod registry;
mod relay;
mod scram;
mod session;
mod statements;
mod stream;
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

pub use registry::{DropReason, Registry};

use reaper::Reaper;

use crate::service::Lockbox;

/// How long shutdown waits for sessions to end (their backends' window comes on top).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything a session needs, shared by all sessions.
pub struct Proxy {
    pub lockbox: Arc<Lockbox>,
    pub tls: Option<TlsAcceptor>,
    pub registry: Arc<Registry>,
}

impl Proxy {
    /// Accepts connections until `shutdown` turns true, then waits (bounded) for the
    /// sessions, which the registry has told to end, to finish, and for their backends to
    /// be gone. Reapers run in the same set as sessions, so shutdown waits for them too.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let mut sessions: JoinSet<Option<Reaper>> = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => self.spawn_session(&mut sessions, tcp, peer),
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                    spawn_reaper(&mut sessions, done);
                }
            }
        }
        drop(listener);
        self.registry.drop_all(DropReason::Shutdown);
        let drain = async {
            while let Some(done) = sessions.join_next().await {
                spawn_reaper(&mut sessions, done);
            }
        };
        // A dropped session's backend may take its whole window before it is terminated.
        let grace = SHUTDOWN_GRACE + self.lockbox.config().terminate_after;
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("sessions still running after shutdown grace period; aborting them");
        }
    }

    fn spawn_session(
        self: &Arc<Self>,
        sessions: &mut JoinSet<Option<Reaper>>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) {
        let _ = tcp.set_nodelay(true);
        let id = crate::ids::SessionId::generate();
        let span = tracing::info_span!(
            "session",
            session_id = %id,
            peer = %peer,
            user = tracing::field::Empty,
            database = tracing::field::Empty,
            request_id = tracing::field::Empty,
        );
        let proxy = self.clone();
        sessions.spawn(async move { session::serve(proxy, tcp, peer, id).await }.instrument(span));
    }
}

/// Runs the reaper a finished session handed back, if any, beside the sessions.
fn spawn_reaper(sessions: &mut JoinSet<Option<Reaper>>, done: Result<Option<Reaper>, JoinError>) {
    if let Ok(Some(reaper)) = done {
        sessions.spawn(async move {
            reaper.run().await;
            None
        });
    }
}
