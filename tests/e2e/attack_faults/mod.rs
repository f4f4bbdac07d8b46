//! An independent review's attacks on the upstream-gone handling of the relay and on the
//! concurrent notification dispatcher: each test is a finding (or a promise checked).
//! `upstream`: the database crashing or ending a backend mid-protocol; `stalled`: the
//! database frozen; `notify`: receivers that hang, drip or repeat. The helpers below are
//! shared by the three.

mod notify;
mod stalled;
mod upstream;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockbox::policy::AccessLevel;
use lockbox::sandbox::PgSandbox;

use crate::harness::{
    create_roles, query, Env, Options, Raw, PROVISIONER_PASSWORD, PROVISIONER_ROLE,
};

/// A cluster of the test's own, for faults the shared one must not suffer. It stays
/// allocated for the test binary's life (`Options::cluster` takes a `'static`); the guard
/// resumes and stops it when the test ends, passed or failed.
fn own_cluster() -> (&'static PgSandbox, StopAtEnd) {
    let pg = PgSandbox::start().unwrap_or_else(|e| panic!("cannot start a test PostgreSQL: {e}"));
    create_roles(&pg);
    let pg: &'static PgSandbox = Box::leak(Box::new(pg));
    (pg, StopAtEnd(pg))
}

struct StopAtEnd(&'static PgSandbox);

impl Drop for StopAtEnd {
    fn drop(&mut self) {
        let _ = self.0.freeze(false);
        let _ = self.0.crash();
    }
}

/// The messages of a backend byte stream, each as (type, body); an error names the first
/// byte where the stream stops being whole messages.
fn frames(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 5) else {
            return Err(format!("a torn header at byte {at} of {}", bytes.len()));
        };
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let Ok(len) = usize::try_from(len) else {
            return Err(format!("a negative length at byte {at}"));
        };
        if len < 4 {
            return Err(format!("a length below 4 at byte {at}"));
        }
        let Some(body) = bytes.get(at + 5..at + 1 + len) else {
            return Err(format!(
                "a torn '{}' message at byte {at}: {} bytes declared, {} there",
                char::from(header[0]),
                len - 4,
                bytes.len() - at - 5
            ));
        };
        if !b"RSKZTDCEIsnNAGHWdc123tv".contains(&header[0]) {
            return Err(format!(
                "an unknown message type 0x{:02x} at byte {at} (a message spliced into another)",
                header[0]
            ));
        }
        out.push((header[0], body.to_vec()));
        at += 1 + len;
    }
    Ok(out)
}

/// The severity and SQLSTATE of an ErrorResponse body.
fn error_fields(body: &[u8]) -> (String, String, String) {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        let Some((&kind, value)) = field.split_first() else {
            continue;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'V' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (severity, code, message)
}

/// Asserts that `bytes` are whole messages ending with a FATAL of `code`; returns its text.
fn assert_ends_with_fatal(bytes: &[u8], code: &str) -> String {
    let messages = frames(bytes).unwrap_or_else(|e| {
        panic!(
            "the client got a broken stream ({e}); its last 64 bytes: {:?}",
            &bytes[bytes.len().saturating_sub(64)..]
        )
    });
    let Some((tag, body)) = messages.last() else {
        panic!("the client got nothing")
    };
    assert_eq!(
        char::from(*tag),
        'E',
        "the stream does not end with an ErrorResponse"
    );
    let (severity, got, message) = error_fields(body);
    assert_eq!(
        (severity.as_str(), got.as_str()),
        ("FATAL", code),
        "{message}"
    );
    message
}

/// Logs in raw, starts a result far larger than any buffer and reads `at_least` bytes of it.
async fn mid_result(env: &Env, token: &str, at_least: usize) -> (Raw, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut raw = Raw::login(env, "eve", token).await;
    let mut seen = raw.read_until_ready().await;
    // Rows of 1,011 bytes: the server's 8 KiB writes end inside a row almost every time.
    // The series is a column of a subquery, so rows stream from the first: in FROM, the
    // function's whole result would be stored first (100 M rows: seconds, and gigabytes of
    // temporary files, before any row).
    raw.send(&query(
        "SELECT repeat('x', 1000) FROM (SELECT generate_series(1, 100000000)) AS s",
    ))
    .await;
    let mut chunk = vec![0u8; 64 * 1024];
    while seen.len() < at_least {
        let n = tokio::time::timeout(Duration::from_secs(20), raw.stream.read(&mut chunk))
            .await
            .expect("rows arrive")
            .expect("read");
        assert!(n > 0, "closed before the rows");
        seen.extend_from_slice(&chunk[..n]);
    }
    (raw, seen)
}
