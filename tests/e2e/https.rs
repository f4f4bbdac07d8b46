//! TLS on the control plane, against real TLS listeners: the CLI binary reaching an HTTPS
//! API through a private CA (`--ca-cert`, `LOCKBOX_CA_CERT`) and refusing one it does not
//! trust, a webhook delivered to an HTTPS receiver, a plain-HTTP API refused off loopback,
//! and errors that say their cause once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockbox::policy::{AccessLevel, NewRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Env, Options};

/// A CA and a certificate it signed for 127.0.0.1, written into `dir` as
/// `{name}-ca.pem`, `{name}-cert.pem`, `{name}-key.pem`. Returns the CA's path.
fn write_ca_signed(dir: &Path, name: &str) -> PathBuf {
    let (ca, cert, key) =
        lockbox::tls::generate_ca_signed(&["127.0.0.1".into()]).expect("generate");
    let ca_path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_path, ca).expect("write CA");
    std::fs::write(dir.join(format!("{name}-cert.pem")), cert).expect("write cert");
    std::fs::write(dir.join(format!("{name}-key.pem")), key).expect("write key");
    ca_path
}

/// A lockbox whose API serves HTTPS with a certificate of a private CA: the env, the
/// API's https:// URL and the CA's path.
async fn https_env(name: &str) -> (Env, String, PathBuf) {
    let mut env = Env::prepare(name, Options::default());
    let ca = write_ca_signed(&env.deployment.dir, "api");
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = text.replacen(
        "[api]\n",
        "[api]\ntls_cert = \"api-cert.pem\"\ntls_key = \"api-key.pem\"\n",
        1,
    );
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    assert!(config.api_tls.is_some(), "the API is configured for HTTPS");
    env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    let url = format!("https://127.0.0.1:{}", env.deployment.api_port);
    (env, url, ca)
}

/// Runs the CLI as `user` against `server`, with `envs` set.
fn lockbox(env: &Env, user: &str, server: &str, envs: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockbox"));
    command
        .args(args)
        .env("LOCKBOX_SERVER", server)
        .env("LOCKBOX_API_KEY", &env.deployment.api_keys[user])
        .env_remove("LOCKBOX_CA_CERT");
    for (name, value) in envs {
        command.env(name, value);
    }
    command.output().expect("run lockbox")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn failed(out: Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_reaches_an_https_api_through_its_private_ca() {
    let (env, url, ca) = https_env("https_cli").await;
    let ca_arg = ca.to_str().expect("utf-8 path");

    // --ca-cert: file a request.
    let id = ok(lockbox(
        &env,
        "eve",
        &url,
        &[],
        &[
            "--ca-cert",
            ca_arg,
            "request",
            "create",
            "--database",
            &env.db,
            "--ticket",
            "SUP-443",
            "--reason",
            "over https",
            "--access",
            "read",
            "--duration",
            "15m",
        ],
    ));
    assert!(id.starts_with("req-"), "{id}");

    // LOCKBOX_CA_CERT: every stage approves, then the token crosses the wire encrypted.
    let with_env = [("LOCKBOX_CA_CERT", ca.as_path())];
    for _ in 0..3 {
        let shown: serde_json::Value = serde_json::from_str(&ok(lockbox(
            &env,
            "eve",
            &url,
            &with_env,
            &["--json", "request", "show", &id],
        )))
        .expect("json");
        let approver = match shown["status"].as_str() {
            Some("pending_internal") => "lena",
            Some("pending_customer") => "carol",
            _ => break,
        };
        ok(lockbox(
            &env,
            approver,
            &url,
            &with_env,
            &["request", "approve", &id, "--reason", "ok"],
        ));
    }
    let token = ok(lockbox(&env, "eve", &url, &with_env, &["token", &id]));
    assert!(token.split('.').count() == 3, "a JWT: {token}");

    // The same API over plain http:// is no API at all.
    let plain = url.replacen("https://", "http://", 1);
    let out = failed(lockbox(&env, "eve", &plain, &[], &["request", "list"]));
    assert!(
        out.contains("cannot reach the lockbox API") && out.contains("use an https:// URL"),
        "{out}"
    );

    // An answer the caller can fix says how.
    let out = Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["request", "list"])
        .env("LOCKBOX_SERVER", &url)
        .env("LOCKBOX_API_KEY", "lbk_wrong")
        .env("LOCKBOX_CA_CERT", &ca)
        .output()
        .expect("run lockbox");
    let err = failed(out);
    assert!(
        err.contains("unknown API key") && err.contains("LOCKBOX_API_KEY"),
        "{err}"
    );

    // HTTPS cannot be turned off by a reload: the API keeps serving it, and says why.
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = text.replacen(
        "tls_cert = \"api-cert.pem\"\ntls_key = \"api-key.pem\"\n",
        "",
        1,
    );
    std::fs::write(&env.config_path, text).expect("config");
    let said = ok(lockbox(
        &env,
        "alice",
        &url,
        &with_env,
        &["admin", "reload"],
    ));
    assert!(said.contains("after a restart: api.tls_cert"), "{said}");
    ok(lockbox(&env, "eve", &url, &with_env, &["request", "list"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_refuses_an_api_its_ca_did_not_sign() {
    let (env, url, _ca) = https_env("https_refuse").await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let other_ca = write_ca_signed(scratch.path(), "other");

    for envs in [vec![("LOCKBOX_CA_CERT", other_ca.as_path())], vec![]] {
        // Another private CA, or the public ones: neither signed this certificate.
        let out = failed(lockbox(&env, "eve", &url, &envs, &["request", "list"]));
        assert!(out.contains("not signed by a trusted CA"), "{out}");
        assert!(out.contains("--ca-cert"), "says what to try: {out}");
        assert_eq!(
            out.matches("not signed by a trusted CA").count(),
            1,
            "said once: {out}"
        );
    }

    // A CA file that is no certificate: named, before anything is sent.
    let bogus = scratch.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").expect("write");
    let out = failed(lockbox(
        &env,
        "eve",
        &url,
        &[("LOCKBOX_CA_CERT", bogus.as_path())],
        &["request", "list"],
    ));
    assert!(
        out.contains("--ca-cert") && out.contains("bogus.pem"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_port_is_reported_once_with_what_to_try() {
    let port = lockbox::sandbox::free_port().expect("port");
    let out = Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["request", "list"])
        .env("LOCKBOX_SERVER", format!("http://127.0.0.1:{port}"))
        .env("LOCKBOX_API_KEY", "lbk_any")
        .env_remove("LOCKBOX_CA_CERT")
        .output()
        .expect("run lockbox");
    let err = failed(out);
    assert_eq!(
        err.to_lowercase().matches("connection refused").count(),
        1,
        "the cause once: {err}"
    );
    assert!(!err.contains("error sending request"), "{err}");
    assert!(
        err.contains("lockbox serve") && err.contains("LOCKBOX_SERVER"),
        "what to try: {err}"
    );
}

#[test]
fn an_error_that_embeds_its_source_prints_it_once() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let missing = scratch.path().join("missing.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["config", "check", "--config"])
        .arg(&missing)
        .output()
        .expect("run lockbox");
    let err = failed(out);
    assert!(err.contains("missing.toml"), "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause once: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_http_api_off_loopback_is_refused() {
    let env = Env::prepare("https_loopback", Options::default());
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let open = text.replacen("listen = \"127.0.0.1:", "listen = \"0.0.0.0:", 2);
    assert_ne!(open, text);
    let config = env.deployment.dir.join("open.toml");
    std::fs::write(&config, &open).expect("config");
    let config_arg = config.to_str().expect("utf-8 path");

    for verb in [
        &["config", "check", "--config", config_arg][..],
        &["serve", "--config", config_arg],
    ] {
        let err = failed(run_to_end(
            Command::new(env!("CARGO_BIN_EXE_lockbox")).args(verb),
        ));
        assert!(err.contains("`api.tls_cert`"), "{verb:?}: {err}");
        assert!(err.contains("loopback"), "{verb:?}: {err}");
    }

    // With a certificate whose key does not load, the key is named.
    write_ca_signed(&env.deployment.dir, "api");
    std::fs::write(env.deployment.dir.join("api-key.pem"), "no key here").expect("write");
    let with_cert = open.replacen(
        "[api]\n",
        "[api]\ntls_cert = \"api-cert.pem\"\ntls_key = \"api-key.pem\"\n",
        1,
    );
    std::fs::write(&config, with_cert).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["config", "check", "--config", config_arg])
        .output()
        .expect("run lockbox");
    let err = failed(out);
    assert!(err.contains("`api.tls_key`"), "{err}");
}

/// Runs `command` to its end; one still running after a minute (a `serve` that started
/// when it should have refused) is killed and fails the test.
fn run_to_end(command: &mut Command) -> Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run lockbox");
    for _ in 0..600 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!("still running: {}", String::from_utf8_lossy(&out.stderr));
}

/// A tiny HTTPS server: answers every request `200 ok` and keeps each body it received.
async fn https_receiver(dir: &Path) -> (u16, PathBuf, Arc<Mutex<Vec<String>>>) {
    let ca = write_ca_signed(dir, "hook");
    let config = lockbox::tls::server_config(&dir.join("hook-cert.pem"), &dir.join("hook-key.pem"))
        .expect("receiver TLS");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let store = bodies.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let store = store.clone();
            tokio::spawn(async move {
                // A client that does not trust us fails here; that is the point.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Some(body) = read_request_body(&mut tls).await {
                    store.lock().expect("bodies").push(body);
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (port, ca, bodies)
}

/// The body of one HTTP/1.1 request with a content-length.
async fn read_request_body(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())?;
        if buf.len() >= end + 4 + length {
            return Some(String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_reaches_an_https_receiver_signed_by_its_ca() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let (port, ca, bodies) = https_receiver(scratch.path()).await;
    // The same receiver twice: once with its CA named, once trusting the public CAs only.
    let settings = format!(
        "\n[notifications]\nretry_base = \"200ms\"\nmax_attempts = 50\n\
         [[notifications.webhooks]]\nurl = \"https://127.0.0.1:{port}/trusted\"\nca_cert = \"{}\"\n\
         [[notifications.webhooks]]\nurl = \"https://127.0.0.1:{port}/untrusted\"\n",
        ca.display()
    );
    let env = Env::with(
        "https_webhook",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    let new = NewRequest {
        database: env.db.clone(),
        ticket: "SUP-9".into(),
        reason: "over https".into(),
        access: AccessLevel::Read,
        duration: Some("1h".into()),
        ..NewRequest::default()
    };
    let id = env.file("eve", &new).await;

    let mut delivered = None;
    let mut refused = None;
    for _ in 0..150 {
        let list = env
            .client("alice")
            .notifications(Some(&id), None)
            .await
            .expect("status");
        // Shown as the receiver's origin and which webhook it is (a webhook URL's path
        // may be its secret).
        let target = |i: usize| format!("https://127.0.0.1:{port} (webhooks[{i}])");
        delivered = list
            .iter()
            .find(|d| d.target == target(0) && d.status == "delivered")
            .cloned();
        refused = list
            .iter()
            .find(|d| d.target == target(1) && d.last_error.is_some())
            .cloned();
        if delivered.is_some() && refused.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delivered.is_some(), "the webhook with its CA was delivered");
    let body = bodies.lock().expect("bodies").first().cloned();
    let body: serde_json::Value =
        serde_json::from_str(&body.expect("the receiver got a body")).expect("json");
    assert_eq!(body["request"]["request_id"], id.as_str());

    let error = refused
        .and_then(|d| d.last_error)
        .expect("the webhook without its CA failed");
    assert!(error.contains("not signed by a trusted CA"), "{error}");
    assert!(error.contains("ca_cert"), "says what to try: {error}");
}

/// The log lines `lockbox serve` writes up to "lockbox is serving"; the process is killed.
fn serve_start_log(config: &Path) -> Vec<String> {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start lockbox serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let started = line.contains("lockbox is serving");
        lines.push(line);
        if started {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("lockbox is serving")),
        "serve did not start: {lines:#?}"
    );
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_warns_when_the_api_is_plain_http() {
    let env = Env::prepare("https_warning", Options::default());
    let plain = serve_start_log(&env.config_path);
    assert!(
        plain
            .iter()
            .any(|l| l.contains("WARN") && l.contains("plain HTTP")),
        "{plain:#?}"
    );

    write_ca_signed(&env.deployment.dir, "api");
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = text.replacen(
        "[api]\n",
        "[api]\ntls_cert = \"api-cert.pem\"\ntls_key = \"api-key.pem\"\n",
        1,
    );
    std::fs::write(&env.config_path, text).expect("config");
    let https = serve_start_log(&env.config_path);
    assert!(
        !https.iter().any(|l| l.contains("plain HTTP")),
        "{https:#?}"
    );
}
