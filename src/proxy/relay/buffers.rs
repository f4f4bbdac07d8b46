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
        self.write_to_client(&[], bytes, mid_after, None).await
    }

    /// The bytes held back so far (`torn`, given up here), then `bytes`, written as by
    /// [`Self::write_to_client`]. The held bytes' allocation is kept for the next hold
    /// when it is small (the start of a row, nearly every read of a large result); one
    /// grown for a large message goes, so an idle session does not keep it. `resumes_at`:
    /// where in `bytes` a message begins, for a client in the middle of one (see
    /// [`Self::write_to_client`]).
    pub(super) async fn forward_held_then(
        &mut self,
        bytes: &[u8],
        mid_after: bool,
        resumes_at: Option<usize>,
    ) -> Result<(), super::End> {
        let mut held = std::mem::take(&mut self.torn);
        // Held bytes begin a message, so they go only to a client between messages.
        let resumes_at = resumes_at.filter(|at| *at <= bytes.len() && held.is_empty());
        let result = self
            .write_to_client(&held, bytes, mid_after, resumes_at)
            .await;
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
    /// (between messages unless `client_mid_message`, and then a message begins at
    /// `resumes_at`, if anywhere in them); `mid_after` says whether they end inside a
    /// message. A write cut short by the end leaves the rest of the message it was in to
    /// `cut_short`, so the FATAL can follow it whole: also when the write began with the
    /// rest of a message too large to hold back, which once left a small row after it torn
    /// and the client without its FATAL.
    async fn write_to_client(
        &mut self,
        first: &[u8],
        second: &[u8],
        mid_after: bool,
        resumes_at: Option<usize>,
    ) -> Result<(), super::End> {
        let total = first.len() + second.len();
        if total == 0 {
            return Ok(());
        }
        let resumes_at = if self.client_mid_message {
            resumes_at
        } else {
            Some(0)
        };
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
                    if let Some(resumes_at) = resumes_at {
                        let whole = [first, second].concat();
                        if let Some(end) = cut_message_end(&whole, resumes_at, written) {
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

/// Where the message that byte `at` of `bytes` lies in ends, if it ends within them:
/// `bytes` continue a message up to `resumes_at` (0 when they start with one), and whole
/// messages follow.
fn cut_message_end(bytes: &[u8], resumes_at: usize, at: usize) -> Option<usize> {
    if at < resumes_at {
        return (resumes_at <= bytes.len()).then_some(resumes_at);
    }
    let end = message_end(bytes.get(resumes_at..)?, at - resumes_at)?;
    Some(resumes_at + end)
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
pub(crate) const BUFFER_CAPACITY: usize = 64 * 1024;

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
mod cut_message_tests {
    use super::cut_message_end;

    fn msg(tag: u8, body_len: usize) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(4 + body_len as i32).to_be_bytes());
        m.extend(std::iter::repeat_n(b'x', body_len));
        m
    }

    #[test]
    fn a_cut_in_the_rest_of_a_streaming_message_ends_where_it_does() {
        // The last 30 bytes of a large row, then two small rows.
        let rows = [msg(b'D', 20), msg(b'D', 40)].concat();
        let bytes = [vec![b'r'; 30], rows.clone()].concat();
        for at in 0..30 {
            assert_eq!(cut_message_end(&bytes, 30, at), Some(30), "cut at {at}");
        }
        // Past it, each small row ends where it does: the client is given all of it.
        assert_eq!(cut_message_end(&bytes, 30, 30), Some(30));
        for at in 31..30 + 25 {
            assert_eq!(
                cut_message_end(&bytes, 30, at),
                Some(30 + 25),
                "cut at {at}"
            );
        }
        for at in 30 + 26..bytes.len() {
            assert_eq!(
                cut_message_end(&bytes, 30, at),
                Some(bytes.len()),
                "cut at {at}"
            );
        }
    }

    #[test]
    fn a_cut_in_a_message_that_does_not_end_in_the_bytes_has_no_end() {
        let mut bytes = msg(b'D', 20);
        bytes.extend_from_slice(&msg(b'D', 100)[..50]);
        assert_eq!(cut_message_end(&bytes, 0, 10), Some(25));
        assert_eq!(cut_message_end(&bytes, 0, 30), None);
        // A message said to begin past the bytes: nothing is known of where it ends.
        assert_eq!(cut_message_end(&bytes, bytes.len() + 1, 3), None);
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
