//! A client message over `proxy.max_message_size`. The session ends (the proxy never
//! buffers more than the limit), and both the client's FATAL and the session's end record
//! say which message, how large and what the limit is: "disconnected" alone left an
//! operator guessing whether the client, the network or the proxy ended it. The SQLSTATE
//! stays 08P01, what PostgreSQL itself answers a message over its own limit with.

use super::relay::End;
use crate::wire::FrameError;

/// A message refused for its declared size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Oversize {
    /// The message's type byte.
    pub tag: u8,
    /// Its declared size, type byte and length included.
    pub size: usize,
    pub limit: usize,
}

impl Oversize {
    /// What the session's end record says.
    pub fn describe(&self) -> String {
        format!(
            "{} message of {} bytes exceeds proxy.max_message_size ({} bytes)",
            message_name(self.tag),
            self.size,
            self.limit
        )
    }

    /// What the client's FATAL says.
    pub fn fatal_message(&self) -> String {
        format!("lockbox: {}; the session is ended", self.describe())
    }
}

/// The session's end for a framing error on a client message of type `tag`.
pub fn end_for(tag: u8, error: FrameError) -> End {
    match error {
        FrameError::TooLarge { size, limit } => End::MessageTooLarge(Oversize { tag, size, limit }),
        other => End::ProtocolError(other.to_string()),
    }
}

/// The protocol's name for a frontend message type.
pub(super) fn message_name(tag: u8) -> String {
    let name = match tag {
        b'Q' => "Query",
        b'P' => "Parse",
        b'B' => "Bind",
        b'E' => "Execute",
        b'D' => "Describe",
        b'C' => "Close",
        b'S' => "Sync",
        b'H' => "Flush",
        b'F' => "FunctionCall",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'f' => "CopyFail",
        b'p' => "password or SASL",
        b'X' => "Terminate",
        other => return format!("type {:?}", char::from(other)),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(tag: u8, error: FrameError, expected: &str) {
        let text = match end_for(tag, error) {
            End::MessageTooLarge(o) => o.describe(),
            End::ProtocolError(m) => m,
            _ => String::from("another end"),
        };
        assert_eq!(text, expected);
    }

    #[test]
    fn an_oversized_message_is_named_with_its_size_and_the_limit() {
        check(
            b'B',
            FrameError::TooLarge {
                size: 2048,
                limit: 1024,
            },
            "Bind message of 2048 bytes exceeds proxy.max_message_size (1024 bytes)",
        );
        check(
            b'd',
            FrameError::TooLarge {
                size: 5000,
                limit: 4096,
            },
            "CopyData message of 5000 bytes exceeds proxy.max_message_size (4096 bytes)",
        );
        check(b'Q', FrameError::BadLength(2), "invalid message length 2");
    }
}
