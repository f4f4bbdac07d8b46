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

/// A second review lost every login with 150 ms round trips behind the same address as a
/// flood of silent sockets, shed as the source's oldest: a connection that has sent its
/// startup now outlasts any number of sockets that have said nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_login_behind_a_flood_from_its_own_address_keeps_its_place() {
    let env =
        crate::ops_limits::start_with_proxy_keys("preauth_same_source", "max_connections = 8")
            .await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let mut engineer = Raw::connect(env.proxy_port()).await;
    engineer
        .send(&startup_packet(&[("user", "eve"), ("database", &env.db)]))
        .await;
    // The proxy asks for the password once it has read the startup.
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
    // Ten silent sockets from the engineer's own address (its cap is two).
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(silent_from("127.0.0.1", env.proxy_port()).await);
    }
    // The proxy has taken in the whole flood (the tenth sheds the ninth, and the engineer's
    // login would have gone with the third), shedding the flood's own sockets.
    for socket in &mut flood[..9] {
        assert!(closed(socket).await, "a silent socket was kept");
    }
    let mut password = token.as_bytes().to_vec();
    password.push(0);
    engineer.send(&message(b'p', &password)).await;
    engineer.read_until_ready().await;
    let shed = metric(
        &env,
        "lockbox_unauthenticated_shed_total{why=\"source_cap\"}",
    )
    .await;
    assert!(shed >= 9.0, "{shed}");
}
