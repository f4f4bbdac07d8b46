//! TLS towards the upstream database: require, verify-ca, verify-full.

use crate::harness::{db_error, Env, Options};

async fn upstream_uses_tls(env: &Env) -> Result<bool, (String, String)> {
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.map_err(|e| db_error(&e))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| db_error(&e))?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_tls_modes() {
    let other_ca = lockbox::tls::generate_ca_signed(&["127.0.0.1".into()])
        .expect("CA")
        .0;
    let check = |name: &'static str,
                 host: &'static str,
                 tls: &'static str,
                 ca: Option<String>,
                 ok: bool| async move {
        let env = Env::with(
            name,
            Options {
                upstream_host: host,
                upstream_tls: tls,
                ca_override: ca,
                ..Default::default()
            },
        )
        .await;
        match upstream_uses_tls(&env).await {
            Ok(ssl) => {
                assert!(ok, "{tls} to {host} should have failed");
                assert!(ssl, "{tls}: the upstream connection is encrypted");
            }
            Err((code, message)) => {
                assert!(!ok, "{tls} to {host} failed: {code} {message}");
                assert_eq!(code, "08006", "{message}");
            }
        }
    };
    check("tls_require", "127.0.0.1", "tls = \"require\"", None, true).await;
    check(
        "tls_verify_full",
        "127.0.0.1",
        "tls = \"verify-full\"\ntls_ca = \"ca.pem\"",
        None,
        true,
    )
    .await;
    // The certificate names 127.0.0.1 only: verify-ca accepts it for "localhost", verify-full does not.
    check(
        "tls_verify_ca_name",
        "localhost",
        "tls = \"verify-ca\"\ntls_ca = \"ca.pem\"",
        None,
        true,
    )
    .await;
    check(
        "tls_verify_full_name",
        "localhost",
        "tls = \"verify-full\"\ntls_ca = \"ca.pem\"",
        None,
        false,
    )
    .await;
    check(
        "tls_wrong_ca",
        "127.0.0.1",
        "tls = \"verify-ca\"\ntls_ca = \"ca.pem\"",
        Some(other_ca),
        false,
    )
    .await;
}

#[test]
fn verify_modes_need_a_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("k.pem"),
        lockbox::keys::generate_signing_key_pem().expect("key"),
    )
    .expect("write");
    let toml = "[proxy]\nlisten = \"127.0.0.1:0\"\nallow_plaintext_loopback = true\n[token]\nsigning_key = \"k.pem\"\n\
                [[databases]]\nname = \"d\"\nhost = \"h\"\nuser = \"u\"\ntls = \"verify-full\"\n";
    let err = lockbox::config::Config::from_toml(toml, dir.path()).expect_err("needs tls_ca");
    assert!(err.to_string().contains("databases[0].tls_ca"), "{err}");
}

/// Connects over TLS trusting only `cert_pem`.
async fn connect_pinned(
    env: &Env,
    token: &str,
    cert_pem: &str,
) -> Result<(), tokio_postgres::Error> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
        (*lockbox::tls::client_config_pinned(cert_pem).expect("pinned config")).clone(),
    );
    let mut config = env.pg_config("eve", token);
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(connection);
    client.batch_execute("SELECT 1").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_proxy_certificate_is_served_without_a_restart() {
    let env = Env::with(
        "tls_reload",
        Options {
            plaintext: false,
            ..Default::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let old = env.deployment.cert_pem.clone();
    connect_pinned(&env, &token, &old)
        .await
        .expect("old certificate served");
    let (new_cert, new_key) =
        lockbox::tls::generate_self_signed(&["127.0.0.1".into()]).expect("cert");
    std::fs::write(env.deployment.dir.join("proxy-key.pem"), new_key).expect("write key");
    std::fs::write(env.deployment.dir.join("proxy-cert.pem"), &new_cert).expect("write cert");
    let mut served_new = false;
    for _ in 0..50 {
        if connect_pinned(&env, &token, &new_cert).await.is_ok() {
            served_new = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(served_new, "the new certificate was never served");
    assert!(
        connect_pinned(&env, &token, &old).await.is_err(),
        "the old certificate is gone"
    );
}
