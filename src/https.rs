//! Serving the control-plane API (HTTPS, or plain HTTP on loopback) with the limits a
//! listener on the network needs.
//!
//! Each connection runs on a task of its own from `accept` on: the TLS handshake, then
//! hyper's HTTP/1 with a timer. Nothing a client does holds up the accept loop, and
//! nothing a client leaves open stays open for long:
//! - a handshake gets `HANDSHAKE_TIMEOUT`;
//! - a request head gets `HEADER_READ_TIMEOUT`, counted from the end of the previous
//!   response on a kept-alive connection too, so it is also the idle timeout;
//! - a request body may pause at most `BODY_READ_TIMEOUT` between two pieces;
//! - connections are capped in total and per client address for their whole life
//!   (`limits`), the oldest shed first, well below the process's open-file limit, which
//!   is raised to its hard limit at start (`fd_limit`) — the data-plane proxy shares
//!   those file descriptors.

mod fd_limit;
mod limits;

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use limits::{Caps, Slot, Tracker};

/// A client gets this long to finish its TLS handshake: seconds suffice on any network,
/// and a connection waiting for one is a slot someone else may need.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client gets this long to send a whole request head, and a kept-alive connection may
/// idle this long between requests (hyper starts the same timer for both).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request body that sends nothing for this long fails (the handler answers 4xx and
/// the connection is closed), so a trickled body cannot hold a connection.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// When the server stops, a connection may finish the request it is serving for this
/// long; then it is cut off.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The open-file limit assumed when it cannot be read: the usual default soft limit.
const ASSUMED_FD_LIMIT: u64 = 1024;

/// After an accept error that is not about one connection (out of file descriptors), wait
/// this long before the next, rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` turns true, over TLS when `tls` is given;
/// then lets open connections finish their request (at most `CLOSE_GRACE`).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let fd_limit = fd_limit::raise_nofile().unwrap_or(ASSUMED_FD_LIMIT);
    let caps = Caps::for_fd_limit(fd_limit);
    tracing::debug!(fd_limit, ?caps, "API connection limits");
    let tracker = Tracker::new(caps);
    let acceptor = tls.map(TlsAcceptor::from);
    // Each connection task holds a sender: when all are gone, every connection is closed.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "API accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let connection = Connection {
            peer,
            app: app.clone(),
            shutdown: shutdown.clone(),
            slot: tracker.admit(peer.ip()),
            _alive: alive.clone(),
        };
        tokio::spawn(connection.run(tcp, acceptor.clone()));
    }
    drop(listener);
    drop(alive);
    let _ = tokio::time::timeout(CLOSE_GRACE * 2, all_closed.recv()).await;
}

/// Returns once the server is told to stop (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// One accepted connection and what it holds while open.
struct Connection {
    peer: SocketAddr,
    app: axum::Router,
    shutdown: watch::Receiver<bool>,
    slot: Slot,
    _alive: mpsc::Sender<()>,
}

impl Connection {
    async fn run(mut self, tcp: TcpStream, acceptor: Option<TlsAcceptor>) {
        let Some(acceptor) = acceptor else {
            return self.serve_http(tcp).await;
        };
        let peer = self.peer;
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
        let tls = tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                // A client's failure, not the server's: worth a look only when debugging.
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "API TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "API TLS handshake timed out"),
            },
            _ = self.slot.shed.notified() => return,
            _ = stopped(&mut self.shutdown) => return,
        };
        self.serve_http(tls).await
    }

    async fn serve_http<Io>(mut self, io: Io)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let app = TowerToHyperService::new(tower_http::timeout::RequestBodyTimeout::new(
            self.app.clone(),
            BODY_READ_TIMEOUT,
        ));
        let busy = self.slot.busy_counter();
        // Each request marks its connection busy while in a handler: shedding takes idle
        // connections first.
        let service = hyper::service::service_fn(move |request| {
            let mark = busy.mark();
            let answer = hyper::service::Service::call(&app, request);
            async move {
                let answer = answer.await;
                drop(mark);
                answer
            }
        });
        let mut conn = pin!(http.serve_connection(TokioIo::new(io), service));
        let peer = self.peer;
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "API connection ended with an error");
                }
                return;
            }
            // Closed at once: its slot is already given to a newer connection, and a
            // grace period would let a flood hold descriptors beyond the cap.
            _ = self.slot.shed.notified() => return,
            _ = stopped(&mut self.shutdown) => {}
        }
        // Idle: closes at once; serving a request: closes after its response.
        conn.as_mut().graceful_shutdown();
        if tokio::time::timeout(CLOSE_GRACE, conn).await.is_err() {
            tracing::debug!(%peer, "API connection cut off after its close grace");
        }
    }
}

/// Errors that end one connection, not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// Logged by `lockbox serve` when the API serves plain HTTP (only allowed on loopback).
pub(crate) fn warn_if_plaintext(config: &crate::config::Config) {
    if config.api_tls.is_none() {
        tracing::warn!(
            api_listen = %config.api_listen,
            "the API serves plain HTTP (allowed on loopback only); set [api] tls_cert and \
             tls_key to serve HTTPS"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// An HTTPS server answering `ok` on `/`, and the PEM of the CA that signed it.
    async fn serve_ok(dir: &std::path::Path) -> (SocketAddr, String) {
        let (ca, cert, key) =
            crate::tls::generate_ca_signed(&["127.0.0.1".into()]).expect("generate");
        std::fs::write(dir.join("cert.pem"), cert).expect("write cert");
        std::fs::write(dir.join("key.pem"), key).expect("write key");
        let config = crate::tls::server_config(&dir.join("cert.pem"), &dir.join("key.pem"))
            .expect("server config");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            serve(tcp, Some(config), app, stopped).await;
            drop(stop);
        });
        (addr, ca)
    }

    #[tokio::test]
    async fn a_silent_or_garbage_client_does_not_hold_up_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (addr, ca) = serve_ok(dir.path()).await;
        // One client connects and says nothing; another sends bytes that are not TLS.
        let silent = TcpStream::connect(addr).await.expect("connect");
        let mut garbage = TcpStream::connect(addr).await.expect("connect");
        garbage
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");

        let client = crate::http_client::client(Some(ca.as_bytes())).expect("client");
        let body = client
            .get(format!("https://{addr}/"))
            .send()
            .await
            .expect("answered while the silent client still handshakes")
            .text()
            .await
            .expect("body");
        assert_eq!(body, "ok");
        // Had the handshake run in the accept loop, the silent client's would have been
        // timed out (its socket closed) before the request above was accepted.
        let mut buf = [0u8; 16];
        match silent.try_read(&mut buf) {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
            Ok(n) => panic!("the silent client's connection ended ({n} bytes)"),
        }
    }
}
