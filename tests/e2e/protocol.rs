//! Clients that misbehave get an ErrorResponse with a proper SQLSTATE and a clean close,
//! and everyone else keeps being served.

use crate::harness::{errors_in, message, startup_packet, Env, Raw};

fn ssl_request() -> Vec<u8> {
    let mut p = 8i32.to_be_bytes().to_vec();
    p.extend_from_slice(&80_877_103i32.to_be_bytes());
    p
}

/// The first ErrorResponse the proxy sends for `bytes`, after which it must close.
async fn error_for(env: &Env, bytes: &[u8]) -> (String, String) {
    let mut raw = Raw::connect(env.proxy_port()).await;
    raw.send(bytes).await;
    let reply = raw.read_to_close().await;
    errors_in(&reply)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no ErrorResponse in {reply:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_bad_lengths_get_08p01_and_others_keep_working() {
    let env = Env::start("proto_garbage").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");

    let check = |bytes: Vec<u8>, code: &'static str| (bytes, code);
    let cases = [
        check(vec![0, 0, 0, 3, 1, 2, 3], "08P01"),
        check(vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0], "08P01"),
        check(vec![0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0], "08P01"),
        check(
            {
                let mut p = 11i32.to_be_bytes().to_vec();
                p.extend_from_slice(&196_608i32.to_be_bytes());
                p.extend_from_slice(b"abc");
                p
            },
            "08P01",
        ),
        check(
            {
                let mut p = 8i32.to_be_bytes().to_vec();
                p.extend_from_slice(&0x0002_0000i32.to_be_bytes());
                p
            },
            "0A000",
        ),
    ];
    for (bytes, code) in cases {
        let (got, message) = error_for(&env, &bytes).await;
        assert_eq!(got, code, "{bytes:?}: {message}");
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("still served")
        .get(0);
    assert_eq!(count, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_after_ssl_request_close_the_connection() {
    let env = Env::start("proto_ssl_inject").await;
    let mut bytes = ssl_request();
    bytes.extend(startup_packet(&[("user", "eve"), ("database", &env.db)]));
    let mut raw = Raw::connect(env.proxy_port()).await;
    raw.send(&bytes).await;
    let reply = raw.read_to_close().await;
    assert_ne!(
        reply.first(),
        Some(&b'S'),
        "the proxy must not start TLS over injected bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_and_missing_startup_parameters_are_refused() {
    let env = Env::start("proto_params").await;
    let db = env.db.clone();
    let cases: [(&[(&str, &str)], &str); 8] = [
        (
            &[("user", "eve"), ("database", &db), ("role", "postgres")],
            "role",
        ),
        // PostgreSQL reads setting names in any case.
        (
            &[("user", "eve"), ("database", &db), ("Search_Path", "evil")],
            "search_path",
        ),
        (
            &[
                ("user", "eve"),
                ("database", &db),
                ("default_transaction_read_only", "off"),
            ],
            "default_transaction_read_only",
        ),
        (
            &[("user", "eve"), ("database", &db), ("search_path", "evil")],
            "search_path",
        ),
        (
            &[
                ("user", "eve"),
                ("database", &db),
                ("options", "-c role=postgres"),
            ],
            "options",
        ),
        (
            &[
                ("user", "eve"),
                ("database", &db),
                ("replication", "database"),
            ],
            "replication",
        ),
        (&[("user", "eve")], "no database"),
        (&[("database", &db)], "no user"),
    ];
    for (params, says) in cases {
        let (code, message) = error_for(&env, &startup_packet(params)).await;
        assert_eq!(code, "28000", "{message}");
        assert!(message.contains(says), "{says:?} not in {message:?}");
    }
}

/// libpq sends `PGTZ` and `PGDATESTYLE` as `timezone` and `datestyle`: PostgreSQL takes a
/// setting's name in any case, and so does the proxy's list of those it passes on.
#[tokio::test(flavor = "multi_thread")]
async fn settings_named_in_any_case_reach_the_server() {
    let env = Env::start("proto_param_case").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::connect(env.proxy_port()).await;
    raw.send(&startup_packet(&[
        ("user", "eve"),
        ("database", &env.db),
        ("timezone", "Asia/Tokyo"),
        ("DATESTYLE", "SQL, DMY"),
    ]))
    .await;
    let mut password = token.as_bytes().to_vec();
    password.push(0);
    raw.send(&message(b'p', &password)).await;
    let greeting = raw.read_until_ready().await;
    // The server's ParameterStatus messages name the settings as it holds them.
    for reported in [
        &b"TimeZone\0Asia/Tokyo\0"[..],
        &b"DateStyle\0SQL, DMY\0"[..],
    ] {
        assert!(
            greeting.windows(reported.len()).any(|w| w == reported),
            "{} not in the greeting: {}",
            String::from_utf8_lossy(reported),
            String::from_utf8_lossy(&greeting)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_before_the_password_is_a_protocol_violation() {
    let env = Env::start("proto_early_query").await;
    let mut raw = Raw::connect(env.proxy_port()).await;
    raw.send(&startup_packet(&[("user", "eve"), ("database", &env.db)]))
        .await;
    raw.send(&message(b'Q', b"SELECT 1\0")).await;
    let reply = raw.read_to_close().await;
    let errors = errors_in(&reply);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "08P01");
    assert!(errors[0].1.contains("password"), "{}", errors[0].1);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_message_order_after_login_is_a_protocol_violation() {
    let env = Env::start("proto_order").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    // A second password message after AuthenticationOk is out of order.
    raw.send(&message(b'p', b"again\0")).await;
    let reply = raw.read_to_close().await;
    let errors = errors_in(&reply);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "08P01");
    env.wait_for_audit("the disconnect", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["event"] == "disconnected")
    })
    .await;
}

/// A Flush with a body is an error to the server, which then skips everything up to the
/// next Sync, query strings included: no reply of the tracker's model would come, and every
/// later reply would be matched to the statement before its own (a review read a table
/// under another statement's record that way). Sync, Flush, Terminate and CopyDone have no
/// body: one that has ends the session, and nothing after it runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_bodiless_message_with_a_body_ends_the_session_before_anything_after_it_runs() {
    let env = Env::start("proto_bodiless").await;
    for (tag, name) in [
        (b'H', "Flush"),
        (b'S', "Sync"),
        (b'c', "CopyDone"),
        (b'X', "Terminate"),
    ] {
        let (id, token) = env.approved_token("eve", "1h").await;
        let mut raw = Raw::login(&env, "eve", &token).await;
        raw.read_until_ready().await;
        let before = format!("SELECT 'before the bad {name}'");
        let after = format!("SELECT 'after the bad {name}'");
        raw.send(&crate::harness::query(&before)).await;
        raw.read_until_ready().await;
        raw.send(
            &[
                message(tag, b"x"),
                crate::harness::query(&after),
                message(b'S', b""),
            ]
            .concat(),
        )
        .await;
        let reply = raw.read_to_close().await;
        let errors = errors_in(&reply);
        assert_eq!(errors.len(), 1, "{name}: {errors:?}");
        assert_eq!(errors[0].0, "08P01", "{name}");
        assert!(errors[0].1.contains(name), "{name}: {}", errors[0].1);
        let trail = env
            .wait_for_audit("the disconnect", |records| {
                records
                    .iter()
                    .any(|r| r["request_id"] == id.as_str() && r["event"] == "disconnected")
            })
            .await;
        let recorded = |text: &str| trail.iter().any(|r| r["statement"] == text);
        assert!(recorded(&before), "{name}: what came before it ran");
        assert!(!recorded(&after), "{name}: nothing after it was sent");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_beyond_the_size_limit_is_refused_before_it_is_buffered() {
    let env = Env::start("proto_huge").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    // Declares 1 GiB and sends 5 bytes: refused from the header alone.
    raw.send(&[b'Q', 0x40, 0, 0, 0]).await;
    let reply = raw.read_to_close().await;
    let errors = errors_in(&reply);
    assert_eq!(
        errors.last().map(|e| e.0.as_str()),
        Some("08P01"),
        "{errors:?}"
    );
}

/// A StartupMessage of protocol 3.`minor` with `params`.
fn startup_of_version(minor: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut packet = startup_packet(params);
    packet[4..8].copy_from_slice(&((3 << 16) | minor).to_be_bytes());
    packet
}

/// Reads one whole backend message (bounded).
async fn one_message(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await.expect("header");
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await.expect("body");
        [&head[..], &body].concat()
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("a message in time")
}

/// A client that asks for a newer protocol (libpq's `max_protocol_version=3.2`; PostgreSQL
/// 19's betas ask for 3.9999 with `_pq_` options to test this) is told, as PostgreSQL tells
/// it, with NegotiateProtocolVersion, and goes on with 3.0: before, it got FATAL 0A000.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_protocol_version_is_negotiated_down_as_postgresql_does() {
    let env = Env::start("protocol_negotiation").await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let asking = |user: &str, db: &str| {
        startup_of_version(
            9999,
            &[("user", user), ("database", db), ("_pq_.grease", "1")],
        )
    };
    // PostgreSQL's own answer to the same request, first message.
    let mut direct = tokio::net::TcpStream::connect(("127.0.0.1", crate::harness::cluster().port))
        .await
        .expect("connect to PostgreSQL");
    tokio::io::AsyncWriteExt::write_all(&mut direct, &asking("postgres", "postgres"))
        .await
        .expect("send");
    let servers = one_message(&mut direct).await;
    assert_eq!(servers[0], b'v', "PostgreSQL negotiates: {servers:?}");

    let mut raw = Raw::connect(env.proxy_port()).await;
    raw.send(&asking("eve", &env.db)).await;
    let proxys = one_message(&mut raw.stream).await;
    assert_eq!(
        proxys, servers,
        "the proxy's NegotiateProtocolVersion is PostgreSQL's"
    );
    let mut password = token.as_bytes().to_vec();
    password.push(0);
    raw.send(&message(b'p', &password)).await;
    raw.read_until_ready().await;
    raw.send(&crate::harness::query("SELECT 41 + 1")).await;
    let answer = raw.read_until_ready().await;
    assert_eq!(crate::harness::rows_in(&answer), 1);

    // Asked for 3.0 with no protocol options, there is nothing to negotiate.
    let mut plain = Raw::connect(env.proxy_port()).await;
    plain
        .send(&startup_packet(&[("user", "eve"), ("database", &env.db)]))
        .await;
    assert_eq!(one_message(&mut plain.stream).await[0], b'R');
}
