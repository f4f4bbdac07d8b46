//! Messages the proxy originates itself. pgwire's message types do the encoding; the
//! proxy never re-encodes what it forwards.

use bytes::BytesMut;
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, SecretKey};
use pgwire::messages::Message;

/// Severity of an ErrorResponse: `Error` keeps the session, `Fatal` ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Encoding our own small messages cannot fail short of a bug; a failure leaves the
/// buffer as it was so the caller simply sends less.
fn encode(message: &impl Message, out: &mut BytesMut) {
    if let Err(e) = message.encode(out) {
        tracing::error!(error = %e, "failed to encode a proxy-originated message");
    }
}

pub fn error_response(out: &mut BytesMut, severity: Severity, sqlstate: &str, message: &str) {
    let fields = vec![
        (b'S', severity.as_str().to_owned()),
        (b'V', severity.as_str().to_owned()),
        (b'C', sqlstate.to_owned()),
        (b'M', message.to_owned()),
    ];
    encode(&ErrorResponse::new(fields), out);
}

/// NegotiateProtocolVersion: the proxy speaks protocol 3.0 and none of the `unrecognized`
/// protocol options (an e2e test compares it with PostgreSQL's own).
pub fn negotiate_protocol_version(out: &mut BytesMut, unrecognized: &[&str]) {
    let body_len: usize = 4 + 4 + unrecognized.iter().map(|o| o.len() + 1).sum::<usize>();
    out.reserve(1 + 4 + body_len);
    out.extend_from_slice(b"v");
    out.extend_from_slice(&((4 + body_len) as i32).to_be_bytes());
    // The whole version, 3.0, as PostgreSQL sends it (its manual says "minor version").
    out.extend_from_slice(&super::codes::PROTOCOL_3_0.to_be_bytes());
    out.extend_from_slice(&(unrecognized.len() as i32).to_be_bytes());
    for option in unrecognized {
        out.extend_from_slice(option.as_bytes());
        out.extend_from_slice(b"\0");
    }
}

pub fn authentication_cleartext(out: &mut BytesMut) {
    encode(&Authentication::CleartextPassword, out);
}

pub fn authentication_ok(out: &mut BytesMut) {
    encode(&Authentication::Ok, out);
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    encode(&BackendKeyData::new(pid, SecretKey::I32(secret)), out);
}

/// `status` is the transaction status byte of the last ReadyForQuery seen upstream.
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status), out);
}

/// A CancelRequest packet for an upstream backend.
pub fn cancel_request(pid: i32, secret: i32) -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[0..4].copy_from_slice(&16i32.to_be_bytes());
    packet[4..8].copy_from_slice(&super::codes::CANCEL_REQUEST.to_be_bytes());
    packet[8..12].copy_from_slice(&pid.to_be_bytes());
    packet[12..16].copy_from_slice(&secret.to_be_bytes());
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_carries_severity_code_and_message() {
        let mut out = BytesMut::new();
        error_response(&mut out, Severity::Fatal, "28P01", "token expired");
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let body = String::from_utf8_lossy(&out[5..]);
        assert!(body.contains("SFATAL\0"));
        assert!(body.contains("C28P01\0"));
        assert!(body.contains("Mtoken expired\0"));
    }
}
