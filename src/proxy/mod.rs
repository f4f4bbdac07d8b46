//! The data plane: a PostgreSQL-protocol listener that admits lockbox tokens, connects
//! upstream with the service credentials, relays the session and audits every statement.
//!
//! One task per client connection (`session`). The per-connection flow:
//! `negotiate` (SSL/GSS/cancel/startup) → `session` (token → admission → `upstream`)
//! → `relay` (forward bytes, audit statements via `tracker`) → end (disconnect, expiry,
//! revocation or shutdown, via `registry`).

mod negotiate;
mod registry;
mod relay;
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
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

pub use registry::{DropReason, Registry};

use crate::service::Lockbox;

/// Everything a session needs, shared by all sessions.
pub struct Proxy {
    pub lockbox: Arc<Lockbox>,
    pub tls: Option<TlsAcceptor>,
    pub registry: Arc<Registry>,
}

impl Proxy {
    /// Accepts connections until `shutdown` turns true, then waits (bounded) for the
    /// sessions, which the registry has told to end, to finish.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let mut sessions = JoinSet::new();
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
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(listener);
        self.registry.drop_all(DropReason::Shutdown);
        let drain = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("sessions still running after shutdown grace period; aborting them");
        }
    }

    fn spawn_session(
        self: &Arc<Self>,
        sessions: &mut JoinSet<()>,
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
