//! The relay's buffers and writes: reads that grow and shrink back, writes that reach the
//! client whole, stand-ins spliced over refused messages, and a close that lets the last
//! FATAL arrive.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::stream::BoxStream;

/// Reads and drops what the client still sends, until it closes or for half a second.
/// Closing a socket with unread bytes in it sends a reset, and a reset makes the client's
/// system throw away what it had not read yet — the FATAL just sent with the reason, for a
/// client that was writing (a COPY, a pipeline) when the session ended.
pub(super) async fn discard_until_closed(client: &mut BoxStream) {
    let mut scratch = [0u8; 8192];
    let drain = async {
        while let Ok(n) = client.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), drain).await;
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

/// `bytes` with each range replaced; borrowed as is when nothing is replaced.
pub(super) fn splice(
    bytes: &[u8],
    replacements: Vec<(std::ops::Range<usize>, Vec<u8>)>,
) -> std::borrow::Cow<'_, [u8]> {
    if replacements.is_empty() {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut at = 0;
    for (range, with) in replacements {
        out.extend_from_slice(&bytes[at..range.start]);
        out.extend_from_slice(&with);
        at = range.end;
    }
    out.extend_from_slice(&bytes[at..]);
    std::borrow::Cow::Owned(out)
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
