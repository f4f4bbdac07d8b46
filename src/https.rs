//! HTTPS for the control-plane API: a listener that hands axum connections whose TLS
//! handshake is already done.
//!
//! Handshakes run on tasks of their own, never in the accept loop: a client that connects
//! and then sends nothing (or garbage, slowly) costs one task until `HANDSHAKE_TIMEOUT`,
//! and never delays the next accept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client gets this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in flight (and finished ones not yet taken by axum) at most; past it, accepts
/// wait for one to end, so a flood of idle connections cannot take unbounded memory.
const MAX_HANDSHAKES: usize = 512;

/// After an accept error that is not about one connection (out of file descriptors), wait
/// this long before the next, rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type Ready = (TlsStream<TcpStream>, SocketAddr);

/// A TCP listener whose connections come out TLS-terminated.
pub(crate) struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<Ready>,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` at once; axum takes the finished connections.
    pub(crate) fn new(
        listener: TcpListener,
        local: SocketAddr,
        config: Arc<rustls::ServerConfig>,
    ) -> TlsListener {
        let (send, ready) = mpsc::channel(MAX_HANDSHAKES);
        let accepting = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), send));
        TlsListener {
            local,
            ready,
            accepting,
        }
    }
}

impl Drop for TlsListener {
    /// The accept loop holds the socket: once axum is done with this listener, stop
    /// accepting so the port is released.
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> Ready {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept loop only ends when aborted by `drop`: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, ready: mpsc::Sender<Ready>) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                tracing::error!(error = %e, "API accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                // A client's failure, not the server's: worth a look only when debugging.
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "API TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
            }
        });
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
        let server = axum::serve(TlsListener::new(tcp, addr, config), app);
        tokio::spawn(async move { server.await });
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
