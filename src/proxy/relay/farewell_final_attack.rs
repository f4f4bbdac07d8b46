//! Attack review of c391f98 (a farewell without words for a client in the middle of a
//! message) and a7cc473 (farewell passes), at the socket level. These held: each pins a
//! property the changes rely on.

use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use super::buffers::HOLD_LIMIT;
use super::farewell::Farewell;
use super::{End, Grant, Relay};
use crate::audit::{AuditLog, SessionFields};
use crate::proxy::registry::{Control, DropReason};
use crate::proxy::stream::{AsyncStream, BoxStream};
use crate::proxy::test_tls::tls_configs;

/// Counts the bytes the relay's writes were told were taken (plaintext, above TLS).
struct Counting<S> {
    inner: S,
    taken: Arc<AtomicUsize>,
}

impl<S: AsyncStream> AsyncStream for Counting<S> {
    fn move_here(&mut self) -> std::io::Result<()> {
        self.inner.move_here()
    }
    fn peer_spoke(&self) -> bool {
        self.inner.peer_spoke()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.taken.fetch_add(*n, Ordering::SeqCst);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.taken.fetch_add(*n, Ordering::SeqCst);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A RowDescription, then one DataRow of `payload` bytes (far over the hold limit).
fn script(payload: usize) -> Vec<u8> {
    let mut desc = Vec::new();
    desc.extend_from_slice(&1i16.to_be_bytes());
    desc.extend_from_slice(b"x\0");
    desc.extend_from_slice(&0i32.to_be_bytes());
    desc.extend_from_slice(&0i16.to_be_bytes());
    desc.extend_from_slice(&25i32.to_be_bytes());
    desc.extend_from_slice(&(-1i16).to_be_bytes());
    desc.extend_from_slice(&(-1i32).to_be_bytes());
    desc.extend_from_slice(&0i16.to_be_bytes());
    let mut out = msg(b'T', &desc);
    let mut body = Vec::with_capacity(payload + 6);
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&(payload as i32).to_be_bytes());
    body.extend((0..payload).map(|j| (j.wrapping_mul(7) ^ (j >> 8)) as u8));
    out.extend_from_slice(&msg(b'D', &body));
    out
}

/// HELD (c391f98's claim). Over TLS, a revoke while a DataRow too large to hold back is
/// streaming to a slow reader (its socket full, so the relay's last writes wait in the TLS
/// stream): the client gets every byte the relay's writes were told were taken, nothing
/// after them (no FATAL glued into the row), then a clean TLS close (close_notify, not a
/// bare EOF).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_tls_revoke_inside_a_streaming_row_flushes_every_taken_byte_then_close_notify() {
    let payload = 6 << 20;
    let bytes = Arc::new(script(payload));
    let (acceptor, connector) = tls_configs();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8192).unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(socket.connect(addr), listener.accept());
    let (relay_tcp, _) = accepted.unwrap();
    let client_tcp = connected.unwrap();
    let fd = relay_tcp.as_raw_fd();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let (relay_tls, client_tls) = tokio::join!(
        acceptor.accept(relay_tcp),
        connector.connect(name, client_tcp)
    );
    let taken = Arc::new(AtomicUsize::new(0));
    let relay_side: BoxStream = Box::new(Counting {
        inner: relay_tls.unwrap(),
        taken: taken.clone(),
    });
    let mut client = client_tls.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (audit, _syncer) = AuditLog::open(&dir.path().join("audit.jsonl"), None).unwrap();
    let session = Arc::new(SessionFields::new(
        "fin".into(),
        "req-fin".into(),
        "T-0".into(),
        "fin".into(),
        "fin".into(),
        "127.0.0.1:1".into(),
        false,
    ));
    let ends_at = chrono::Utc::now() + chrono::Duration::hours(1);
    let grant = Grant::plain_read(ends_at);
    let (up_relay, mut up_server) = tokio::io::duplex(64 * 1024);
    let (kill_tx, kill_rx) = watch::channel(Control::Run);
    let relay = Relay::new(
        relay_side,
        Box::new(up_relay),
        BytesMut::new(),
        session,
        audit,
        1 << 20,
        kill_rx,
        super::monotonic_deadline(ends_at),
        grant,
    )
    .with_client_fd(fd);
    let relay = tokio::spawn(relay.run());
    let server_bytes = bytes.clone();
    let server = tokio::spawn(async move {
        let mut q = [0u8; 1024];
        let _ = up_server.read(&mut q).await;
        for chunk in server_bytes.chunks(32 * 1024) {
            if up_server.write_all(chunk).await.is_err() {
                return;
            }
        }
        let mut sink = [0u8; 1024];
        while let Ok(n) = up_server.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    });
    client.write_all(&msg(b'Q', b"select x\0")).await.unwrap();
    client.flush().await.unwrap();

    // Read slowly until the relay has been told 1 MB was taken, then revoke.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut revoked = false;
    let clean = loop {
        if !revoked && taken.load(Ordering::SeqCst) > (1 << 20) {
            revoked = true;
            let _ = kill_tx.send(Control::Drop(DropReason::Revoked));
        }
        match tokio::time::timeout(Duration::from_secs(20), client.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => {
                eprintln!("client read ended with {e}");
                break false;
            }
            Err(_) => panic!("the client waited 20 s for more; got {} bytes", got.len()),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let end = tokio::time::timeout(Duration::from_secs(35), relay)
        .await
        .expect("the relay and its farewell end")
        .unwrap();
    server.abort();
    assert!(matches!(end, End::Dropped(DropReason::Revoked)), "{end:?}");
    let taken = taken.load(Ordering::SeqCst);
    eprintln!(
        "client got {} bytes, the relay's writes took {taken}",
        got.len()
    );
    assert!(
        got.len() <= bytes.len() && got[..] == bytes[..got.len()],
        "a prefix of the script"
    );
    let row_start = bytes.len() - (payload + 11);
    assert!(
        got.len() > row_start + HOLD_LIMIT && got.len() < bytes.len(),
        "ends inside the streaming row, with nothing after it"
    );
    assert_eq!(
        got.len(),
        taken,
        "every byte the TLS stream took reaches the client"
    );
    assert!(clean, "the TLS stream ends with close_notify");
}

/// A client stream whose writes panic (a bug anywhere under the farewell).
struct Panicking;

impl AsyncStream for Panicking {
    fn move_here(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn peer_spoke(&self) -> bool {
        false
    }
}

impl AsyncRead for Panicking {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for Panicking {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        panic!("a write under the farewell panics");
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn limits() -> crate::proxy::gate::Limits {
    crate::proxy::gate::Limits {
        max_connections: 1000,
        failed_login_limit: 10,
        failed_login_window: Duration::from_secs(60),
    }
}

/// HELD. A farewell pass is given back when its aftermath task panics, or is aborted (the
/// JoinSet dropped at the end of the shutdown grace): passes do not leak, so later
/// farewells are not all made to hurry.
#[tokio::test]
async fn held_a_pass_comes_back_when_the_aftermath_panics_or_is_aborted() {
    use crate::proxy::aftermath::Aftermath;
    use crate::proxy::gate::take_slot;
    let registry = Arc::new(crate::proxy::Registry::default());
    let slot = take_slot(&registry, &limits()).expect("slot");
    let after = Aftermath::new(
        None,
        None,
        Some(Farewell {
            client: Box::new(Panicking),
            // Patient (it has a socket to watch), so it takes a pass; never looked at, as
            // the stream panics first.
            client_fd: Some(-1),
            patient: true,
            words: b"the FATAL".to_vec(),
            provoked: false,
            engineer: "eve".to_owned(),
        }),
    )
    .into_work()
    .expect("work")
    .releasing(slot, 2);
    assert_eq!(registry.gate.farewells(), 1);
    let joined = tokio::spawn(after.run()).await;
    assert!(joined.expect_err("the task panicked").is_panic());
    assert_eq!(registry.gate.farewells(), 0, "a panic gives the pass back");

    // Aborted, as the shutdown's JoinSet is dropped: a client that reads nothing, with a
    // socket whose queue is full, keeps a patient farewell waiting.
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (proxy, _) = listener.accept().await.unwrap();
    let chunk = vec![b'r'; 64 * 1024];
    while proxy.try_write(&chunk).is_ok() {}
    let fd = proxy.as_raw_fd();
    let mut set = tokio::task::JoinSet::new();
    let slot = take_slot(&registry, &limits()).expect("slot");
    let after = Aftermath::new(
        None,
        None,
        Some(Farewell {
            client: Box::new(proxy),
            client_fd: Some(fd),
            patient: true,
            words: b"the FATAL".to_vec(),
            provoked: false,
            engineer: "eve".to_owned(),
        }),
    )
    .into_work()
    .expect("work")
    .releasing(slot, 2);
    assert_eq!(after.farewell_is_patient(), Some(true));
    set.spawn(after.run());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(registry.gate.farewells(), 1);
    drop(set);
    for _ in 0..50 {
        if registry.gate.farewells() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(registry.gate.farewells(), 0, "an abort gives the pass back");
    assert_eq!(registry.gate.open(), 0, "and no slot is held");
}

/// HELD. Passes taken and given back from many threads at once: never more than `max` at a
/// time, never below zero (no wrap), zero at the end.
#[test]
fn held_passes_stay_within_bounds_under_concurrency() {
    use crate::proxy::gate::take_slot;
    let registry = Arc::new(crate::proxy::Registry::default());
    let max = 3;
    let seen_max = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let registry = registry.clone();
            let seen_max = seen_max.clone();
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    let slot = take_slot(&registry, &limits()).expect("slot");
                    let pass = slot.into_farewell_pass(max, None);
                    let now = registry.gate.farewells();
                    assert!(now <= max, "{now} passes");
                    seen_max.fetch_max(now, Ordering::SeqCst);
                    drop(pass);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(registry.gate.farewells(), 0);
    assert_eq!(registry.gate.open(), 0);
    assert!(seen_max.load(Ordering::SeqCst) >= 1);
}
