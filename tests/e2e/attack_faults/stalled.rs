//! The database frozen (SIGSTOP): admission, a first session and cancel requests are
//! bounded, and a session still ends whole.

use super::*;

/// Finding: a database stalled (SIGSTOP) in the middle of a result, then the grant revoked:
/// the FATAL went after the half row the proxy had forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_while_the_database_is_stalled_mid_row_ends_with_a_whole_fatal() {
    let (pg, _stop) = own_cluster();
    let env = Env::with(
        "atk14_stall_mid_row",
        Options {
            cluster: Some(pg),
            ..Options::default()
        },
    )
    .await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (mut raw, mut seen) = mid_result(&env, &token, 2 << 20).await;
    pg.freeze(true).expect("stall the cluster");
    // Let what was on its way reach the client's socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.client("carol")
        .revoke(&id, "done")
        .await
        .expect("revoke");
    seen.extend(raw.read_to_close().await);
    pg.freeze(false).expect("resume the cluster");
    assert_ends_with_fatal(&seen, "57P01");
}

/// Finding: with TLS to the upstream, the TLS negotiation was outside the connect timeout:
/// admission against a stalled database hung for ever instead of failing clearly.
#[tokio::test(flavor = "multi_thread")]
async fn admission_to_a_stalled_database_over_tls_times_out_with_a_clear_error() {
    let (pg, _stop) = own_cluster();
    let (ca, cert, key) =
        lockbox::tls::generate_ca_signed(&["127.0.0.1".into()]).expect("generate CA");
    pg.enable_tls(&cert, &key).expect("TLS on the cluster");
    let env = Env::with(
        "atk14_stalled_tls",
        Options {
            cluster: Some(pg),
            upstream_tls: "tls = \"verify-full\"\ntls_ca = \"ca.pem\"",
            ca_override: Some(ca),
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    // Healthy first: the setup is right.
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    client.simple_query("SELECT 1").await.expect("query");
    pg.freeze(true).expect("stall the cluster");
    let connect = tokio::time::timeout(Duration::from_secs(45), env.connect("eve", &token)).await;
    pg.freeze(false).expect("resume the cluster");
    let Ok(result) = connect else {
        panic!("admission against a stalled database did not end within 45 s");
    };
    let Err(e) = result else {
        panic!("a session was admitted to a stalled database");
    };
    let (code, message) = crate::harness::db_error(&e);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("did not answer"), "{message}");
}

/// Finding: with per-grant roles, the role is made over a service connection whose login
/// was unbounded (tokio-postgres bounds only the TCP connect): a new grant's first session
/// against a stalled database hung for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_grants_first_session_to_a_stalled_database_times_out_with_a_clear_error() {
    let (pg, _stop) = own_cluster();
    let env = Env::with(
        "atk14_stalled_provision",
        Options {
            cluster: Some(pg),
            upstream_user: PROVISIONER_ROLE,
            upstream_password: PROVISIONER_PASSWORD,
            provisioning: "per_grant_roles = true",
            ..Options::default()
        },
    )
    .await;
    let (_, first) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &first).await.expect("connect");
    client.simple_query("SELECT 1").await.expect("query");
    let (_, second) = env.approved_token_for("bob", "1h", AccessLevel::Read).await;
    pg.freeze(true).expect("stall the cluster");
    let connect = tokio::time::timeout(Duration::from_secs(60), env.connect("bob", &second)).await;
    pg.freeze(false).expect("resume the cluster");
    let Ok(result) = connect else {
        panic!("admission of a new grant against a stalled database did not end within 60 s");
    };
    let Err(e) = result else {
        panic!("a session was admitted to a stalled database");
    };
    let (code, message) = crate::harness::db_error(&e);
    assert_eq!(code, "08006", "{message}");
}

/// Checked sound: a cancel request for a session on a stalled database is forwarded and
/// its connection closed in bounded time (the server's answer is waited for 2 s at most).
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_request_to_a_stalled_database_does_not_hang() {
    let (pg, _stop) = own_cluster();
    let env = Env::with(
        "atk14_stalled_cancel",
        Options {
            cluster: Some(pg),
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    let hello = raw.read_until_ready().await;
    let messages = frames(&hello).expect("whole messages");
    let key = messages
        .iter()
        .find(|(tag, _)| *tag == b'K')
        .map(|(_, body)| body.clone())
        .expect("BackendKeyData");
    pg.freeze(true).expect("stall the cluster");
    let mut cancel = Raw::connect(env.proxy_port()).await;
    let mut packet = 16i32.to_be_bytes().to_vec();
    packet.extend(80_877_102i32.to_be_bytes());
    packet.extend(&key);
    cancel.send(&packet).await;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut sink = Vec::new();
        let _ = cancel.stream.read_to_end(&mut sink).await;
    })
    .await;
    pg.freeze(false).expect("resume the cluster");
    assert!(
        closed.is_ok(),
        "the cancel request hung on a stalled database"
    );
}
