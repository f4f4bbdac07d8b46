//! A login's upstream dial overlaps the login (`src/proxy/early_dial.rs`): a source
//! admitted lately is dialed at its startup packet; one never admitted only once its token
//! verifies; an abandoned or failed login costs its source that head start until it is
//! admitted again. Counted in `lockbox_upstream_early_dials_total`.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::harness::{message, metric, metric_when, startup_packet, Env, Raw};

fn dials_series(outcome: &str) -> String {
    format!("lockbox_upstream_early_dials_total{{outcome=\"{outcome}\"}}")
}

async fn dials(env: &Env, outcome: &str) -> f64 {
    metric(env, &dials_series(outcome)).await
}

async fn wait_for_dials(env: &Env, outcome: &str, want: f64) {
    let series = dials_series(outcome);
    let dials = metric_when(env, &series, Duration::from_secs(10), |n| n == want).await;
    assert_eq!(dials, want, "{outcome} early dials never reached {want}");
}

/// Waits (bounded) until the proxy holds `open` client connections: a login the client
/// abandoned has then been seen to end, and cost its source its head start (the slot goes
/// back after that), so a later admission is not undone by it.
async fn wait_for_connections(env: &Env, open: f64) {
    let now = metric_when(env, "lockbox_connections", Duration::from_secs(10), |n| {
        n == open
    })
    .await;
    assert_eq!(now, open, "the proxy never came down to {open} connections");
}

/// A connection that sent its startup packet and read the password request.
async fn at_password_request(env: &Env) -> Raw {
    let mut raw = Raw::connect(env.proxy_port()).await;
    raw.send(&startup_packet(&[("user", "eve"), ("database", &env.db)]))
        .await;
    let mut request = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), raw.stream.read_exact(&mut request))
        .await
        .expect("the password request in time")
        .expect("read");
    assert_eq!(request[0], b'R', "{request:?}");
    raw
}

/// A connection that sends its startup packet, reads the password request, and leaves.
async fn abandon_login(env: &Env) {
    drop(at_password_request(env).await);
}

/// A login as eve to `database` with `password`, read back to the close.
async fn login_answer(env: &Env, database: &str, password: &str) -> String {
    let mut raw = Raw::connect(env.proxy_port()).await;
    raw.send(&startup_packet(&[("user", "eve"), ("database", database)]))
        .await;
    let mut password = password.as_bytes().to_vec();
    password.push(0);
    raw.send(&message(b'p', &password)).await;
    String::from_utf8_lossy(&raw.read_to_close().await).into_owned()
}

/// A login with a token that does not verify, its refusal read back.
async fn refused_login(env: &Env) {
    let answer = login_answer(env, &env.db, "not-a-token").await;
    assert!(answer.contains("28P01"), "{answer:?}");
}

/// A login with a real token, for a database it was not minted for, its refusal read back.
async fn login_elsewhere(env: &Env, token: &str) {
    let answer = login_answer(env, "other", token).await;
    assert!(answer.contains("FATAL"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_never_admitted_is_dialed_only_once_its_token_verifies() {
    let env = Env::start("early_dial_untrusted").await;
    refused_login(&env).await;
    abandon_login(&env).await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    // A token that verifies, presented for a database it was not minted for: refused,
    // and nothing dialed for it.
    login_elsewhere(&env, &token).await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client.simple_query("SELECT 1").await.expect("select");
    // The admitted login's dial (started after its token verified) was its upstream; the
    // refused and the abandoned ones dialed nothing.
    assert_eq!(dials(&env, "used").await, 1.0);
    assert_eq!(dials(&env, "unused").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admitted_source_is_dialed_at_its_startup_and_loses_that_when_it_abandons_a_login() {
    let env = Env::start("early_dial_trusted").await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let (first, _conn) = env.connect("eve", &token).await.expect("login");
    first.simple_query("SELECT 1").await.expect("select");
    assert_eq!(dials(&env, "used").await, 1.0);

    // Admitted: the next connection is dialed at its startup packet, so leaving before
    // the token leaves a dial unused (closed with nothing sent).
    abandon_login(&env).await;
    wait_for_dials(&env, "unused", 1.0).await;

    // That cost the source its head start: neither a refused nor an abandoned login
    // dials again.
    refused_login(&env).await;
    abandon_login(&env).await;
    wait_for_connections(&env, 1.0).await;
    let (second, _conn) = env.connect("eve", &token).await.expect("login");
    second.simple_query("SELECT 1").await.expect("select");
    assert_eq!(dials(&env, "used").await, 2.0);
    assert_eq!(dials(&env, "unused").await, 1.0);

    // Admitted again, so trusted again; a refused login is a failure too.
    refused_login(&env).await;
    wait_for_dials(&env, "unused", 2.0).await;

    // Sessions on an early dial work as any other: statements, their records.
    let (third, _conn) = env.connect("eve", &token).await.expect("login");
    let rows = third.simple_query("SELECT 40 + 2").await.expect("select");
    assert!(format!("{rows:?}").contains("42"), "{rows:?}");
    assert_eq!(dials(&env, "used").await, 3.0);
}

async fn with_policy(name: &str, policy: &'static str) -> Env {
    Env::with(
        name,
        crate::harness::Options {
            proxy_extra: policy,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn early_dial_verified_never_dials_at_the_startup_packet() {
    let env = with_policy("early_dial_verified", "early_dial = \"verified\"").await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let (first, _conn) = env.connect("eve", &token).await.expect("login");
    first.simple_query("SELECT 1").await.expect("select");
    assert_eq!(
        dials(&env, "used").await,
        1.0,
        "dialed once the token verified"
    );
    // Admitted, yet a login refused for its token dialed nothing.
    refused_login(&env).await;
    assert_eq!(dials(&env, "unused").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn early_dial_off_dials_after_admission_only() {
    let env = with_policy("early_dial_off", "early_dial = \"off\"").await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    for _ in 0..2 {
        let (client, _conn) = env.connect("eve", &token).await.expect("login");
        client.simple_query("SELECT 1").await.expect("select");
    }
    refused_login(&env).await;
    assert_eq!(dials(&env, "used").await, 0.0);
    assert_eq!(dials(&env, "unused").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_source_cannot_open_more_than_a_few_dials_without_a_token() {
    let env = Env::start("early_dial_flood").await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client.simple_query("SELECT 1").await.expect("select");
    // A startup the proxy refuses is not dialed, trusted source or not.
    let mut refused = Raw::connect(env.proxy_port()).await;
    refused
        .send(&startup_packet(&[
            ("user", "eve"),
            ("database", &env.db),
            ("options", "-c work_mem=1MB"),
        ]))
        .await;
    let answer = refused.read_to_close().await;
    assert!(String::from_utf8_lossy(&answer).contains("options"));
    assert_eq!(dials(&env, "unused").await, 0.0);
    // That was a failed login, so the source is admitted again to be trusted.
    let (again, _conn) = env.connect("eve", &token).await.expect("login");
    again.simple_query("SELECT 1").await.expect("select");
    // Many connections that stop at the password request, held open together.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(at_password_request(&env).await);
    }
    drop(held);
    // Only the source's few startup dials were made; each went unused.
    wait_for_dials(&env, "unused", 2.0).await;
    refused_login(&env).await;
    assert_eq!(dials(&env, "unused").await, 2.0);
    assert_eq!(dials(&env, "used").await, 2.0);
}
