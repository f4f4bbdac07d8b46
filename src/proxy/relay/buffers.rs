//! The relay's buffers and writes: reads that grow and shrink back, writes that reach the
//! client whole, stand-ins spliced over refused messages, and a close that lets the last
//! FATAL arrive (see `farewell`).

use std::borrow::Cow;
use std::io::IoSlice;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::proxy::stream::BoxStream;

/// The most of one upstream message held back from the client until it is whole; a larger
/// one streams to the client as it comes (a FATAL can then not follow it cleanly).
pub(super) const HOLD_LIMIT: usize = BUFFER_CAPACITY;

/// The largest allocation of held-back bytes kept from one hold to the next.
const KEEP_HELD_CAPACITY: usize = 16 * 1024;

impl super::Relay {
    /// Writes upstream bytes to the client, racing the session's end; see
    /// [`Self::write_to_client`]. Bytes held back (`torn`) stay held.
    pub(super) async fn forward_to_client(
        &mut self,
        bytes: &[u8],
        mid_after: bool,
    ) -> Result<(), super::End> {
        self.write_to_client(&[], bytes, mid_after).await
    }

    /// The bytes held back so far (`torn`, given up here), then `bytes`, written as by
    /// [`Self::write_to_client`]. The held bytes' allocation is kept for the next hold
    /// when it is small (the start of a row, nearly every read of a large result); one
    /// grown for a large message goes, so an idle session does not keep it.
    pub(super) async fn forward_held_then(
        &mut self,
        bytes: &[u8],
        mid_after: bool,
    ) -> Result<(), super::End> {
        let mut held = std::mem::take(&mut self.torn);
        let result = self.write_to_client(&held, bytes, mid_after).await;
        if held.capacity() <= KEEP_HELD_CAPACITY {
            held.clear();
            self.torn = held;
        }
        result
    }

    /// Writes `first` then `second` to the client, racing the session's end. The two go
    /// out in vectored writes rather than joined first: the held-back start of a message
    /// split across reads comes with nearly every read of a large result, and joining it
    /// to the read copied the whole read. The bytes start where the client's stream is
    /// (between messages unless `client_mid_message`); `mid_after` says whether they end
    /// inside a message. A write cut short by the end leaves the rest of the message it was
    /// in to `cut_short`, so the FATAL can follow it whole.
    async fn write_to_client(
        &mut self,
        first: &[u8],
        second: &[u8],
        mid_after: bool,
    ) -> Result<(), super::End> {
        let total = first.len() + second.len();
        if total == 0 {
            return Ok(());
        }
        let started_between = !self.client_mid_message;
        // Until the write is done the client may be anywhere in it.
        self.client_mid_message = true;
        let mut written = 0;
        while written < total {
            let (a, b) = unwritten(first, second, written);
            let parts = [IoSlice::new(a), IoSlice::new(b)];
            let write = self
                .client
                .write_vectored(if a.is_empty() { &parts[1..] } else { &parts });
            let wrote = match super::guarded(&mut self.term, write).await {
                Ok(wrote) => wrote,
                Err(ended) => {
                    if started_between {
                        let whole = [first, second].concat();
                        if let Some(end) = message_end(&whole, written) {
                            self.cut_short = whole[written..end].to_vec();
                            self.client_mid_message = false;
                        }
                    }
                    return Err(ended);
                }
            };
            match wrote {
                Ok(n) if n > 0 => written += n,
                _ => return Err(super::End::ClientGone),
            }
        }
        // Every byte is the stream's now (a TLS stream flushes the rest before its close).
        self.client_mid_message = mid_after;
        super::guarded(&mut self.term, self.client.flush())
            .await?
            .map_err(|_| super::End::ClientGone)
    }
}

/// What is left of `first` then `second` once `written` bytes of the two are written.
fn unwritten<'a>(first: &'a [u8], second: &'a [u8], written: usize) -> (&'a [u8], &'a [u8]) {
    match first.get(written..) {
        Some(rest) => (rest, second),
        None => (&[], &second[(written - first.len()).min(second.len())..]),
    }
}

/// Where the message that byte `at` of `bytes` lies in ends, if `bytes` start with a
/// message and that message ends within them.
fn message_end(bytes: &[u8], at: usize) -> Option<usize> {
    let mut end = 0usize;
    while end <= at {
        if end == at {
            return Some(end);
        }
        let header = bytes.get(end + 1..end + 5)?;
        let len = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        end = end
            .checked_add(1)?
            .checked_add(usize::try_from(len).ok()?)?;
    }
    (end <= bytes.len()).then_some(end)
}

/// Writes `bytes` and flushes: over TLS, `write_all` may leave the tail of a large write in
/// the TLS session's buffer when the socket is full, and nothing sends it until the next
/// write — a client waiting for the rest of a result would wait for ever.
pub(crate) async fn write_flushed(stream: &mut BoxStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// What a session's read buffers start with and return to.
pub(super) const BUFFER_CAPACITY: usize = 64 * 1024;

/// A buffer grown for one huge message (a large COPY row, a long query) goes back to its
/// usual size once it is empty, so an idle session does not keep megabytes.
pub(super) fn shrink_if_oversized(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 4 * BUFFER_CAPACITY {
        *buf = BytesMut::with_capacity(BUFFER_CAPACITY);
    }
}

/// Most entries a per-read list (pending statements, events, outcomes) keeps room for
/// between reads: a warm statement allocates no list, and a pipeline of thousands does not
/// leave its room with an idle session.
const LIST_CAPACITY: usize = 8;

/// `list`, emptied, to be used again for the next read.
pub(super) fn emptied<T>(mut list: Vec<T>) -> Vec<T> {
    list.clear();
    list.shrink_to(LIST_CAPACITY);
    list
}

/// `bytes` with each range replaced; borrowed as is when nothing is replaced.
pub(super) fn splice(
    bytes: &[u8],
    replacements: Vec<(std::ops::Range<usize>, Vec<u8>)>,
) -> Cow<'_, [u8]> {
    if replacements.is_empty() {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut at = 0;
    for (range, with) in replacements {
        out.extend_from_slice(&bytes[at..range.start]);
        out.extend_from_slice(&with);
        at = range.end;
    }
    out.extend_from_slice(&bytes[at..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_grown_for_a_huge_message_goes_back_to_its_usual_size() {
        let mut buf = BytesMut::with_capacity(BUFFER_CAPACITY);
        buf.extend_from_slice(&vec![0u8; 16 * BUFFER_CAPACITY]);
        shrink_if_oversized(&mut buf);
        assert!(
            buf.capacity() >= 16 * BUFFER_CAPACITY,
            "kept while it holds bytes"
        );
        buf.clear();
        shrink_if_oversized(&mut buf);
        assert_eq!(buf.capacity(), BUFFER_CAPACITY);
        let mut usual = BytesMut::with_capacity(BUFFER_CAPACITY);
        let before = usual.as_ptr();
        shrink_if_oversized(&mut usual);
        assert_eq!(usual.as_ptr(), before, "a usual buffer is not reallocated");
    }
}

#[cfg(test)]
mod unwritten_tests {
    use super::unwritten;

    #[test]
    fn what_is_left_of_two_parts_follows_the_bytes_written() {
        let (first, second) = (&b"abc"[..], &b"defg"[..]);
        let joined = [first, second].concat();
        for written in 0..=joined.len() {
            let (a, b) = unwritten(first, second, written);
            assert_eq!([a, b].concat(), joined[written..], "after {written} bytes");
            // The first part is done before the second is touched.
            assert!(a.is_empty() || b == second, "after {written} bytes");
        }
        assert_eq!(unwritten(&[], second, 2), (&b""[..], &b"fg"[..]));
    }
}
