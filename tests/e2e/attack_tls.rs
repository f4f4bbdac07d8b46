//! An adversarial review of the control plane's TLS (`[api] tls_cert`, the CLI's and the
//! webhooks' HTTPS clients), written from the code and from the outside. Each test states a
//! property the deployment should have; a failing one is a finding.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockbox::client::ApiClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{Env, Options};

/// The API key every fake server below looks for in what it receives.
const SECRET_KEY: &str = "lbk_attack_tls_secret_api_key_0123456789";

/// An address of this machine that is not loopback (the one a default route leaves by);
/// no packet is sent to find it.
fn lan_ip() -> IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp bind");
    probe
        .connect("192.0.2.1:9")
        .expect("route to a test-net address");
    let ip = probe.local_addr().expect("local addr").ip();
    assert!(
        !ip.is_loopback(),
        "this machine has no non-loopback address"
    );
    ip
}

/// A CA and a certificate it signed for `hosts`, written into `dir`: (ca, cert, key) paths.
fn write_ca_signed(dir: &Path, hosts: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let (ca, cert, key) = lockbox::tls::generate_ca_signed(&hosts).expect("generate");
    let paths = (
        dir.join("attack-ca.pem"),
        dir.join("attack-cert.pem"),
        dir.join("attack-key.pem"),
    );
    std::fs::write(&paths.0, ca).expect("write ca");
    std::fs::write(&paths.1, cert).expect("write cert");
    std::fs::write(&paths.2, key).expect("write key");
    paths
}

/// A test's lockbox with its API on HTTPS (127.0.0.1), and what a client needs to reach it.
struct HttpsEnv {
    env: Env,
    url: String,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl HttpsEnv {
    fn client(&self, user: &str) -> ApiClient {
        let key = self.env.deployment.api_keys[user].clone();
        ApiClient::with_ca(&self.url, &key, Some(&self.ca)).expect("client")
    }

    fn api_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.env.deployment.api_port))
    }
}

/// Writes the deployment with `[api] tls_cert/tls_key` and returns it, not started.
fn https_deployment(name: &str, policy: &'static str) -> HttpsEnv {
    let env = Env::prepare(
        name,
        Options {
            policy,
            ..Options::default()
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = write_ca_signed(dir.path(), &["127.0.0.1"]);
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let api = format!(
        "[api]\nlisten = \"127.0.0.1:{}\"\n",
        env.deployment.api_port
    );
    assert!(text.contains(&api), "{text}");
    let text = text.replace(
        &api,
        &format!(
            "{api}tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    std::fs::write(&env.config_path, text).expect("config");
    let url = format!("https://127.0.0.1:{}", env.deployment.api_port);
    HttpsEnv {
        env,
        url,
        ca,
        _dir: dir,
    }
}

async fn https_env(name: &str, policy: &'static str) -> HttpsEnv {
    let mut h = https_deployment(name, policy);
    let config = lockbox::config::Config::load(&h.env.config_path).expect("config loads");
    h.env.audit_path = config.audit_path.clone();
    h.env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    h
}

/// Reads one HTTP request head (up to the blank line) or whatever came before EOF.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

const OK_JSON: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";

/// A plain-HTTP listener on `addr` recording every request head it gets.
async fn plain_recorder(addr: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind(addr).await.expect("bind recorder");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let head = read_head(&mut socket).await;
                record.lock().unwrap().push(head);
                let _ = socket.write_all(OK_JSON).await;
            });
        }
    });
    (addr, seen)
}

/// One port serving both: a TLS connection (first byte 0x16) gets `redirect` as its answer;
/// a plaintext one is recorded and answered 200. Records `(tls, head)` per request.
async fn tls_redirector(
    addr: SocketAddr,
    cert: &Path,
    key: &Path,
    redirect: impl Fn(SocketAddr) -> String + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<(bool, String)>>>) {
    let config = lockbox::tls::server_config(cert, key).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind(addr).await.expect("bind redirector");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let redirect = Arc::new(redirect);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let record = record.clone();
            let acceptor = acceptor.clone();
            let location = redirect(addr);
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if socket.peek(&mut first).await.unwrap_or(0) == 0 {
                    return;
                }
                if first[0] == 0x16 {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let head = read_head(&mut tls).await;
                    record.lock().unwrap().push((true, head));
                    let answer = format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\n\
                         content-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                } else {
                    let mut socket = socket;
                    let head = read_head(&mut socket).await;
                    record.lock().unwrap().push((false, head));
                    let _ = socket.write_all(OK_JSON).await;
                }
            });
        }
    });
    (addr, seen)
}

fn carries_key(head: &str) -> bool {
    head.contains(SECRET_KEY)
}

/// Runs the `lockbox` binary with `args` and the environment given, off the runtime.
async fn run_cli(args: Vec<String>, envs: Vec<(&'static str, String)>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockbox"));
        cmd.args(&args)
            .env_remove("LOCKBOX_SERVER")
            .env_remove("LOCKBOX_API_KEY")
            .env_remove("LOCKBOX_CA_CERT");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().expect("run lockbox")
    })
    .await
    .expect("join")
}

// ---------------------------------------------------------------------------------------
// The CLI and the API key.
// ---------------------------------------------------------------------------------------

/// The server refuses plain HTTP off loopback ("a token never crosses a network in clear"),
/// but the client does not: `LOCKBOX_SERVER=http://<a remote host>` gets the API key in
/// the clear (and the token back in the clear). The CLI should refuse a non-loopback
/// http:// server before sending anything.
#[tokio::test(flavor = "multi_thread")]
async fn cli_never_sends_the_api_key_in_clear_to_a_non_loopback_server() {
    let (addr, seen) = plain_recorder(SocketAddr::new(lan_ip(), 0)).await;
    let out = run_cli(
        vec!["request".into(), "list".into()],
        vec![
            ("LOCKBOX_SERVER", format!("http://{addr}")),
            ("LOCKBOX_API_KEY", SECRET_KEY.into()),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|h| carries_key(h)),
        "the CLI sent the API key over plain HTTP to {addr} (not loopback): {seen:?}\n\
         stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--ca-cert` says "I expect TLS with this CA"; with an http:// server it is silently
/// ignored and the key goes out in clear. It should be an error.
#[tokio::test(flavor = "multi_thread")]
async fn ca_cert_with_an_http_server_is_an_error_not_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, _, _) = write_ca_signed(dir.path(), &["127.0.0.1"]);
    let (addr, seen) = plain_recorder(SocketAddr::new(lan_ip(), 0)).await;
    let out = run_cli(
        vec![
            "--ca-cert".into(),
            ca.display().to_string(),
            "request".into(),
            "list".into(),
        ],
        vec![
            ("LOCKBOX_SERVER", format!("http://{addr}")),
            ("LOCKBOX_API_KEY", SECRET_KEY.into()),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.is_empty() && !out.status.success(),
        "--ca-cert was ignored for an http:// server and the request (with the key) was \
         sent in clear: {seen:?}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// reqwest follows redirects by default and keeps `Authorization` when only the scheme
/// changes (same host and port): an https:// API (or anything in front of it: an ingress,
/// a load balancer answering a moved path) that answers 307 to `http://same-host:same-port`
/// makes the CLI send the API key in clear. The API never redirects, so the client should
/// not follow any.
#[tokio::test(flavor = "multi_thread")]
async fn cli_does_not_follow_an_https_to_http_redirect_with_the_api_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ip = lan_ip();
    let (ca, cert, key) = write_ca_signed(dir.path(), &[&ip.to_string()]);
    let (addr, seen) = tls_redirector(SocketAddr::new(ip, 0), &cert, &key, |addr| {
        format!("http://{addr}/v1/whoami")
    })
    .await;
    let client =
        ApiClient::with_ca(&format!("https://{addr}"), SECRET_KEY, Some(&ca)).expect("client");
    let answer = tokio::time::timeout(Duration::from_secs(15), client.whoami()).await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(tls, _)| *tls),
        "the client did not even reach the https server: {answer:?}"
    );
    let clear: Vec<_> = seen.iter().filter(|(tls, _)| !tls).collect();
    assert!(
        !clear.iter().any(|(_, h)| carries_key(h)),
        "after a 307 from https://{addr} to http://{addr} the client sent the API key in \
         clear: {clear:?}"
    );
    assert!(
        clear.is_empty(),
        "the client followed a redirect from its https:// API to plain http: {clear:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Webhooks.
// ---------------------------------------------------------------------------------------

/// A webhook receiver named as https:// with a private CA (`ca_cert`) answers 307 to a
/// plain-http internal address: the notifier follows it and POSTs the payload there (blind
/// SSRF towards the server's network, and a downgrade of the configured https:// to clear
/// text). Webhook clients should not follow redirects (or at least never to http://).
#[tokio::test(flavor = "multi_thread")]
async fn webhook_does_not_follow_a_redirect_to_plain_http_or_an_internal_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = write_ca_signed(dir.path(), &["127.0.0.1"]);
    // The "internal service": plain HTTP on loopback, which the receiver points to.
    let (internal, internal_seen) = plain_recorder("127.0.0.1:0".parse().unwrap()).await;
    let (hook, hook_seen) =
        tls_redirector("127.0.0.1:0".parse().unwrap(), &cert, &key, move |_| {
            format!("http://{internal}/latest/meta-data/iam")
        })
        .await;
    let settings = format!(
        "\n[notifications]\nretry_base = \"200ms\"\nmax_attempts = 3\n\
         [[notifications.webhooks]]\nurl = \"https://{hook}/hook\"\nca_cert = \"{}\"\n",
        ca.display()
    );
    let env = Env::with(
        "atk_tls_webhook_redirect",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    let _id = env.pending_request("eve", "1h").await;

    let deadline = Instant::now() + Duration::from_secs(20);
    while hook_seen.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !hook_seen.lock().unwrap().is_empty(),
        "the webhook was never called"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let internal_seen = internal_seen.lock().unwrap().clone();
    assert!(
        internal_seen.is_empty(),
        "the notifier followed the receiver's redirect from https://{hook} to the plain-http \
         internal address {internal}: {internal_seen:?}"
    );
}

/// A webhook URL is a credential (Slack's `/services/T…/B…/<secret>`, Teams' signed URLs):
/// whoever has it posts into the channel approvers trust. Each delivery shows it whole in
/// `target` and again inside `last_error` ("webhook <url>: …") to every `audit read` caller
/// of `/v1/notifications`, and the dispatcher logs it at warn on each failed attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_url_secret_is_not_shown_to_readers_of_notifications() {
    let port = lockbox::sandbox::free_port().expect("port");
    let secret = "xoxSECRETwebhookTOKEN42";
    let settings = format!(
        "\n[notifications]\nretry_base = \"200ms\"\nmax_attempts = 2\n\
         [[notifications.webhooks]]\nurl = \"http://127.0.0.1:{port}/services/T0/B0/{secret}\"\n\
         format = \"slack\"\n"
    );
    let env = Env::with(
        "atk_tls_hook_secret",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    let _id = env.pending_request("eve", "1h").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let deliveries = loop {
        let list = env
            .client("dave")
            .notifications(None, None)
            .await
            .expect("an auditor lists deliveries");
        if list.iter().any(|d| d.last_error.is_some()) || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let shown: Vec<String> = deliveries
        .iter()
        .filter(|d| d.channel == "webhook")
        .map(|d| format!("target={} last_error={:?}", d.target, d.last_error))
        .collect();
    assert!(!shown.is_empty(), "no webhook delivery was queued");
    assert!(
        !shown.iter().any(|d| d.contains(secret)),
        "the auditor sees the webhook's secret: {shown:?}"
    );
}

/// The API's rule ("plain only on loopback, it carries credentials") is not applied to the
/// SMTP relay: `security` defaults to `none`, and with `username`/`password` lettre sends
/// `AUTH PLAIN` (the password, base64) in clear to any host. A config naming a remote relay
/// with credentials and no `security` should be refused, as a plain non-loopback API is.
#[test]
fn smtp_credentials_never_go_to_a_remote_relay_in_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    for security in ["", "security = \"none\"\n"] {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:6432\"\nallow_plaintext_loopback = true\n\
             [token]\nsigning_key = \"signing.pem\"\n[api]\nlisten = \"127.0.0.1:8432\"\n\
             [notifications.smtp]\nhost = \"smtp.example.com\"\nport = 587\n\
             from = \"lockbox@example.com\"\nusername = \"lockbox\"\npassword = \"hunter2\"\n\
             {security}"
        );
        let loaded = lockbox::config::Config::from_toml(&text, dir.path());
        assert!(
            loaded.is_err(),
            "accepted: SMTP credentials to smtp.example.com:587 in clear ({security:?})"
        );
    }
}

/// Plain http:// off loopback is refused for the API but accepted for what tells approvers
/// what to approve: a webhook to a remote `http://` receiver (an on-path attacker rewrites
/// `lockbox request approve <id>` to their own pending request's id), and a `public_url`
/// that points approvers' links (`POST http://…/approve`, with their API key) at plain HTTP
/// while the API itself serves HTTPS.
#[test]
fn plain_http_urls_to_remote_hosts_are_refused_in_notifications() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = "[proxy]\nlisten = \"127.0.0.1:6432\"\nallow_plaintext_loopback = true\n\
                [token]\nsigning_key = \"signing.pem\"\n[api]\nlisten = \"127.0.0.1:8432\"\n";
    let cases = [
        "[notifications]\n[[notifications.webhooks]]\nurl = \"http://hooks.example.com/lockbox\"\n",
        "[notifications]\npublic_url = \"http://lockbox.example.com\"\n",
    ];
    let accepted: Vec<&str> = cases
        .iter()
        .filter(|case| {
            lockbox::config::Config::from_toml(&format!("{base}{case}"), dir.path()).is_ok()
        })
        .copied()
        .collect();
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}

// ---------------------------------------------------------------------------------------
// Denial of service of the HTTPS listener.
// ---------------------------------------------------------------------------------------

/// `MAX_HANDSHAKES` (512) slots are taken before `accept`: 512 TCP connections that never
/// say a word (no TLS, no auth, ~51 new sockets a second to keep it up) stop the accept loop
/// for the whole `HANDSHAKE_TIMEOUT`, over and over. Nobody can reach the API, so nobody can
/// revoke a grant: the attacker can be the engineer whose access is being revoked.
#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_do_not_lock_everyone_out_of_the_api() {
    let h = https_env("atk_tls_slots", "").await;
    let alice = h.client("alice");
    alice
        .whoami()
        .await
        .expect("the API answers before the attack");
    let mut silent = Vec::new();
    for _ in 0..520 {
        silent.push(TcpStream::connect(h.api_addr()).await.expect("connect"));
    }
    // Give the accept loop time to take them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new client: the one above would reuse its pooled connection.
    let fresh = h.client("alice");
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), fresh.whoami()).await;
    assert!(
        matches!(answer, Ok(Ok(_))),
        "with 520 idle TCP connections open, an admin's request got no answer in {:?} \
         ({answer:?})",
        started.elapsed()
    );
    drop(silent);
}

async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

/// Once the handshake is done the slot is given back and the connection belongs to hyper,
/// which axum::serve runs without a timer: no header-read timeout, no idle timeout. A
/// connection that finishes TLS and then sends nothing, or half a request head, is kept
/// forever (file descriptor, task, TLS buffers), with no cap on how many.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_never_finishes_its_request_is_closed() {
    let h = https_env("atk_tls_idle", "").await;
    let mut idle = tls_connect(h.api_addr(), &h.ca).await.expect("handshake");
    let mut slow = tls_connect(h.api_addr(), &h.ca).await.expect("handshake");
    slow.write_all(b"GET /v1/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("half a head");
    // hyper's own default header-read timeout is 30 s (when it has a timer); allow more.
    let wait = Duration::from_secs(45);
    let (mut buf_a, mut buf_b) = ([0u8; 64], [0u8; 64]);
    let (a, b) = tokio::join!(
        tokio::time::timeout(wait, idle.read(&mut buf_a)),
        tokio::time::timeout(wait, slow.read(&mut buf_b)),
    );
    assert!(
        a.is_ok() && b.is_ok(),
        "after {wait:?} the server still holds a connection that sent no request (closed: \
         {}) and one that sent half a request head (closed: {})",
        a.is_ok(),
        b.is_ok()
    );
}

/// The `lockbox serve` this test started, stopped (by its own handle) however the test ends.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The consequence of the above, end to end: `lockbox serve` under a file-descriptor limit
/// (300 here; systemd's default soft limit is 1024), and one unauthenticated client
/// opening TLS connections to the API and leaving them idle. Once the descriptors are
/// gone the process cannot accept anything: the API is down and so is the data plane (the
/// proxy shares the process), with no session possible until the attacker lets go.
#[tokio::test(flavor = "multi_thread")]
async fn idle_tls_connections_to_the_api_cannot_take_down_the_proxy() {
    let h = https_deployment("atk_tls_fds", "");
    let mut child = KillOnDrop(
        Command::new("prlimit")
            .arg("--nofile=300:300")
            .arg(env!("CARGO_BIN_EXE_lockbox"))
            .arg("serve")
            .arg("--config")
            .arg(&h.env.config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start lockbox serve"),
    );
    let alice = h.client("alice");
    let deadline = Instant::now() + Duration::from_secs(30);
    while alice.whoami().await.is_err() {
        assert!(Instant::now() < deadline, "lockbox serve did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let proxy = SocketAddr::from(([127, 0, 0, 1], h.env.proxy_port()));
    // The proxy answers an SSLRequest with 'S' before the attack.
    async fn proxy_answers(proxy: SocketAddr) -> bool {
        let attempt = async {
            let mut s = TcpStream::connect(proxy).await.ok()?;
            s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
                .await
                .ok()?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            Some(b[0])
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), attempt).await,
            Ok(Some(b'S'))
        )
    }
    assert!(proxy_answers(proxy).await, "proxy up before the attack");

    let mut held = Vec::new();
    for _ in 0..400 {
        match tokio::time::timeout(Duration::from_secs(2), tls_connect(h.api_addr(), &h.ca)).await {
            Ok(Ok(tls)) => held.push(tls),
            _ => break,
        }
    }
    let held_count = held.len();
    // A new client: `alice` would reuse its pooled connection.
    let api_up = matches!(
        tokio::time::timeout(Duration::from_secs(5), h.client("alice").whoami()).await,
        Ok(Ok(_))
    );
    let proxy_up = proxy_answers(proxy).await;
    child.stop();
    drop(held);
    assert!(
        api_up && proxy_up,
        "after {held_count} idle TLS connections to the API (no credentials): API answers: \
         {api_up}, proxy answers: {proxy_up}"
    );
}

// ---------------------------------------------------------------------------------------
// Unauthenticated surface, now reachable from the network.
// ---------------------------------------------------------------------------------------

/// `/v1/health` takes no credentials. On loopback that was harmless; with HTTPS the API
/// listens on the network, and anyone reaching it learns how many engineers are inside
/// customer databases right now (`live_sessions`, pollable) and, with `[audit.postgres]`,
/// the audit sink's `last_error` (PostgreSQL's words: host, role, database). A probe needs
/// only up/down.
#[tokio::test(flavor = "multi_thread")]
async fn health_tells_an_anonymous_caller_nothing_about_sessions() {
    let h = https_env("atk_tls_health", "").await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&h.ca).expect("ca")).expect("ca");
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let body = http
        .get(format!("{}/v1/health", h.url))
        .send()
        .await
        .expect("health")
        .text()
        .await
        .expect("body");
    assert!(
        !body.contains("live_sessions") && !body.contains("last_error"),
        "an unauthenticated caller reads: {body}"
    );
}

// ---------------------------------------------------------------------------------------
// What held up (kept as regression checks).
// ---------------------------------------------------------------------------------------

/// Plain HTTP, garbage, a truncated and an oversized ClientHello to the HTTPS port: none
/// stops the API, and plain HTTP gets no answer in clear.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_the_https_port_neither_answers_in_clear_nor_breaks_the_api() {
    let h = https_env("atk_tls_garbage", "").await;
    let key = &h.env.deployment.api_keys["alice"];
    // Plain HTTP with the key: no HTTP answer comes back in clear.
    let mut plain = TcpStream::connect(h.api_addr()).await.expect("connect");
    plain
        .write_all(
            format!("GET /v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1"),
        "answered plain HTTP: {answer:?}"
    );
    // A TLS record header announcing a 16 MiB handshake, then bytes; random garbage.
    let mut huge = TcpStream::connect(h.api_addr()).await.expect("connect");
    let mut hello = vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0xff, 0xff, 0xff];
    hello.extend(std::iter::repeat_n(0x41, 70_000));
    let _ = huge.write_all(&hello).await;
    let mut junk = TcpStream::connect(h.api_addr()).await.expect("connect");
    let _ = junk.write_all(&[0xffu8; 100_000]).await;
    let mut truncated = TcpStream::connect(h.api_addr()).await.expect("connect");
    let _ = truncated
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01])
        .await;
    drop(truncated);
    let who = tokio::time::timeout(Duration::from_secs(5), h.client("alice").whoami())
        .await
        .expect("answered in time")
        .expect("whoami");
    assert_eq!(who.name, "alice");
}

/// The CLI checks the server's name, and an empty or key-only `--ca-cert` does not fall
/// back to the public roots.
#[tokio::test(flavor = "multi_thread")]
async fn name_checked_and_a_bad_ca_file_is_an_error() {
    let h = https_env("atk_tls_names", "").await;
    let key = h.env.deployment.api_keys["alice"].clone();
    // The certificate names 127.0.0.1 only.
    let by_name = format!("https://localhost:{}", h.env.deployment.api_port);
    let err = ApiClient::with_ca(&by_name, &key, Some(&h.ca))
        .expect("client")
        .whoami()
        .await
        .expect_err("a certificate for 127.0.0.1 accepted for localhost");
    assert!(err.to_string().contains("host name"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("empty.pem"), "").expect("write");
    let (_, _, key_pem) = write_ca_signed(dir.path(), &["127.0.0.1"]);
    for bad in [dir.path().join("empty.pem"), key_pem] {
        assert!(
            ApiClient::with_ca(&h.url, &key, Some(&bad)).is_err(),
            "{} accepted as a CA",
            bad.display()
        );
    }
    // An empty LOCKBOX_CA_CERT: the CLI must not quietly use the public roots instead.
    let out = run_cli(
        vec!["request".into(), "list".into()],
        vec![
            ("LOCKBOX_SERVER", h.url.clone()),
            ("LOCKBOX_API_KEY", key.clone()),
            ("LOCKBOX_CA_CERT", String::new()),
        ],
    )
    .await;
    assert!(
        !out.status.success(),
        "whoami without a usable CA succeeded"
    );
}
