//! A connection moved to another runtime's reactor works there once the runtime that
//! opened it is gone: nothing of it stayed behind.

use std::net::TcpListener;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use super::*;
use crate::proxy::test_tls::tls_configs;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Both ends of a loopback TCP connection, registered on `opener`.
fn tcp_pair(opener: &Runtime) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    opener.block_on(async {
        let listener = tokio::net::TcpListener::from_std({
            listener.set_nonblocking(true).unwrap();
            listener
        })
        .unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    })
}

/// Opens a connection's two ends on one runtime, moves both to another, stops the first,
/// and has them talk both ways on the second.
fn talks_after_its_opener_stopped(
    open: impl FnOnce(&Runtime) -> (BoxStream, BoxStream),
    move_them: bool,
) -> std::io::Result<Vec<u8>> {
    let opener = runtime();
    let (mut a, mut b) = open(&opener);
    let user = runtime();
    user.block_on(async {
        if move_them {
            a.move_here()?;
            b.move_here()?;
        }
        Ok::<_, std::io::Error>(())
    })?;
    opener.shutdown_background();
    user.block_on(async {
        a.write_all(b"ping").await?;
        a.flush().await?;
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await?;
        b.write_all(b"pong").await?;
        b.flush().await?;
        let mut back = [0u8; 4];
        a.read_exact(&mut back).await?;
        Ok([got, back].concat())
    })
}

fn plain(opener: &Runtime) -> (BoxStream, BoxStream) {
    let (a, b) = tcp_pair(opener);
    (Box::new(a), Box::new(b))
}

fn tls(opener: &Runtime) -> (BoxStream, BoxStream) {
    let (a, b) = tcp_pair(opener);
    let (acceptor, connector) = tls_configs();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    opener.block_on(async {
        let (client, server) = tokio::join!(connector.connect(name, a), acceptor.accept(b));
        (
            Box::new(client.unwrap()) as BoxStream,
            Box::new(server.unwrap()) as BoxStream,
        )
    })
}

#[test]
fn a_tcp_connection_moved_here_talks_after_the_runtime_that_opened_it_stopped() {
    let got = talks_after_its_opener_stopped(plain, true).expect("moved connection works");
    assert_eq!(got, b"pingpong");
    // Unmoved, it is still its opener's, and that runtime is gone.
    assert!(talks_after_its_opener_stopped(plain, false).is_err());
}

#[test]
fn a_tls_connection_moved_here_talks_after_the_runtime_that_opened_it_stopped() {
    let got = talks_after_its_opener_stopped(tls, true).expect("moved connection works");
    assert_eq!(got, b"pingpong");
    assert!(talks_after_its_opener_stopped(tls, false).is_err());
}

/// Asks `spoke` until it says yes, for at most 10 s: loopback delivery is quick but not
/// part of the write's return.
fn comes_true(spoke: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !spoke() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

/// `peer_spoke` asks the kernel: it sees bytes and a close that the reactor the socket is
/// registered with has not handled (here, one that never runs again), and reads nothing.
fn peer_spoke_is_the_kernels_view(open: impl FnOnce(&Runtime) -> (BoxStream, BoxStream)) {
    let opener = runtime();
    let (mut a, mut b) = open(&opener);
    assert!(!a.peer_spoke(), "nothing sent yet");
    opener.block_on(async {
        b.write_all(b"x").await.unwrap();
        b.flush().await.unwrap();
    });
    assert!(comes_true(|| a.peer_spoke()), "bytes waiting");
    let mut got = [0u8; 1];
    opener.block_on(a.read_exact(&mut got)).unwrap();
    assert_eq!(&got, b"x", "the peek read nothing away");
    assert!(!a.peer_spoke(), "all read");
    drop(b);
    assert!(comes_true(|| a.peer_spoke()), "the peer closed");
}

#[test]
fn peer_spoke_sees_what_the_kernel_holds_on_a_tcp_connection() {
    peer_spoke_is_the_kernels_view(plain);
}

#[test]
fn peer_spoke_sees_what_the_kernel_holds_on_a_tls_connection() {
    peer_spoke_is_the_kernels_view(tls);
}
