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
