//! Seeing a client hang up while its bytes are not being read.
//!
//! A login waiting for one of its grant's places reads nothing from its client, and the
//! relay stops reading a client while it cannot pass on what it has: a batch written
//! upstream to a server that reads no more input (it is busy with an earlier statement),
//! or a message held back with the client buffer full. A client that vanishes then would
//! go unnoticed until the server caught up, and its backend would run on meanwhile. Its
//! socket is watched instead: a connection closed or reset by the client (a FIN or an RST
//! reached this side) ends the session at once, as a read of its end would.
//!
//! A client that died with bytes still queued in its own kernel sends its FIN only after
//! them, so where this side's receive window is full the close cannot be seen before they
//! are read; PostgreSQL itself, reached directly, is in the same position.

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub(crate) struct Hangup {
    /// A duplicate of the client's socket, registered for readiness alone: nothing is read
    /// through it.
    socket: AsyncFd<OwnedFd>,
}

impl Hangup {
    /// Starts watching the client's socket `fd`, if there is one to watch.
    ///
    /// The duplicate must not outlive the session's own handle of the socket (the socket
    /// would stay open until both are closed): holders keep it in a local of a method that
    /// borrows the session's client stream or runs within the session's task.
    pub(crate) fn watch(fd: Option<RawFd>) -> Option<Hangup> {
        let fd = fd.filter(|fd| *fd >= 0)?;
        // SAFETY: `fd` is the client's socket, owned by the session's client stream, which
        // outlives every caller of this (the relay's methods, the login's wait for a place,
        // each within the session's task that owns the stream); it is only borrowed for
        // the duplication.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let owned = borrowed.try_clone_to_owned().ok()?;
        // SAFETY: `owned` is a descriptor of its own (the duplicate), open until the
        // `AsyncFd` that takes it is dropped, and its raw value never changes.
        let socket = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }.ok()?;
        Some(Hangup { socket })
    }

    /// Resolves once the client has closed its side of the connection, or the connection
    /// failed; bytes it sent and that wait to be read do not end the wait.
    async fn hung_up(&self) {
        loop {
            let Ok(mut ready) = self.socket.readable().await else {
                // The runtime is shutting down: there is nothing more to watch for.
                return std::future::pending().await;
            };
            let state = ready.ready();
            if state.is_read_closed() || state.is_error() {
                return;
            }
            // Only more bytes: wait for the next change (edge-triggered, so no spinning
            // while they sit unread).
            ready.clear_ready();
        }
    }
}

/// [`Hangup::hung_up`] of a watch, if one runs; never resolves without one.
pub(crate) async fn hung_up(watch: &Option<Hangup>) {
    match watch {
        Some(watch) => watch.hung_up().await,
        None => std::future::pending().await,
    }
}
