//! Connections that have not sent a token: bounded in time, and a timeout is a failed
//! login of its source (audited while the source is under its limit).

use tokio::io::AsyncReadExt;

use crate::harness::{message, metric, startup_packet, Env, Raw};

#[tokio::test]
async fn a_silent_connection_is_closed_and_audited_as_a_failed_login() {
    let env = Env::start("preauth_silent").await;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", env.proxy_port()))
        .await
        .expect("tcp");
    let records = env
        .wait_for_audit("the silent connection's failed login", |records| {
            records.iter().any(|r| {
                r["event"] == "authentication_failed"
                    && r["reason"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("no token within"))
            })
        })
        .await;
    let failed = records
        .iter()
        .find(|r| r["event"] == "authentication_failed")
        .expect("the record");
    assert!(
        failed["client_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{failed}"
    );
    // The proxy closed the socket: the read ends instead of waiting.
    let mut byte = [0u8; 1];
    let read = silent.read(&mut byte).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// A silent socket from `ip` (a loopback address: every 127.0.0.0/8 address is one here).
async fn silent_from(ip: &str, port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{ip}:0").parse().expect("address"))
        .expect("bind");
    socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect")
}

/// Whether the proxy closed `socket` (bounded by the time an unauthenticated connection
/// has: the caller knows which it was).
async fn closed(socket: &mut tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut byte)).await;
    matches!(read, Ok(Ok(0) | Err(_)))
}

/// An attack review filled every slot with silent sockets from four addresses (each within
/// its quarter of `max_connections`) and locked every engineer out with 53300: a full proxy
/// now sheds a connection that has not logged in for a new one.
#[tokio::test(flavor = "multi_thread")]
async fn silent_sockets_from_a_few_sources_cannot_fill_the_proxy() {
    let env = crate::ops_limits::start_with_proxy_keys("preauth_full", "max_connections = 8").await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let mut flood = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        for _ in 0..2 {
            flood.push(silent_from(source, env.proxy_port()).await);
        }
    }
    // The kernel hands connections to the proxy in the order they were made: the flood's
    // first, so every slot is held when the engineer's comes.
    let (client, _connection) = env
        .connect("eve", &token)
        .await
        .expect("an engineer is admitted past a full proxy of silent sockets");
    client.simple_query("SELECT 1").await.expect("it runs");
    let (second, _c2) = env.connect("eve", &token).await.expect("and a second");
    second.simple_query("SELECT 1").await.expect("it runs too");
    // Operators see it happen.
    let shed = metric(
        &env,
        "lockbox_unauthenticated_shed_total{why=\"max_connections\"}",
    )
    .await;
    assert!(shed >= 2.0, "{shed}");
    drop((client, second, flood));
}

/// A socket from `ip` that sends an SSLRequest, reads the proxy's `S`, and stalls before its
/// TLS handshake.
async fn stalled_from(ip: &str, port: u16) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut socket = silent_from(ip, port).await;
    socket
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .expect("SSLRequest");
    let mut answer = [0u8; 1];
    socket.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"S");
    socket
}

/// Reviews broke two rules for whom a flood from an engineer's own address sheds: the
/// oldest first lost every slow login (accepted before the flood), the least advanced first
/// lost every new one (still silent) to sockets that sent an SSLRequest and stalled. The
/// connection longest without a step towards its token goes: a login under way outlasts the
/// stalled sockets either way.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_under_way_outlasts_sockets_that_stall_from_its_own_address() {
    let env =
        crate::ops_limits::start_with_proxy_keys("preauth_same_source", "max_connections = 40")
            .await;
    let port = env.proxy_port();
    let (_id, token) = env.approved_token("eve", "1h").await;
    let mut password = token.as_bytes().to_vec();
    password.push(0);
    // The engineer's connection is accepted first; its client is slow to go on.
    let mut engineer = Raw::connect(port).await;
    // Nine sockets of the same address step once and stall (its cap is ten).
    let mut stalled = Vec::new();
    for _ in 0..9 {
        stalled.push(stalled_from("127.0.0.1", port).await);
    }
    // The engineer's next step comes after theirs.
    engineer
        .send(&startup_packet(&[("user", "eve"), ("database", &env.db)]))
        .await;
    // AuthenticationCleartextPassword: 'R', length 8, code 3.
    let mut asked = [0u8; 9];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        engineer.stream.read_exact(&mut asked),
    )
    .await
    .expect("asked in time")
    .expect("read");
    assert_eq!(asked, [b'R', 0, 0, 0, 8, 0, 0, 0, 3], "a password request");
    // Nine more shed the nine that stalled before the engineer's step, not the engineer's
    // login, accepted before all of them.
    let mut later = Vec::new();
    for _ in 0..9 {
        later.push(stalled_from("127.0.0.1", port).await);
    }
    for socket in &mut stalled {
        assert!(closed(socket).await, "a stalled socket was kept");
    }
    engineer.send(&message(b'p', &password)).await;
    engineer.read_until_ready().await;

    // A login that comes after them, silent for now, is not the one shed either.
    let mut newcomer = Raw::connect(port).await;
    let _one_more = stalled_from("127.0.0.1", port).await;
    assert!(
        closed(&mut later[0]).await,
        "the longest stalled socket went"
    );
    newcomer
        .send(&startup_packet(&[("user", "eve"), ("database", &env.db)]))
        .await;
    newcomer.send(&message(b'p', &password)).await;
    newcomer.read_until_ready().await;
    let shed = metric(
        &env,
        "lockbox_unauthenticated_shed_total{why=\"source_cap\"}",
    )
    .await;
    assert!(shed >= 10.0, "{shed}");
}

/// A TLS client driven by hand over `tcp`, so a test can stop between handshake messages.
struct HandDrivenTls {
    tcp: tokio::net::TcpStream,
    tls: rustls::ClientConnection,
}

impl HandDrivenTls {
    async fn flush(&mut self) {
        use tokio::io::AsyncWriteExt;
        let mut out = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut out).expect("encode");
        }
        self.tcp.write_all(&out).await.expect("send");
    }

    /// Reads and processes records until `done` holds.
    async fn read_until(&mut self, done: impl Fn(&mut rustls::ClientConnection) -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done(&mut self.tls) {
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk))
                .await
                .expect("in time")
                .expect("read");
            assert!(n > 0, "the proxy closed the connection");
            self.tls.read_tls(&mut &chunk[..n]).expect("records");
            self.tls.process_new_packets().expect("TLS");
        }
    }
}

/// Between its SSLRequest and the end of its handshake a login waits two round trips for
/// the proxy, then sends its Finished: its ClientHello is a step of its own, so sockets that
/// stalled after it cannot shed it (a review shed 150 ms logins in that gap).
#[tokio::test(flavor = "multi_thread")]
async fn a_login_in_its_tls_handshake_outlasts_sockets_stalled_before_its_client_hello() {
    use std::io::{Read, Write};
    let env =
        crate::ops_limits::start_with_proxy_keys("preauth_hello", "max_connections = 40").await;
    let port = env.proxy_port();
    let (_id, token) = env.approved_token("eve", "1h").await;
    let mut tcp = Raw::connect(port).await.stream;
    {
        use tokio::io::AsyncWriteExt;
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .expect("SSLRequest");
    }
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"S");
    // Nine sockets of the same address step after the engineer's SSLRequest and stall.
    let mut stalled = Vec::new();
    for _ in 0..9 {
        stalled.push(stalled_from("127.0.0.1", port).await);
    }
    let config = lockbox::tls::client_config_pinned(&env.deployment.cert_pem).expect("config");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut engineer = HandDrivenTls {
        tcp,
        tls: rustls::ClientConnection::new(config, name).expect("client"),
    };
    // The ClientHello, and the proxy's answer to it; the Finished is held back.
    engineer.flush().await;
    engineer.read_until(|tls| tls.wants_write()).await;
    // Nine more shed the nine stalled before the ClientHello.
    let mut later = Vec::new();
    for _ in 0..9 {
        later.push(stalled_from("127.0.0.1", port).await);
    }
    for socket in &mut stalled {
        assert!(closed(socket).await, "a stalled socket was kept");
    }
    // The handshake ends and the login goes on.
    engineer.flush().await;
    let mut password = token.as_bytes().to_vec();
    password.push(0);
    let login = [
        startup_packet(&[("user", "eve"), ("database", &env.db)]),
        message(b'p', &password),
    ]
    .concat();
    engineer.tls.writer().write_all(&login).expect("login");
    engineer.flush().await;
    let plain = std::cell::RefCell::new(Vec::new());
    engineer
        .read_until(|tls| {
            let mut plain = plain.borrow_mut();
            let _ = tls.reader().read_to_end(&mut plain);
            // ReadyForQuery, idle: the login is done.
            plain.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I'])
        })
        .await;
}
