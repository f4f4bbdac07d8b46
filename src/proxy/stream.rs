//! One type for plain and TLS connections, so the session code is written once.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::TcpStream;

pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Registers the connection's socket with the reactor of the runtime this is called
    /// on, and leaves the one it was opened on.
    ///
    /// Why: a socket stays with the reactor (the session thread) that opened it, and one
    /// read on another thread then costs a wake-up across threads for every message. A
    /// connection opened on one session thread and used on another (a spare backend) is
    /// moved once, when it changes hands.
    fn move_here(&mut self) -> io::Result<()>;

    /// Whether the peer sent anything not read yet — bytes, a close, a reset — as the kernel
    /// sees it now. The reactor's view of a socket (what a read polled once finds) lags
    /// behind until the thread it belongs to has handled the socket's event, and the thread
    /// that asks may not be that one. Never waits and reads nothing.
    fn peer_spoke(&self) -> bool;
}

pub type BoxStream = Box<dyn AsyncStream>;

impl AsyncStream for TcpStream {
    fn move_here(&mut self) -> io::Result<()> {
        // The same socket under a second descriptor, registered here; the old one leaves
        // its reactor as it drops. Nothing is read or lost: the socket's buffers are the
        // kernel's, and a registration reports readiness already there when it starts.
        let socket = std::net::TcpStream::from(self.as_fd().try_clone_to_owned()?);
        *self = TcpStream::from_std(socket)?;
        Ok(())
    }

    fn peer_spoke(&self) -> bool {
        let mut byte = [MaybeUninit::uninit()];
        // The socket is non-blocking: an empty receive queue answers WouldBlock at once.
        match socket2::SockRef::from(self).peek(&mut byte) {
            Ok(_) => true, // bytes, or 0: the peer closed
            Err(e) => {
                e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted
            }
        }
    }
}

impl<S: AsyncStream> AsyncStream for tokio_rustls::client::TlsStream<S> {
    fn move_here(&mut self) -> io::Result<()> {
        // The TLS session's state (keys, buffered records) stays; only its socket moves.
        self.get_mut().0.move_here()
    }

    /// Records already read into the TLS session are not asked about here: a read polled
    /// once finds those.
    fn peer_spoke(&self) -> bool {
        self.get_ref().0.peer_spoke()
    }
}

impl<S: AsyncStream> AsyncStream for tokio_rustls::server::TlsStream<S> {
    fn move_here(&mut self) -> io::Result<()> {
        self.get_mut().0.move_here()
    }

    fn peer_spoke(&self) -> bool {
        self.get_ref().0.peer_spoke()
    }
}

/// In-memory connections (tests) have no reactor to leave, and no view lags: a read polled
/// once finds what the peer sent.
impl AsyncStream for DuplexStream {
    fn move_here(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn peer_spoke(&self) -> bool {
        false
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
