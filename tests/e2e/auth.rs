//! Who gets in: every refusal names its reason, and no refused login reaches upstream.

use std::time::{Duration, SystemTime};

use lockbox::policy::AccessLevel;
use lockbox::token::{TokenAuthority, TokenGrant};

use crate::harness::{db_error, Env, Options};

fn authority(env: &Env) -> TokenAuthority {
    TokenAuthority::load(
        &env.deployment.dir.join("signing-key.pem"),
        "lockbox",
        "lockbox-proxy",
    )
    .expect("key")
}

fn craft(
    env: &Env,
    authority: &TokenAuthority,
    user: &str,
    db: &str,
    request_id: &str,
    secs: i64,
) -> String {
    let expires = if secs >= 0 {
        SystemTime::now() + Duration::from_secs(secs as u64)
    } else {
        SystemTime::now() - Duration::from_secs(secs.unsigned_abs())
    };
    let _ = env;
    authority
        .issue(
            &TokenGrant {
                engineer: user,
                database: db,
                request_id,
                access: AccessLevel::Read,
            },
            expires,
        )
        .expect("sign")
}

/// Connects and expects a refusal whose SQLSTATE is `code` and whose message holds `says`.
async fn refused(env: &Env, user: &str, token: &str, code: &str, says: &str) {
    let err = match env.connect(user, token).await {
        Ok(_) => panic!("login as {user} should have been refused ({says})"),
        Err(e) => e,
    };
    let (sqlstate, message) = db_error(&err);
    assert_eq!(sqlstate, code, "{message}");
    assert!(message.contains(says), "expected {says:?} in {message:?}");
}

/// Backends in the test database other than the superuser's and lockbox's own role
/// provisioning (which checks its service role's rights now and then, on a connection of
/// its own): those a login through the proxy would open.
fn upstream_sessions(env: &Env) -> i64 {
    env.superuser_sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND usename <> 'postgres' \
         AND application_name <> 'lockbox provisioning'",
        env.db
    ))
    .parse()
    .expect("count")
}

#[tokio::test(flavor = "multi_thread")]
async fn approved_token_opens_a_session_as_the_service_role() {
    let env = Env::start("auth_ok").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let row = client
        .query_one("SELECT current_user::text, count(*) FROM items", &[])
        .await
        .expect("query");
    // A read grant logs in as the database's read role.
    assert_eq!(row.get::<_, String>(0), "lockbox_read");
    assert_eq!(row.get::<_, i64>(1), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_with_the_reason() {
    let env = Env::start("auth_bad").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let own = authority(&env);
    let foreign = TokenAuthority::from_pem(
        &lockbox::keys::generate_signing_key_pem().expect("key"),
        "lockbox",
        "lockbox-proxy",
    )
    .expect("foreign key");

    refused(&env, "eve", "", "28P01", "malformed").await;
    refused(&env, "eve", "garbage", "28P01", "malformed").await;
    let forged = craft(&env, &foreign, "eve", &env.db, &id, 600);
    refused(&env, "eve", &forged, "28P01", "signature").await;
    let payload = token.split('.').nth(1).expect("payload").to_owned();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    refused(&env, "eve", &none, "28P01", "token").await;
    refused(&env, "bob", &token, "28000", "issued for user").await;
    let expired = craft(&env, &own, "eve", &env.db, &id, -60);
    refused(&env, "eve", &expired, "28P01", "expired").await;
    let unknown = craft(&env, &own, "eve", &env.db, "req-does-not-exist", 600);
    refused(&env, "eve", &unknown, "28P01", "does not exist").await;
    assert_eq!(
        upstream_sessions(&env),
        0,
        "no refused login may open an upstream connection"
    );

    let failures = env
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "authentication_failed")
        .count();
    assert_eq!(failures, 7, "each refusal is audited");
    let text = std::fs::read_to_string(&env.audit_path).expect("audit");
    assert!(
        !text.contains(&token),
        "a token must never be written anywhere"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_for_another_database_is_refused() {
    let env = Env::start("auth_db").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let mut config = env.pg_config("eve", &token);
    config.dbname("other");
    let err = config
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    let (code, message) = db_error(&err);
    assert_eq!(code, "28000");
    assert!(message.contains("issued for database"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_denied_and_revoked_requests_do_not_admit() {
    let env = Env::start("auth_states").await;
    let own = authority(&env);
    let pending = env.pending_request("eve", "1h").await;
    let token = craft(&env, &own, "eve", &env.db, &pending, 600);
    refused(&env, "eve", &token, "28P01", "not yet approved").await;

    env.client("carol")
        .deny(&pending, "not needed")
        .await
        .expect("deny");
    refused(&env, "eve", &token, "28P01", "denied").await;

    let (id, token) = env.approved_token("eve", "1h").await;
    env.client("eve")
        .revoke(&id, "done early")
        .await
        .expect("revoke");
    refused(&env, "eve", &token, "28P01", "revoked").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_is_refused_when_tls_is_required_and_psql_gets_in_over_tls() {
    let env = Env::with(
        "auth_tls",
        Options {
            plaintext: false,
            ..Default::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let err = env
        .connect("eve", &token)
        .await
        .expect_err("plaintext refused");
    let (code, message) = db_error(&err);
    assert_eq!(code, "28000");
    assert!(message.contains("TLS"), "{message}");

    let psql = lockbox::sandbox::find_server_binaries()
        .expect("binaries")
        .join("psql");
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname={} user=eve sslmode=require",
        env.proxy_port(),
        env.db
    );
    let out = std::process::Command::new(psql)
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT count(*) FROM items",
            &conninfo,
        ])
        .env("PGPASSWORD", &token)
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_md5_and_trust_logins_work() {
    for (name, user, password) in [
        ("auth_md5", "lockbox_md5", "md5-password"),
        ("auth_trust", "lockbox_trust", ""),
    ] {
        let env = Env::with(
            name,
            Options {
                upstream_user: user,
                upstream_password: password,
                ..Default::default()
            },
        )
        .await;
        // Admin grants use the database's default credentials, the ones under test here.
        let (_, token) = env
            .approved_token_for("eve", "1h", AccessLevel::Admin)
            .await;
        let (client, _conn) = env.connect("eve", &token).await.expect("login");
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("q")
            .get(0);
        assert_eq!(who, user);
    }
}
