//! The startup phase before authentication: SSLRequest/GSSENCRequest negotiation, TLS,
//! CancelRequest, and the StartupMessage.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::preauth::{Progress, Stage};
use super::stream::BoxStream;
use crate::wire::{self, FrameError, Startup, StartupPacket};

/// What the client opened the connection for.
pub enum Opened {
    Session {
        stream: BoxStream,
        tls: bool,
        startup: Startup,
        /// Bytes the client sent after the StartupMessage (it may pipeline its password).
        leftover: BytesMut,
    },
    Cancel {
        pid: i32,
        secret: i32,
        /// Kept to be closed after the cancel is forwarded: over TLS the client waits for
        /// a close_notify, and libpq 17's `PQcancelBlocking` reports a cancel whose
        /// connection ends without one as failed.
        stream: BoxStream,
    },
}

/// A startup-phase failure: the client gets `message` with `sqlstate`, then the close.
#[derive(Debug, thiserror::Error)]
pub enum NegotiationError {
    #[error("{message}")]
    Protocol {
        sqlstate: &'static str,
        message: String,
    },
    #[error("client closed the connection during startup")]
    Closed,
    #[error("I/O during startup: {0}")]
    Io(#[from] std::io::Error),
}

impl From<FrameError> for NegotiationError {
    fn from(e: FrameError) -> Self {
        protocol(e.to_string())
    }
}

fn protocol(message: impl Into<String>) -> NegotiationError {
    NegotiationError::Protocol {
        sqlstate: wire::sqlstate::PROTOCOL_VIOLATION,
        message: message.into(),
    }
}

/// Runs the startup phase on a fresh connection. On error, `stream` (if any) is handed
/// back so the caller can send the ErrorResponse on the right channel.
/// `progress` hears how far it got (see `preauth::Stage`).
pub async fn negotiate(
    tcp: TcpStream,
    tls: Option<&TlsAcceptor>,
    progress: &Progress,
) -> Result<Opened, (NegotiationError, Option<BoxStream>)> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut stream: Option<BoxStream> = None;
    let mut tcp = match tls {
        Some(acceptor) => match direct_tls(tcp, acceptor, progress).await {
            Ok(Direct::No(tcp)) => Some(tcp),
            Ok(Direct::Yes(tls_stream)) => {
                stream = Some(tls_stream);
                None
            }
            Err(failed) => return Err(failed),
        },
        None => Some(tcp),
    };
    let mut asked_gss = false;
    loop {
        let packet = match read_packet(&mut tcp, &mut stream, &mut buf).await {
            Ok(p) => p,
            Err(e) => return Err((e, into_stream(tcp, stream))),
        };
        progress.reached(Stage::Spoke);
        match packet {
            StartupPacket::SslRequest => {
                let Some(mut raw) = tcp.take() else {
                    return Err((protocol("SSL requested twice"), stream));
                };
                let Some(acceptor) = tls else {
                    if let Err(e) = raw.write_all(b"N").await {
                        return Err((e.into(), None));
                    }
                    tcp = Some(raw);
                    continue;
                };
                // Bytes that arrived with the SSLRequest were sent before encryption:
                // honouring them would let a man in the middle inject them (CVE-2021-23214).
                if !buf.is_empty() {
                    return Err((
                        protocol("received unencrypted data after SSL request"),
                        None,
                    ));
                }
                if let Err(e) = raw.write_all(b"S").await {
                    return Err((e.into(), None));
                }
                match tls_handshake(raw, acceptor, progress).await {
                    Ok(tls_stream) => stream = Some(Box::new(tls_stream)),
                    Err(e) => return Err((e.into(), None)),
                }
            }
            StartupPacket::GssEncRequest => {
                let Some(raw) = tcp.as_mut() else {
                    return Err((protocol("GSSENCRequest after TLS"), stream));
                };
                if asked_gss {
                    return Err((
                        protocol("GSSENCRequest sent twice"),
                        into_stream(tcp, stream),
                    ));
                }
                asked_gss = true;
                if let Err(e) = raw.write_all(b"N").await {
                    return Err((e.into(), None));
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                let stream = into_stream(tcp, stream).ok_or((NegotiationError::Closed, None))?;
                return Ok(Opened::Cancel {
                    pid,
                    secret,
                    stream,
                });
            }
            StartupPacket::UnsupportedVersion(v) => {
                let e = NegotiationError::Protocol {
                    sqlstate: wire::sqlstate::FEATURE_NOT_SUPPORTED,
                    message: format!("unsupported frontend protocol {}.{}", v >> 16, v & 0xffff),
                };
                return Err((e, into_stream(tcp, stream)));
            }
            StartupPacket::Startup(startup) => {
                let tls = stream.is_some();
                let stream = into_stream(tcp, stream).ok_or((NegotiationError::Closed, None))?;
                return Ok(Opened::Session {
                    stream,
                    tls,
                    startup,
                    leftover: buf,
                });
            }
        }
    }
}

/// A TLS record of type handshake: the first byte of a ClientHello, which no startup-phase
/// packet starts with (its length's high byte).
const TLS_HANDSHAKE: u8 = 0x16;

/// The protocol a direct TLS connection must name (ALPN), as PostgreSQL 17 requires.
pub(crate) const ALPN_POSTGRESQL: &[u8] = b"postgresql";

enum Direct {
    No(TcpStream),
    Yes(BoxStream),
}

/// A client that starts with its TLS handshake rather than an SSLRequest (libpq's
/// `sslnegotiation=direct`, PostgreSQL 17+) is taken over TLS at once, as PostgreSQL takes
/// it: only if it names the protocol `postgresql` by ALPN, so that no TLS connection meant
/// for another service can be aimed at the proxy. Looks at the first byte without taking it.
async fn direct_tls(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    progress: &Progress,
) -> Result<Direct, (NegotiationError, Option<BoxStream>)> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => return Err((NegotiationError::Closed, None)),
        Ok(_) if first[0] == TLS_HANDSHAKE => {}
        Ok(_) => return Ok(Direct::No(tcp)),
        Err(e) => return Err((e.into(), None)),
    }
    let tls_stream = match tls_handshake(tcp, acceptor, progress).await {
        Ok(tls_stream) => tls_stream,
        Err(e) => return Err((e.into(), None)),
    };
    let named = tls_stream.get_ref().1.alpn_protocol() == Some(ALPN_POSTGRESQL);
    let stream: BoxStream = Box::new(tls_stream);
    if !named {
        return Err((
            protocol("received direct SSL connection request without ALPN protocol negotiation extension"),
            Some(stream),
        ));
    }
    Ok(Direct::Yes(stream))
}

/// The server's side of a TLS handshake, its two steps told to `progress`. The ClientHello's
/// arrival is a step of its own (`Stage::Hello`): between the client's SSLRequest and its
/// Finished lie two round trips, and a login must not look stalled for both (a review shed
/// 150 ms logins in that gap).
async fn tls_handshake(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    progress: &Progress,
) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let hello =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    progress.reached(Stage::Hello);
    let tls_stream = hello.into_stream(acceptor.config().clone()).await?;
    progress.reached(Stage::Encrypted);
    Ok(tls_stream)
}

/// How long closing a cancel connection may take: the close_notify is one small record, so
/// only a client that stopped reading with a full receive buffer waits this out.
const CANCEL_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes the connection a CancelRequest came on, as PostgreSQL does once it handled the
/// cancel: over TLS with a close_notify alert (flushed) before the TCP FIN, so the client
/// sees a clean end rather than a truncation.
pub async fn close_after_cancel(mut stream: BoxStream) {
    match tokio::time::timeout(CANCEL_CLOSE_TIMEOUT, stream.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "closing a cancel connection failed"),
        Err(_) => tracing::debug!("closing a cancel connection timed out"),
    }
}

fn into_stream(tcp: Option<TcpStream>, stream: Option<BoxStream>) -> Option<BoxStream> {
    stream.or_else(|| tcp.map(|t| Box::new(t) as BoxStream))
}

/// Reads until one whole startup-phase packet is buffered, from TLS once it is up.
async fn read_packet(
    tcp: &mut Option<TcpStream>,
    stream: &mut Option<BoxStream>,
    buf: &mut BytesMut,
) -> Result<StartupPacket, NegotiationError> {
    loop {
        if let Some(packet) = wire::parse_startup(buf)? {
            return Ok(packet);
        }
        let n = match (stream.as_mut(), tcp.as_mut()) {
            (Some(s), _) => s.read_buf(buf).await?,
            (None, Some(t)) => t.read_buf(buf).await?,
            (None, None) => return Err(NegotiationError::Closed),
        };
        if n == 0 {
            return Err(NegotiationError::Closed);
        }
    }
}
