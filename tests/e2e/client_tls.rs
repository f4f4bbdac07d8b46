//! Large results to a client over TLS: every byte reaches it, the tail of each write
//! included. A TLS stream accepts a write into its session buffer and sends what the socket
//! will take; with a slow reader the rest waits in the buffer until a flush or the next
//! write, and after the last write of a result there is no next one.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use lockbox::wire::{BackendEvent, BackendScanner};

use crate::harness::{query, tls_login, Env, Options};

/// Reads until ReadyForQuery, `chunk` bytes at a time with a pause between reads (a slow
/// client keeps the proxy's socket full); returns the DataRows counted. Panics if the
/// stream stalls.
async fn read_result<S: AsyncReadExt + Unpin>(
    stream: &mut S,
    chunk: usize,
    pause: Duration,
) -> usize {
    let mut scanner = BackendScanner::counting_rows(true);
    let mut rows = 0;
    let mut buf = vec![0u8; chunk];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the result stalled: its tail never reached the client")
            .expect("read");
        assert!(n > 0, "the proxy closed the connection");
        let mut events = Vec::new();
        scanner.feed(&buf[..n], &mut events);
        for event in events {
            match event {
                BackendEvent::DataRow => rows += 1,
                BackendEvent::Ready(_) => return rows,
                BackendEvent::Error { .. } => panic!("error: {event:?}"),
                _ => {}
            }
        }
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_result_to_a_slow_tls_client_arrives_whole() {
    let env = Env::with(
        "client_tls_slow",
        Options {
            plaintext: false,
            ..Default::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut tls = tls_login(&env, "eve", &token).await;
    read_result(&mut tls, 64 * 1024, Duration::ZERO).await;

    let rows = 20_000;
    tls.write_all(&query(&format!(
        "SELECT repeat('x', 1000) FROM generate_series(1, {rows})"
    )))
    .await
    .expect("query");
    tls.flush().await.expect("flush");
    let data_rows = read_result(&mut tls, 16 * 1024, Duration::from_millis(1)).await;
    assert_eq!(data_rows, rows);
}

/// A TLS handshake straight away, without an SSLRequest (`sslnegotiation=direct`), offering
/// `alpn` (none when empty).
async fn direct_tls(
    env: &Env,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", env.proxy_port()))
        .await
        .expect("connect");
    let pinned = lockbox::tls::client_config_pinned(&env.deployment.cert_pem).expect("config");
    let mut config = (*pinned).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake")
}

/// libpq's `sslnegotiation=direct` (PostgreSQL 17+) starts with its TLS handshake, naming
/// the protocol `postgresql` by ALPN, and the session goes on as after an SSLRequest; a
/// direct handshake that names no protocol is refused as PostgreSQL refuses it (before, every
/// direct connection got 08P01 for an impossible startup length).
#[tokio::test(flavor = "multi_thread")]
async fn a_direct_tls_connection_naming_postgresql_logs_in() {
    let env = Env::start("direct_tls").await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let mut tls = direct_tls(&env, &[b"postgresql"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    tls.write_all(&crate::harness::startup_packet(&[
        ("user", "eve"),
        ("database", &env.db),
    ]))
    .await
    .expect("startup");
    tls.write_all(&crate::harness::message(
        b'p',
        &[token.as_bytes(), b"\0"].concat(),
    ))
    .await
    .expect("password");
    tls.flush().await.expect("flush");
    let rows = read_result(&mut tls, 4096, Duration::ZERO).await;
    assert_eq!(rows, 0, "logged in");
    tls.write_all(&query("SELECT 41 + 1")).await.expect("query");
    tls.flush().await.expect("flush");
    let rows = read_result(&mut tls, 4096, Duration::ZERO).await;
    assert_eq!(rows, 1);

    let mut unnamed = direct_tls(&env, &[]).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), unnamed.read_to_end(&mut answer))
        .await
        .expect("closed in time");
    let errors = crate::harness::errors_in(&answer);
    assert_eq!(errors.len(), 1, "{answer:?}");
    assert_eq!(errors[0].0, "08P01");
    assert!(errors[0].1.contains("ALPN"), "{}", errors[0].1);
}
