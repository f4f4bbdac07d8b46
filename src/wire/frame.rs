//! Splitting a byte stream into messages: the 1-byte tag + 4-byte length framing of
//! regular messages, and the untagged startup-phase packets.

use bytes::{Buf, BytesMut};

use super::{codes, MAX_STARTUP_PACKET};

/// A framing problem that ends the connection with SQLSTATE 08P01.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed startup packet: {0}")]
    BadStartup(&'static str),
    /// A message whose body ends before the fields it declares (PostgreSQL's words for it).
    #[error("insufficient data left in message")]
    Truncated,
    /// A message with bytes after its last field (PostgreSQL's words for it).
    #[error("invalid message format")]
    Malformed,
    /// PostgreSQL keys prepared statements and portals by a name's first 63 bytes
    /// (NAMEDATALEN - 1): two longer names alike that far are one to the server, and lockbox
    /// could record one statement's text while the other runs.
    #[error("a statement or portal name of {0} bytes: PostgreSQL keeps only the first {max} bytes of a name, so lockbox cannot tell which statement such a name runs; use names of at most {max} bytes", max = super::MAX_NAME_BYTES)]
    NameTooLong(usize),
    /// Names not valid UTF-8 (the session's client_encoding): read as text, two of them
    /// could look alike to lockbox and differ to a server that does not check (SQL_ASCII).
    #[error("a statement or portal name that is not valid UTF-8")]
    NameNotUtf8,
}

/// Takes one complete tagged message (`tag`, length, body) off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. The limit is checked against the
/// declared length before anything is buffered, so memory stays bounded by what the
/// peer actually sent.
pub fn split_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<BytesMut>, FrameError> {
    match frame_len(buf, limit)? {
        Some(total) => Ok(Some(buf.split_to(total))),
        None => {
            reserve_rest_of_frame(buf, limit);
            Ok(None)
        }
    }
}

/// The declared size (type byte and length included) of the tagged message `buf` starts
/// with, once its header is in; none for a negative length.
pub fn declared_frame_size(buf: &[u8]) -> Option<usize> {
    let &[a, b, c, d] = buf.get(1..5)? else {
        return None;
    };
    let declared = usize::try_from(i32::from_be_bytes([a, b, c, d])).ok()?;
    Some(declared.saturating_add(1))
}

/// Makes room at once for the rest of the tagged message `buf` starts with, once its header
/// is in and the message is larger than what `buf` holds. Left to the reads, a buffer grows
/// by doubling: a 60 MB message would take a 64 MB buffer, and the 32 MB one while it is
/// copied over. A message over `limit` (refused when it is framed) or with a negative
/// length gets nothing.
pub fn reserve_rest_of_frame(buf: &mut BytesMut, limit: usize) {
    let Some(total) = declared_frame_size(buf) else {
        return;
    };
    if total <= limit && total > buf.len() {
        buf.reserve(total - buf.len());
    }
}

/// The total length of the complete tagged message at the start of `buf`, if it is all there.
pub fn frame_len(buf: &[u8], limit: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if declared < 4 {
        return Err(FrameError::BadLength(declared.into()));
    }
    let total = declared as usize + 1;
    if total > limit {
        return Err(FrameError::TooLarge { size: total, limit });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// A packet of the startup phase, before any tag byte is in use.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    Startup(Startup),
    /// A protocol version the proxy does not speak.
    UnsupportedVersion(i32),
}

/// The parameters of a StartupMessage.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Startup {
    pub params: Vec<(String, String)>,
    /// The minor protocol version the client asked for (3.x); the proxy speaks 3.0.
    pub minor: u16,
}

impl Startup {
    /// What a NegotiateProtocolVersion must tell the client, as PostgreSQL tells it: the
    /// protocol options (`_pq_.…`) the proxy does not know, when it asked for a newer minor
    /// version than 3.0 or sent any. `None`: nothing to negotiate.
    pub fn unrecognized_options(&self) -> Option<Vec<&str>> {
        let options: Vec<&str> = self
            .params
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with("_pq_."))
            .collect();
        (self.minor > 0 || !options.is_empty()).then_some(options)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Takes one startup-phase packet off the front of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let declared = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if declared < 8 {
        return Err(FrameError::BadLength(declared.into()));
    }
    let total = declared as usize;
    if total > MAX_STARTUP_PACKET {
        return Err(FrameError::TooLarge {
            size: total,
            limit: MAX_STARTUP_PACKET,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let mut packet = buf.split_to(total);
    packet.advance(4);
    let code = packet.get_i32();
    let parsed = match code {
        codes::SSL_REQUEST if total == 8 => StartupPacket::SslRequest,
        codes::GSSENC_REQUEST if total == 8 => StartupPacket::GssEncRequest,
        codes::CANCEL_REQUEST if total == 16 => StartupPacket::Cancel {
            pid: packet.get_i32(),
            secret: packet.get_i32(),
        },
        codes::SSL_REQUEST | codes::GSSENC_REQUEST | codes::CANCEL_REQUEST => {
            return Err(FrameError::BadStartup(
                "wrong length for a negotiation request",
            ))
        }
        // Any 3.x: a newer minor version is answered with NegotiateProtocolVersion (3.0),
        // as PostgreSQL does, so a client that asks for 3.2 goes on with 3.0.
        version if version >> 16 == 3 => {
            let mut startup = parse_params(&packet)?;
            startup.minor = (version & 0xffff) as u16;
            StartupPacket::Startup(startup)
        }
        other => StartupPacket::UnsupportedVersion(other),
    };
    Ok(Some(parsed))
}

/// `key\0value\0 … \0`
fn parse_params(mut body: &[u8]) -> Result<Startup, FrameError> {
    let mut params = Vec::new();
    loop {
        let key =
            take_cstr(&mut body).ok_or(FrameError::BadStartup("unterminated parameter name"))?;
        if key.is_empty() {
            break;
        }
        let value =
            take_cstr(&mut body).ok_or(FrameError::BadStartup("unterminated parameter value"))?;
        if params.iter().any(|(k, _)| *k == key) {
            return Err(FrameError::BadStartup("duplicate startup parameter"));
        }
        params.push((key, value));
    }
    if !body.is_empty() {
        return Err(FrameError::BadStartup("bytes after the parameter list"));
    }
    Ok(Startup { params, minor: 0 })
}

fn take_cstr(body: &mut &[u8]) -> Option<String> {
    let end = body.iter().position(|b| *b == 0)?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    *body = &body[end + 1..];
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message's size is known from its header: the buffer takes that much room once,
    /// not twice as much by doubling while it fills.
    #[test]
    fn room_for_a_large_message_is_reserved_to_its_size() {
        // A session's usual read buffer.
        const CAPACITY: usize = 64 * 1024;
        let size = 10 * 1024 * 1024 + 12_345;
        let header = |declared: i32| {
            let mut buf = BytesMut::with_capacity(CAPACITY);
            buf.extend_from_slice(b"B");
            buf.extend_from_slice(&declared.to_be_bytes());
            buf.extend_from_slice(&[0u8; 1000]);
            buf
        };
        let mut buf = header(i32::try_from(size - 1).expect("fits"));
        reserve_rest_of_frame(&mut buf, 64 * 1024 * 1024);
        assert!(buf.capacity() >= size, "room for the whole message");
        assert!(
            buf.capacity() < size + CAPACITY,
            "no more than it needs: {}",
            buf.capacity()
        );
        // Over the limit (refused when inspected), a lying length, or a message that fits:
        // the buffer stays as it was.
        for (declared, limit) in [
            (i32::try_from(size - 1).expect("fits"), size - 1),
            (-5, size),
            (100, size),
        ] {
            let mut buf = header(declared);
            reserve_rest_of_frame(&mut buf, limit);
            assert_eq!(buf.capacity(), CAPACITY, "declared {declared}");
        }
        let mut short = BytesMut::from(&b"B\0\0"[..]);
        reserve_rest_of_frame(&mut short, size);
        assert_eq!(short.len(), 3);
    }

    fn startup_bytes(code: i32, rest: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&((8 + rest.len()) as i32).to_be_bytes());
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn frames_by_declared_length() {
        let check = |bytes: &[u8], limit: usize, expected: Result<Option<usize>, FrameError>| {
            let mut buf = BytesMut::from(bytes);
            let got = split_frame(&mut buf, limit).map(|f| f.map(|f| f.len()));
            assert_eq!(got, expected, "input {bytes:?}");
        };
        check(b"Q\0\0\0\x05x", 100, Ok(Some(6)));
        check(b"Q\0\0\0\x05", 100, Ok(None));
        check(b"Q\0\0", 100, Ok(None));
        check(b"Q\0\0\0\x03", 100, Err(FrameError::BadLength(3)));
        check(b"Q\xff\xff\xff\xff", 100, Err(FrameError::BadLength(-1)));
        check(
            b"Q\0\0\x10\0",
            100,
            Err(FrameError::TooLarge {
                size: 4097,
                limit: 100,
            }),
        );
    }

    #[test]
    fn startup_packets() {
        let mut ssl = startup_bytes(codes::SSL_REQUEST, b"");
        assert_eq!(parse_startup(&mut ssl), Ok(Some(StartupPacket::SslRequest)));
        let mut cancel = startup_bytes(codes::CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(
            parse_startup(&mut cancel),
            Ok(Some(StartupPacket::Cancel { pid: 7, secret: 9 }))
        );
        let mut start = startup_bytes(codes::PROTOCOL_3_0, b"user\0bob\0database\0db\0\0");
        let Ok(Some(StartupPacket::Startup(s))) = parse_startup(&mut start) else {
            panic!("not a startup packet")
        };
        assert_eq!(s.get("user"), Some("bob"));
        assert_eq!(s.get("database"), Some("db"));
        let mut dup = startup_bytes(codes::PROTOCOL_3_0, b"user\0a\0user\0b\0\0");
        assert!(parse_startup(&mut dup).is_err());
        let mut unterminated = startup_bytes(codes::PROTOCOL_3_0, b"user\0bob");
        assert!(parse_startup(&mut unterminated).is_err());
        let mut huge = BytesMut::from(&[0u8, 1, 0, 0][..]);
        assert!(matches!(
            parse_startup(&mut huge),
            Err(FrameError::TooLarge { .. })
        ));
        let mut short = BytesMut::from(&[0u8, 0, 0, 4][..]);
        assert_eq!(parse_startup(&mut short), Err(FrameError::BadLength(4)));
    }
}
