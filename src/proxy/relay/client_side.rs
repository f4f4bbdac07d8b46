//! The client's side of the relay: complete messages are inspected (`inspect.rs`), their
//! statement records made durable (`record.rs`), and the batch forwarded upstream as
//! received, while what upstream sends meanwhile keeps flowing to the client.

use std::pin::Pin;
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::buffers::{emptied, splice, BUFFER_CAPACITY};
use super::hold::{BatchSoFar, Verdict};
use super::record::Pending;
use super::{guarded, unexpected_message, End, Relay, BIG_BATCH};
use crate::proxy::hangup::{self, Hangup};
use crate::wire;

/// How long what a server sent before it went is read after a write to it failed.
const FAILED_WRITE_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// A Flush message: no reply; the server sends what it has buffered.
const FLUSH: [u8; 5] = [b'H', 0, 0, 0, 4];

/// Message types a client may send after login.
const FRONTEND_TAGS: &[u8] = b"QPBEDCHSFdcfX";

impl Relay {
    /// Inspects every complete client message, makes the batch's statement records
    /// durable, then forwards the batch as received (refused messages swapped for stand-ins).
    pub(super) async fn on_client_bytes(&mut self) -> Result<(), End> {
        let buf = std::mem::take(&mut self.cbuf);
        // Parsing a large batch takes a while: the session thread's other sessions go on
        // elsewhere meanwhile.
        let scanned = if buf.len() > BIG_BATCH {
            crate::runtime::blocking(|| self.inspect_batch(&buf))
        } else {
            self.inspect_batch(&buf)
        };
        self.cbuf = buf;
        let mut batch = scanned?;
        if batch.consumed == 0 {
            self.spare_pending = emptied(std::mem::take(&mut batch.pending));
            if std::mem::take(&mut self.flush_upstream) {
                self.forward_upstream(&FLUSH).await?;
            }
            return Ok(());
        }
        // What the batch makes the session keep (statement texts, parameters) must fit the
        // budget before any of it runs: a client could otherwise make the proxy keep
        // without bound what no single message holds (an attack review kept 392 MB in one
        // session with 400 Parses of 900 KiB).
        self.kept_share
            .hold_kept(self.statements.retained())
            .map_err(End::NoRoomForMessage)?;
        let bytes = self.cbuf.split_to(batch.consumed);
        self.record_statements(batch.pending).await?;
        let mut outgoing = splice(&bytes, batch.replacements);
        if std::mem::take(&mut self.flush_upstream) {
            outgoing.to_mut().extend_from_slice(&FLUSH);
        }
        self.forward_upstream(&outgoing).await?;
        // The batch shared the buffer's allocation; a huge one would be reclaimed whole by
        // the next read. A buffer grown by reads (bytes behind a waiting Bind) goes back
        // too, and with it the session's share of the room for large messages.
        let grown = bytes.len() > 4 * BUFFER_CAPACITY || self.cbuf.capacity() > 4 * BUFFER_CAPACITY;
        if grown && self.cbuf.is_empty() {
            self.cbuf = BytesMut::with_capacity(BUFFER_CAPACITY);
            self.message_share.release();
        }
        if batch.terminate {
            // Statements sent with the Terminate are answered before the server reads it.
            if self.tracker.is_idle() {
                return Err(End::ClientGone);
            }
            self.said_goodbye = true;
            self.cbuf.clear();
            return Ok(());
        }
        // A bad message left behind the forwarded ones ends the session now.
        match self.cbuf.first() {
            Some(&tag) if !FRONTEND_TAGS.contains(&tag) => {
                Err(End::ProtocolError(unexpected_message(tag)))
            }
            _ => Ok(()),
        }
    }

    /// Walks the complete messages at the front of `buf`.
    pub(super) fn inspect_batch(&mut self, buf: &[u8]) -> Result<Batch, End> {
        self.catch_up_on_code()?;
        self.batch = BatchSoFar::default();
        let mut batch = Batch {
            pending: std::mem::take(&mut self.spare_pending),
            ..Batch::default()
        };
        while let Some(&tag) = buf.get(batch.consumed) {
            // A message type nobody sends after login (a second StartupMessage starts with a
            // zero byte) is refused at once, not after waiting for the length it seems to
            // declare. Messages before it are forwarded first.
            if !FRONTEND_TAGS.contains(&tag) {
                if batch.consumed == 0 {
                    return Err(End::ProtocolError(unexpected_message(tag)));
                }
                break;
            }
            let Some(len) = wire::frame_len(&buf[batch.consumed..], self.max_message)
                .map_err(|e| crate::proxy::oversize::end_for(tag, e))?
            else {
                break;
            };
            let at = batch.consumed;
            let frame = &buf[at..at + len];
            match self.verdict(frame, buf.len() > at + len) {
                // COPY data and its end, Flush and Terminate wait for no answer.
                Verdict::Pass => {
                    if !matches!(frame[0], b'd' | b'c' | b'f' | b'H' | b'X') {
                        self.batch.messages += 1;
                    }
                }
                Verdict::Hold => break,
                Verdict::Drop => {
                    batch.replacements.push((at..at + len, Vec::new()));
                    batch.consumed += len;
                    continue;
                }
                Verdict::Refuse(why) => return Err(End::ProtocolError(why.to_owned())),
            }
            // A Bind plans its statement: whether its Execute follows decides its record.
            if frame[0] == b'B' && self.bind_waits(frame, &buf[at + len..]) {
                break;
            }
            let stand_in = self
                .inspect(frame[0], &frame[5..], &mut batch.pending)
                .map_err(End::ProtocolError)?;
            if frame[0] == b'E' {
                self.bind_executed(stand_in.is_some(), &mut batch.pending);
            }
            if let Some(stand_in) = stand_in {
                batch.replacements.push((at..at + len, stand_in));
            }
            batch.consumed += len;
            if frame[0] == b'X' {
                batch.terminate = true;
                break;
            }
        }
        // A Bind whose Execute stays behind (held, or not sent yet) goes with a record.
        self.bind_covered_by(None, &mut batch.pending);
        Ok(batch)
    }

    /// Writes `outgoing` upstream while still reading what upstream sends (and handling it as
    /// usual): a server busy sending results reads no more input until they are read.
    pub(super) async fn forward_upstream(&mut self, outgoing: &[u8]) -> Result<(), End> {
        enum Step {
            Wrote(std::io::Result<usize>),
            Read(std::io::Result<usize>),
        }
        if let Some(cancel) = self.cancel_in_flight.take() {
            // The server cancels whatever the backend runs when the request reaches it: a
            // statement sent before then could be cancelled in place of the one past the
            // grant's timeout (which may have just ended by itself). So it waits until the
            // server has taken the request (its connection closed, `send_cancel`), at most
            // the cancel's own time-outs; a backend that is idle by then ignores it.
            let _ = guarded(&mut self.term, cancel).await?;
        }
        let mut sent = 0;
        // The client is not read while its batch waits to be written: it is watched instead
        // from the first write that cannot go at once (see `hangup`), so that one that
        // leaves meanwhile is seen. Most batches go at once and never set up the watch.
        let mut hangup = None;
        let mut waited = false;
        while sent < outgoing.len() {
            // Checked before each write rather than raced first: see `guarded`.
            if let Some(reason) = self.term.ended() {
                return Err(End::Dropped(reason));
            }
            let step = if waited {
                tokio::select! {
                    biased;
                    wrote = self.upstream_w.write(&outgoing[sent..]) => Step::Wrote(wrote),
                    read = self.upstream_r.read_buf(&mut self.ubuf) => Step::Read(read),
                    reason = self.term.fired() => return Err(End::Dropped(reason)),
                    () = hangup::hung_up(&hangup) => return Err(End::ClientGone),
                }
            } else {
                match self.try_write_upstream(&outgoing[sent..]).await {
                    Poll::Ready(wrote) => Step::Wrote(wrote),
                    Poll::Pending => {
                        waited = true;
                        hangup = Hangup::watch(self.client_fd);
                        continue;
                    }
                }
            };
            match step {
                Step::Wrote(Ok(n)) if n > 0 => sent += n,
                Step::Wrote(_) => return Err(self.upstream_gone_after_a_failed_write().await),
                Step::Read(Ok(0) | Err(_)) => return Err(End::UpstreamGone),
                Step::Read(Ok(_)) => self.on_upstream_bytes().await?,
            }
        }
        match guarded(&mut self.term, self.upstream_w.flush()).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(self.upstream_gone_after_a_failed_write().await),
        }
    }

    /// One attempt at writing `bytes` upstream, without waiting for room.
    async fn try_write_upstream(&mut self, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut self.upstream_w).poll_write(cx, bytes)))
            .await
    }

    /// A write upstream failed: the server is gone, but what it sent before it went may
    /// still wait to be read (rows, and its FATAL saying why: a server that ends a session
    /// with the client's bytes unread resets the connection, which fails the next write at
    /// once). It is read and relayed as usual, as libpq reads after a failed send, for at
    /// most [`FAILED_WRITE_DRAIN`] of reading.
    pub(super) async fn upstream_gone_after_a_failed_write(&mut self) -> End {
        let until = tokio::time::Instant::now() + FAILED_WRITE_DRAIN;
        loop {
            let read = tokio::select! {
                biased;
                reason = self.term.fired() => return End::Dropped(reason),
                read = tokio::time::timeout_at(until, self.upstream_r.read_buf(&mut self.ubuf)) => read,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {
                    if let Err(end) = self.on_upstream_bytes().await {
                        return end;
                    }
                }
                _ => return End::UpstreamGone,
            }
        }
    }
}

/// What one read of client bytes holds.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) consumed: usize,
    pub(super) pending: Vec<Pending>,
    /// Byte ranges of refused messages and their stand-ins.
    pub(super) replacements: Vec<(std::ops::Range<usize>, Vec<u8>)>,
    pub(super) terminate: bool,
}
