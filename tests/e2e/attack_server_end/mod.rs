//! Attack review of bd77e4a: a session the server ends (its FATAL relayed, then upstream
//! EOF) now gets a farewell without words, so over TLS the client reads the FATAL and then
//! a close_notify, and the farewell (with a pass while it is patient) drains the client.
//!
//! Each test checks the stream's shape: every message whole, the last one a FATAL
//! ErrorResponse, nothing after it, and a clean end (TLS: close_notify, read as EOF by
//! rustls; plain: EOF, no reset).

use std::time::Duration;

use lockbox::policy::AccessLevel;
use lockbox::sandbox::PgSandbox;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::harness::{message, query, startup_packet, Env, Options};

// ---------------------------------------------------------------------------------------
// Clients

fn tls_options() -> Options {
    Options {
        plaintext: false,
        ..Default::default()
    }
}

async fn tcp(env: &Env, rcvbuf: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("rcvbuf");
    }
    socket
        .connect(([127, 0, 0, 1], env.proxy_port()).into())
        .await
        .expect("connect")
}

async fn login<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, env: &Env, user: &str, token: &str) {
    s.write_all(&startup_packet(&[("user", user), ("database", &env.db)]))
        .await
        .expect("startup");
    s.write_all(&message(b'p', &[token.as_bytes(), b"\0"].concat()))
        .await
        .expect("password");
    s.flush().await.expect("flush");
    read_until_ready(s).await;
}

/// A TLS session (receive buffer `rcvbuf`), logged in, after its first ReadyForQuery.
async fn tls_session(
    env: &Env,
    user: &str,
    token: &str,
    rcvbuf: Option<u32>,
) -> TlsStream<TcpStream> {
    let mut tls = crate::harness::tls_over(env, tcp(env, rcvbuf).await).await;
    login(&mut tls, env, user, token).await;
    tls
}

async fn plain_session(env: &Env, user: &str, token: &str, rcvbuf: Option<u32>) -> TcpStream {
    let mut tcp = tcp(env, rcvbuf).await;
    login(&mut tcp, env, user, token).await;
    tcp
}

async fn read_until_ready<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    read_until(s, |m| m.iter().any(|(t, _)| *t == b'Z')).await
}

async fn read_until<S: AsyncRead + Unpin>(
    s: &mut S,
    done: impl Fn(&[(u8, Vec<u8>)]) -> bool,
) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if done(&shape(&got).messages) {
            return got;
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("the expected messages in time")
            .expect("read");
        assert!(n > 0, "closed early: {:?}", errors(&got));
        got.extend_from_slice(&chunk[..n]);
    }
}

/// How a read to the end ended.
#[derive(Debug, PartialEq)]
enum Close {
    /// EOF (over TLS: after a close_notify).
    Clean,
    /// An error: over TLS "unexpected EOF" is a close without close_notify.
    Error(String),
    /// Still open at the limit.
    Open,
}

/// Reads `chunk` bytes every `pause` until the end (bounded by `limit`).
async fn read_to_end_slowly<S: AsyncRead + Unpin>(
    s: &mut S,
    chunk: usize,
    pause: Duration,
    limit: Duration,
) -> (Vec<u8>, Close) {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; chunk];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (got, Close::Open),
            Ok(Err(e)) => return (got, Close::Error(format!("{:?}: {e}", e.kind()))),
            Ok(Ok(0)) => return (got, Close::Clean),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The stream's shape

struct Shape {
    messages: Vec<(u8, Vec<u8>)>,
    /// Bytes of a last message that is not whole.
    torn: usize,
}

fn shape(bytes: &[u8]) -> Shape {
    let mut messages = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = i32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        if at + 1 + len > bytes.len() {
            break;
        }
        messages.push((bytes[at], bytes[at + 5..at + 1 + len].to_vec()));
        at += 1 + len;
    }
    Shape {
        messages,
        torn: bytes.len() - at,
    }
}

fn field(body: &[u8], code: u8) -> String {
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&code))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

/// (severity, sqlstate, message) of each ErrorResponse.
fn errors(bytes: &[u8]) -> Vec<(String, String, String)> {
    shape(bytes)
        .messages
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| (field(b, b'V'), field(b, b'C'), field(b, b'M')))
        .collect()
}

/// Asserts the stream ended as PostgreSQL ends it: whole messages, one FATAL, last, then a
/// clean close. Returns the FATAL's SQLSTATE.
fn assert_ends_with_fatal_then_clean_close(what: &str, got: &[u8], close: &Close) -> String {
    let s = shape(got);
    let last = s
        .messages
        .last()
        .map(|(t, b)| (char::from(*t), field(b, b'V'), field(b, b'C')));
    eprintln!(
        "{what}: {} bytes, {} messages, torn {}, last {last:?}, close {close:?}, errors {:?}",
        got.len(),
        s.messages.len(),
        s.torn,
        errors(got)
    );
    assert_eq!(s.torn, 0, "{what}: the stream ends inside a message");
    let fatals: Vec<_> = errors(got).into_iter().filter(|e| e.0 == "FATAL").collect();
    assert_eq!(fatals.len(), 1, "{what}: {fatals:?}");
    let (tag, body) = s.messages.last().expect("messages");
    assert_eq!(*tag, b'E', "{what}: the last message is not the FATAL");
    assert_eq!(field(body, b'V'), "FATAL", "{what}");
    assert_eq!(close, &Close::Clean, "{what}: not a clean close");
    field(body, b'C')
}

fn terminate_backends(env: &Env, role: &str) -> String {
    env.superuser_sql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{}' AND usename = '{role}'",
        env.db
    ))
}

fn running(pg: &PgSandbox, db: &str, like: &str) -> i64 {
    pg.psql(
        db,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{like}%' \
             AND pid <> pg_backend_pid() AND state = 'active'"
        ),
    )
    .map(|n| n.trim().parse().unwrap_or(0))
    .unwrap_or(0)
}

async fn wait_running(pg: &PgSandbox, db: &str, like: &str) {
    for _ in 0..200 {
        if running(pg, db, like) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{like} never ran");
}

// ---------------------------------------------------------------------------------------
// 1. Every server-ended session over TLS: FATAL, then close_notify

mod database;
mod passes;
mod streams;
