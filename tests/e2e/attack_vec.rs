//! The relay writes the held-back start of a message and the next read in vectored writes
//! (ea81914): against a real PostgreSQL, plain and TLS, a client with a small receive
//! buffer that reads slowly gets exactly the rows PostgreSQL sends (rows of every size,
//! many near the relay's 64 KiB hold limit, so that most reads end inside one); a row limit
//! forwards exactly the rows before it, and a revoke mid-result ends whole.

use std::time::Duration;

use lockbox::policy::{AccessLevel, NewRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{message, query, startup_packet, Env, Options};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Value sizes: small, medium, a DataRow just under/at/over 64 KiB, and larger.
fn sizes(seed: u64, rows: usize) -> Vec<usize> {
    let mut rng = Rng(seed | 1);
    (1..=rows)
        .map(|i| {
            // DataRow: tag, length, column count, then each value's length and bytes.
            let overhead = 1 + 4 + 2 + 4 + i.to_string().len() + 4;
            match rng.below(6) {
                0 => rng.below(30),
                1 => rng.below(5000),
                2 => 20_000 + rng.below(40_000),
                3 | 4 => (65_536 - overhead + rng.below(9)).saturating_sub(4),
                _ => 66_000 + rng.below(150_000),
            }
        })
        .collect()
}

fn sql(sizes: &[usize]) -> String {
    let list: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
    format!(
        "SELECT o, repeat(chr(65 + (o % 26)::int), s) FROM unnest(ARRAY[{}]::int[]) WITH ORDINALITY AS t(s, o)",
        list.join(",")
    )
}

/// The DataRows PostgreSQL sends for `sql(sizes)` (text format).
fn expected_rows(sizes: &[usize]) -> Vec<Vec<u8>> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let o = (i + 1).to_string();
            let value = vec![b'A' + ((i + 1) % 26) as u8; *size];
            let mut body = 2i16.to_be_bytes().to_vec();
            body.extend_from_slice(&(o.len() as i32).to_be_bytes());
            body.extend_from_slice(o.as_bytes());
            body.extend_from_slice(&(value.len() as i32).to_be_bytes());
            body.extend_from_slice(&value);
            message(b'D', &body)
        })
        .collect()
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A TCP connection to the proxy with a small receive buffer.
async fn small_socket(env: &Env) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket
        .connect(([127, 0, 0, 1], env.proxy_port()).into())
        .await
        .expect("connect")
}

/// Logs in (TLS when the env serves it), up to the first ReadyForQuery.
async fn login(env: &Env, tls: bool, token: &str) -> Box<dyn Stream> {
    let tcp = small_socket(env).await;
    let mut stream: Box<dyn Stream> = if tls {
        Box::new(crate::harness::tls_over(env, tcp).await)
    } else {
        Box::new(tcp)
    };
    stream
        .write_all(&startup_packet(&[("user", "eve"), ("database", &env.db)]))
        .await
        .expect("startup");
    stream
        .write_all(&message(b'p', &[token.as_bytes(), b"\0"].concat()))
        .await
        .expect("password");
    stream.flush().await.expect("flush");
    let mut got = Vec::new();
    loop {
        let messages = whole(&got).0;
        if messages.iter().any(|m| m[0] == b'Z') {
            return stream;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("login answer")
            .expect("read");
        assert!(
            n > 0,
            "closed at login: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
}

/// The whole messages at the front of `bytes`, and how many bytes they take.
fn whole(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let (mut out, mut at) = (Vec::new(), 0);
    while let Some(header) = bytes.get(at..at + 5) {
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let Some(m) = bytes.get(at..at + 1 + len) else {
            break;
        };
        out.push(m);
        at += 1 + len;
    }
    (out, at)
}

/// Reads slowly (small reads, now and then a pause) until a ReadyForQuery or the close.
async fn read_slowly(stream: &mut Box<dyn Stream>, seed: u64) -> Vec<u8> {
    read_slowly_pausing(stream, seed, usize::MAX, std::future::ready(())).await
}

/// As `read_slowly`, but once `pause_at` bytes have come, runs `at_pause` (a revoke) before
/// reading on: what happens at the pause is tied to how far the result got, not to how
/// fast a loaded machine reads.
async fn read_slowly_pausing(
    stream: &mut Box<dyn Stream>,
    seed: u64,
    pause_at: usize,
    at_pause: impl std::future::Future<Output = ()>,
) -> Vec<u8> {
    let mut at_pause = Some(at_pause);
    let mut rng = Rng(seed | 1);
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut parsed = 0;
    loop {
        let want = match rng.below(3) {
            0 => 1 + rng.below(7),
            1 => 1 + rng.below(3000),
            _ => chunk.len(),
        };
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk[..want]))
            .await
            .expect("the result stalled");
        let n = read.unwrap_or(0);
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&chunk[..n]);
        if got.len() >= pause_at {
            if let Some(pause) = at_pause.take() {
                pause.await;
            }
        }
        let (messages, at) = whole(&got[parsed..]);
        if messages.iter().any(|m| m[0] == b'Z') {
            return got;
        }
        parsed += at;
        if rng.below(50) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Checks `got` is a RowDescription, then DataRows equal to the first of `expected`, then
/// `tail` (message types); returns how many rows came.
fn rows_then(got: &[u8], expected: &[Vec<u8>], tail: &[u8]) -> usize {
    let (messages, at) = whole(got);
    assert_eq!(at, got.len(), "a torn message at the end");
    assert_eq!(
        messages.first().map(|m| m[0]),
        Some(b'T'),
        "a RowDescription first"
    );
    let rows: Vec<&[u8]> = messages[1..]
        .iter()
        .copied()
        .take_while(|m| m[0] == b'D')
        .collect();
    for (i, row) in rows.iter().enumerate() {
        assert!(
            expected.get(i).is_some_and(|e| e.as_slice() == *row),
            "row {} differs from PostgreSQL's (len {} vs {:?})",
            i + 1,
            row.len(),
            expected.get(i).map(Vec::len)
        );
    }
    let rest: Vec<u8> = messages[1 + rows.len()..].iter().map(|m| m[0]).collect();
    assert_eq!(rest, tail, "after {} rows", rows.len());
    rows.len()
}

async fn env(name: &str, tls: bool) -> Env {
    Env::with(
        name,
        Options {
            plaintext: !tls,
            ..Options::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn vec_a_slow_small_buffered_client_gets_exactly_postgres_rows_plain_and_tls() {
    for tls in [false, true] {
        let env = env(
            if tls {
                "vec_rows_tls"
            } else {
                "vec_rows_plain"
            },
            tls,
        )
        .await;
        let (_, token) = env.approved_token("eve", "1h").await;
        for seed in [11u64, 12, 13] {
            let sizes = sizes(seed, 90);
            let mut stream = login(&env, tls, &token).await;
            stream.write_all(&query(&sql(&sizes))).await.expect("query");
            stream.flush().await.expect("flush");
            let got = read_slowly(&mut stream, seed).await;
            let n = rows_then(&got, &expected_rows(&sizes), b"CZ");
            assert_eq!(n, sizes.len(), "tls {tls} seed {seed}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vec_a_row_limit_forwards_exactly_the_rows_before_it_plain_and_tls() {
    for tls in [false, true] {
        let env = env(
            if tls {
                "vec_limit_tls"
            } else {
                "vec_limit_plain"
            },
            tls,
        )
        .await;
        for (seed, limit) in [(21u64, 1u64), (22, 17), (23, 40), (24, 63)] {
            let (_, token) = env
                .approved(
                    "eve",
                    NewRequest {
                        database: env.db.clone(),
                        ticket: "T-1".into(),
                        reason: "investigate".into(),
                        access: AccessLevel::Read,
                        duration: Some("1h".into()),
                        max_rows: Some(limit),
                        ..NewRequest::default()
                    },
                )
                .await;
            let sizes = sizes(seed, 80);
            let mut stream = login(&env, tls, &token).await;
            stream.write_all(&query(&sql(&sizes))).await.expect("query");
            stream.flush().await.expect("flush");
            let got = read_slowly(&mut stream, seed).await;
            let n = rows_then(&got, &expected_rows(&sizes), b"E");
            assert_eq!(n as u64, limit, "tls {tls} seed {seed}");
            assert!(
                String::from_utf8_lossy(&got).contains(&format!("more than {limit} rows")),
                "the row limit's FATAL"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vec_a_revoke_during_a_slowly_read_result_ends_whole_plain_and_tls() {
    for tls in [false, true] {
        let env = env(
            if tls {
                "vec_revoke_tls"
            } else {
                "vec_revoke_plain"
            },
            tls,
        )
        .await;
        // The revoke comes after 1, 4 and 9 MB of a ~20 MB result, wherever in a message
        // that is; the reader stops reading until the revoke has been answered.
        for (seed, revoke_after) in [(31u64, 1_000_000usize), (32, 4_000_000), (33, 9_000_000)] {
            let (id, token) = env.approved_token("eve", "1h").await;
            let sizes = sizes(seed, 400);
            let total: usize = expected_rows(&sizes).iter().map(Vec::len).sum();
            assert!(total > 2 * revoke_after, "the result outlasts the revoke");
            let mut stream = login(&env, tls, &token).await;
            stream.write_all(&query(&sql(&sizes))).await.expect("query");
            stream.flush().await.expect("flush");
            let revoke = async {
                env.client("carol")
                    .revoke(&id, "done")
                    .await
                    .expect("revoke");
            };
            let got = read_slowly_pausing(&mut stream, seed, revoke_after, revoke).await;
            let (_, at) = whole(&got);
            if at < got.len() {
                // Ended inside a row: only one too large to hold back streams, and then
                // the client cannot be told (no FATAL).
                let header = got
                    .get(at..at + 5)
                    .expect("ended inside a message's header");
                let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                assert!(
                    header[0] == b'D' && len as usize + 1 > 65_536,
                    "ended inside a {} message of {len} bytes (tls {tls} seed {seed})",
                    got[at] as char
                );
                let n = rows_then(&got[..at], &expected_rows(&sizes), b"");
                let torn = &got[at..];
                assert!(
                    expected_rows(&sizes)[n].starts_with(torn),
                    "the torn row is PostgreSQL's"
                );
                eprintln!("tls {tls} seed {seed}: {n} rows, then part of a {len}-byte row");
                continue;
            }
            let n = rows_then(&got, &expected_rows(&sizes), b"E");
            eprintln!("tls {tls} seed {seed}: {n} rows, then the FATAL");
            assert!(
                n < sizes.len(),
                "the revoke came after the result (tls {tls} seed {seed})"
            );
            assert!(
                String::from_utf8_lossy(&got).contains("was revoked"),
                "the revoke's FATAL"
            );
        }
    }
}

/// A revoke that beat the statement's first result (a loaded machine): the client got the
/// revoke's FATAL alone, whole, and nothing else.
fn revoked_before_the_result(got: &[u8]) -> bool {
    let (messages, at) = whole(got);
    let alone = messages.len() == 1 && messages[0][0] == b'E' && at == got.len();
    alone && String::from_utf8_lossy(got).contains("was revoked")
}

/// Reads `chunk` bytes every `every` until the close or a ReadyForQuery.
async fn read_steadily(stream: &mut Box<dyn Stream>, chunk: usize, every: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf))
            .await
            .expect("the result stalled");
        let n = read.unwrap_or(0);
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&buf[..n]);
        if whole(&got).0.iter().any(|m| m[0] == b'Z') {
            return got;
        }
        tokio::time::sleep(every).await;
    }
}

/// Megabytes of whole rows queued for a client that reads slowly but steadily: a revoke
/// still ends the result between two rows, and the client reads the FATAL after them,
/// however long the queued rows take to drain.
#[tokio::test(flavor = "multi_thread")]
async fn vec_a_revoke_with_megabytes_queued_for_a_steady_reader_ends_with_the_fatal() {
    for tls in [false, true] {
        let env = env(
            if tls {
                "vec_queued_tls"
            } else {
                "vec_queued_plain"
            },
            tls,
        )
        .await;
        let (id, token) = env.approved_token("eve", "1h").await;
        // 12 MB read at 1.6 MB/s take about 7 s, more than the socket buffers on the way
        // hold: the revoke, 300 ms in, lands mid-stream even when the API is slow to answer
        // (and the rows past it are never sent, so the test takes no longer for them).
        let sizes = vec![20_000; 600];
        let mut stream = login(&env, tls, &token).await;
        stream.write_all(&query(&sql(&sizes))).await.expect("query");
        stream.flush().await.expect("flush");
        let reader =
            async { read_steadily(&mut stream, 16 * 1024, Duration::from_millis(10)).await };
        let revoke = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            env.client("carol")
                .revoke(&id, "done")
                .await
                .expect("revoke");
        };
        let (got, ()) = tokio::join!(reader, revoke);
        if revoked_before_the_result(&got) {
            eprintln!("tls {tls}: revoked before the result began");
            continue;
        }
        let n = rows_then(&got, &expected_rows(&sizes), b"E");
        eprintln!("tls {tls}: {n} rows ({} bytes), then the FATAL", got.len());
        assert!(
            n < sizes.len(),
            "the revoke came after the result (tls {tls})"
        );
        assert!(
            String::from_utf8_lossy(&got).contains("was revoked"),
            "the revoke's FATAL (tls {tls})"
        );
    }
}
