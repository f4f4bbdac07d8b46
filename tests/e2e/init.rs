//! A first run as the README describes it: `lockbox keygen`, `lockbox init`, `lockbox config
//! check`, `lockbox serve` on the generated files, and an engineer's session verified with
//! `sslmode=verify-full`; the shipped `config/` checked with its files made.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::harness;

fn lockbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(args)
        .output()
        .expect("run lockbox")
}

pub(crate) fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub(crate) fn failed(out: Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

pub(crate) fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

pub(crate) fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Runs psql (libpq, the client engineers use) with `conninfo` and `PGPASSWORD`.
pub(crate) fn psql(conninfo: &str, password: &str, sql: &str) -> Output {
    let bin = lockbox::sandbox::find_server_binaries().expect("psql is installed");
    Command::new(bin.join("psql"))
        .args(["-X", "-A", "-t", "-c", sql, conninfo])
        .env("PGPASSWORD", password)
        .output()
        .expect("run psql")
}

/// Waits until something listens on `port` (the child must still be running).
fn wait_for_port(port: u16, child: &mut Child, log: &Path) {
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "lockbox exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {port}");
}

/// Sends `signal` to a child this test started and waits for it to exit.
pub(crate) fn stop(child: &mut Child, signal: &str) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    child.wait().expect("wait")
}

/// The names of a process's session threads (`lockbox-sess-N`).
fn session_threads(pid: u32) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("lockbox-sess-"))
        .collect()
}

/// The API keys `lockbox init` wrote, by user.
fn api_keys(dir: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("api-keys"))
        .expect("api-keys")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (user, rest) = l.split_once('=')?;
            Some((user.to_owned(), rest.split_whitespace().next()?.to_owned()))
        })
        .collect()
}

/// The SQL block `lockbox init` prints for the upstream roles.
fn printed_sql(stdout: &str) -> String {
    let start = stdout
        .find("-- lockbox: upstream roles")
        .expect("the SQL is printed");
    let end = stdout[start..]
        .find("-- lockbox: end of upstream roles")
        .expect("the SQL ends")
        + start;
    stdout[start..end].to_owned()
}

/// A CLI call against a running API as `key`.
pub(crate) fn as_user(server: &str, ca: &Path, key: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(args)
        .env("LOCKBOX_SERVER", server)
        .env("LOCKBOX_CA_CERT", ca)
        .env("LOCKBOX_API_KEY", key)
        .output()
        .expect("run lockbox")
}

#[test]
fn init_then_check_serve_request_connect_verified_and_audit() {
    let pg = harness::cluster();
    // init asks for TLS towards the upstream by default: the shared cluster gets it.
    harness::cluster_ca();
    let db = "t_init_flow";
    pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"))
        .expect("drop");
    pg.psql("postgres", &format!("CREATE DATABASE {db}"))
        .expect("create database");
    pg.psql(
        db,
        "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'a'), (2, 'b');",
    )
    .expect("create table");

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("deployment");
    let proxy_port = lockbox::sandbox::free_port().expect("port");
    let api_port = lockbox::sandbox::free_port().expect("port");
    // Adjusted for the test only: its ports and the test cluster's address.
    let stdout = ok(lockbox(&[
        "init",
        s(&dir),
        "--host",
        "127.0.0.1",
        "--host",
        "localhost",
        "--proxy-listen",
        &format!("127.0.0.1:{proxy_port}"),
        "--api-listen",
        &format!("127.0.0.1:{api_port}"),
        "--upstream",
        &format!("127.0.0.1:{}", pg.port),
        "--database",
        db,
    ]));
    for secret in [
        "signing-key.pem",
        "ca-key.pem",
        "proxy-key.pem",
        "api-keys",
        &format!("{db}.password"),
        &format!("{db}-read.password"),
        &format!("{db}-write.password"),
    ] {
        assert_eq!(mode(&dir.join(secret)), 0o600, "{secret}");
    }
    assert!(stdout.contains("sslmode=verify-full"), "{stdout}");
    assert!(stdout.contains("lockbox config check --config"), "{stdout}");
    pg.psql(db, &printed_sql(&stdout))
        .expect("the printed SQL runs");

    let config = dir.join("lockbox.toml");
    let checked = ok(lockbox(&["config", "check", "--config", s(&config)]));
    assert!(
        checked.contains("ok (1 database(s), 5 user(s))"),
        "{checked}"
    );

    let log = tmp.path().join("serve.log");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["serve", "--config", s(&config)])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("serve");
    wait_for_port(api_port, &mut serve, &log);
    wait_for_port(proxy_port, &mut serve, &log);
    // Sessions run on threads of their own, one per CPU by default (`[proxy] threads`).
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let expected: std::collections::BTreeSet<String> =
        (0..cpus).map(|i| format!("lockbox-sess-{i}")).collect();
    assert_eq!(session_threads(serve.id()), expected);

    let keys = api_keys(&dir);
    // The API serves HTTPS with init's certificate; the CLI trusts init's CA.
    let server = format!("https://127.0.0.1:{api_port}");
    let ca = dir.join("ca.pem");
    let id = ok(as_user(
        &server,
        &ca,
        &keys["eve"],
        &[
            "request",
            "create",
            "--database",
            db,
            "--ticket",
            "T-1",
            "--reason",
            "first run",
            "--access",
            "read",
            "--duration",
            "30m",
        ],
    ));
    ok(as_user(
        &server,
        &ca,
        &keys["carol"],
        &["request", "approve", &id, "--reason", "ok"],
    ));
    let token = ok(as_user(&server, &ca, &keys["eve"], &["token", &id]));

    let ca = dir.join("ca.pem");
    let conninfo = |host: &str, ca: &Path| {
        format!(
            "host={host} port={proxy_port} dbname={db} user=eve sslmode=verify-full sslrootcert={}",
            ca.display()
        )
    };
    for host in ["127.0.0.1", "localhost"] {
        let rows = ok(psql(
            &conninfo(host, &ca),
            &token,
            "SELECT count(*) FROM items",
        ));
        assert_eq!(rows, "2", "{host}");
    }
    // verify-full really verifies: another CA's certificate is refused before the token is sent.
    let other_ca = tmp.path().join("other-ca.pem");
    std::fs::write(&other_ca, harness::cluster_ca()).expect("write");
    let refused = failed(psql(&conninfo("127.0.0.1", &other_ca), &token, "SELECT 1"));
    assert!(refused.contains("certificate verify failed"), "{refused}");

    let trail = ok(as_user(
        &server,
        &ca,
        &keys["dave"],
        &["audit", "list", "--request", &id],
    ));
    assert!(trail.contains("SELECT count(*) FROM items"), "{trail}");
    assert!(trail.contains("\"approved\""), "{trail}");

    let status = stop(&mut serve, "TERM");
    assert!(status.success(), "serve stopped with {status}");
}

#[test]
fn config_check_lists_every_problem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("d");
    ok(lockbox(&["init", s(&dir), "--database", "shop"]));
    let config = dir.join("lockbox.toml");
    ok(lockbox(&["config", "check", "--config", s(&config)]));
    // What `serve` loads besides the file, broken three ways, and a bad key in the file.
    std::fs::write(dir.join("signing-key.pem"), "not a key").expect("write");
    std::fs::write(dir.join("proxy-cert.pem"), "not a certificate").expect("write");
    std::fs::remove_file(dir.join("shop-read.password")).expect("remove");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("request_ttl = \"12h\"", "request_ttl = \"soon\""),
    )
    .expect("write");
    let stderr = failed(lockbox(&["config", "check", "--config", s(&config)]));
    for key in [
        "token.signing_key",
        "proxy.tls_cert",
        "databases[0].access.read.password_file",
        "timings.request_ttl",
    ] {
        assert!(
            stderr.contains(&format!("`{key}`")),
            "{key} missing: {stderr}"
        );
    }
    assert!(stderr.contains("4 problem(s)"), "{stderr}");
}

#[tokio::test]
async fn keygen_never_overwrites_and_writes_nothing_when_a_target_exists() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| tmp.path().join(name);
    ok(lockbox(&[
        "keygen",
        "ca",
        "--cert",
        s(&p("ca.pem")),
        "--key",
        s(&p("ca-key.pem")),
    ]));
    let paths: Vec<String> = ["cert.pem", "key.pem", "ca.pem", "ca-key.pem"]
        .iter()
        .map(|name| p(name).display().to_string())
        .collect();
    let signed = [
        "keygen",
        "tls-cert",
        "--cert",
        &paths[0],
        "--key",
        &paths[1],
        "--host",
        "db-proxy.example.com",
        "--ca-cert",
        &paths[2],
        "--ca-key",
        &paths[3],
    ];
    ok(lockbox(&signed));
    assert_eq!(mode(&p("ca-key.pem")), 0o600);
    assert_eq!(mode(&p("key.pem")), 0o600);
    let (cert, key) = (
        std::fs::read(p("cert.pem")).expect("cert"),
        std::fs::read(p("key.pem")).expect("key"),
    );
    let (ca, cert_path, key_path) = (p("ca.pem"), p("cert.pem"), p("key.pem"));
    let signed_by_ca = || handshake_verifies(&ca, &cert_path, &key_path, "db-proxy.example.com");
    assert!(
        signed_by_ca().await,
        "the certificate does not chain to the CA"
    );

    // Again: refused, and neither file of the pair changes.
    let stderr = failed(lockbox(&signed));
    assert!(stderr.contains("--force"), "{stderr}");
    // A new certificate beside an existing key: the certificate is not written either.
    let stderr = failed(lockbox(&[
        "keygen",
        "tls-cert",
        "--cert",
        s(&p("new-cert.pem")),
        "--key",
        s(&p("key.pem")),
    ]));
    assert!(stderr.contains("key.pem"), "{stderr}");
    assert!(!p("new-cert.pem").exists(), "half a pair was written");
    failed(lockbox(&[
        "keygen",
        "ca",
        "--cert",
        s(&p("ca.pem")),
        "--key",
        s(&p("other.pem")),
    ]));
    assert!(!p("other.pem").exists(), "half a pair was written");
    assert_eq!(std::fs::read(p("cert.pem")).expect("cert"), cert);
    assert_eq!(std::fs::read(p("key.pem")).expect("key"), key);
    ok(lockbox(&[
        "keygen",
        "signing-key",
        "--out",
        s(&p("signing.pem")),
    ]));
    failed(lockbox(&[
        "keygen",
        "signing-key",
        "--out",
        s(&p("signing.pem")),
    ]));

    // --force replaces the pair, still 0600.
    let mut forced = signed.to_vec();
    forced.push("--force");
    ok(lockbox(&forced));
    assert_ne!(std::fs::read(p("key.pem")).expect("key"), key);
    assert_eq!(mode(&p("key.pem")), 0o600);
    assert!(
        signed_by_ca().await,
        "the new pair does not chain to the CA"
    );
}

#[test]
fn init_refuses_a_folder_that_is_not_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("notes.txt"), "mine").expect("write");
    let stderr = failed(lockbox(&["init", s(tmp.path())]));
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(!tmp.path().join("lockbox.toml").exists());
    ok(lockbox(&["init", s(tmp.path()), "--force"]));
    assert!(tmp.path().join("lockbox.toml").exists());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("notes.txt")).expect("notes"),
        "mine"
    );
}

#[test]
fn init_refuses_bad_flags_before_writing_anything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("d");
    for (flags, says) in [
        (&["--proxy-listen", "nowhere"][..], "--proxy-listen"),
        (&["--api-listen", "8432"][..], "--api-listen"),
        (&["--upstream", "db.internal"][..], "--upstream"),
        (&["--database", "Sales; DROP"][..], "--database"),
        (&["--upstream-tls", "sometimes"][..], "--upstream-tls"),
    ] {
        let mut args = vec!["init", s(&dir)];
        args.extend_from_slice(flags);
        let stderr = failed(lockbox(&args));
        assert!(stderr.contains(says), "{says} not in {stderr}");
        assert!(!dir.exists(), "{flags:?}: something was written");
    }
}

/// Whether a client trusting `ca` completes a TLS handshake with a server presenting
/// `cert`/`key` under the name `host` (libpq's verify-full, in rustls).
async fn handshake_verifies(ca: &Path, cert: &Path, key: &Path, host: &str) -> bool {
    let server = lockbox::tls::server_config(cert, key).expect("server config");
    let client = lockbox::tls::client_config_verified(ca, true).expect("client config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accept = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let _ = tokio_rustls::TlsAcceptor::from(server).accept(socket).await;
    });
    let socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).expect("name");
    let verified = tokio_rustls::TlsConnector::from(client)
        .connect(name, socket)
        .await
        .is_ok();
    accept.await.expect("accept task");
    verified
}

#[tokio::test]
async fn init_signs_with_an_existing_ca_and_leaves_its_key_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ca, ca_key) = (
        tmp.path().join("corp-ca.pem"),
        tmp.path().join("corp-ca.key"),
    );
    ok(lockbox(&[
        "keygen",
        "ca",
        "--cert",
        s(&ca),
        "--key",
        s(&ca_key),
    ]));
    let dir = tmp.path().join("d");
    ok(lockbox(&[
        "init",
        s(&dir),
        "--host",
        "db-proxy.example.com",
        "--ca-cert",
        s(&ca),
        "--ca-key",
        s(&ca_key),
    ]));
    assert!(!dir.join("ca-key.pem").exists(), "the CA's key was copied");
    assert_eq!(
        std::fs::read(dir.join("ca.pem")).expect("ca.pem"),
        std::fs::read(&ca).expect("CA")
    );
    let (cert, key) = (dir.join("proxy-cert.pem"), dir.join("proxy-key.pem"));
    assert!(handshake_verifies(&ca, &cert, &key, "db-proxy.example.com").await);
    assert!(!handshake_verifies(&ca, &cert, &key, "elsewhere.example.com").await);
    // A certificate of another CA is refused: the check above can fail.
    let other = tmp.path().join("other");
    ok(lockbox(&[
        "init",
        s(&other),
        "--host",
        "db-proxy.example.com",
    ]));
    assert!(
        !handshake_verifies(
            &ca,
            &other.join("proxy-cert.pem"),
            &other.join("proxy-key.pem"),
            "db-proxy.example.com"
        )
        .await
    );
    ok(lockbox(&[
        "config",
        "check",
        "--config",
        s(&dir.join("lockbox.toml")),
    ]));
}

/// The shipped example is complete: with the files its header names, `config check` passes.
#[test]
fn the_shipped_config_checks_once_its_files_exist() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lockbox.toml");
    std::fs::copy(&shipped, tmp.path().join("lockbox.toml")).expect("copy");
    // The commands README's "Running it for real" gives for one piece at a time.
    for command in [
        "keygen signing-key --out signing-key.pem",
        "keygen ca --cert ca.pem --key ca-key.pem",
        "keygen tls-cert --cert proxy-cert.pem --key proxy-key.pem --ca-cert ca.pem --ca-key ca-key.pem",
        "keygen tls-cert --cert api-cert.pem --key api-key.pem --host 127.0.0.1 --ca-cert ca.pem --ca-key ca-key.pem",
    ] {
        let args: Vec<&str> = command.split(' ').collect();
        ok(Command::new(env!("CARGO_BIN_EXE_lockbox"))
            .args(&args)
            .current_dir(tmp.path())
            .output()
            .expect("run lockbox"));
    }
    for file in [
        "sales.password",
        "sales-read.password",
        "sales-write.password",
    ] {
        std::fs::write(tmp.path().join(file), "secret").expect("write");
    }
    let out = ok(lockbox(&[
        "config",
        "check",
        "--config",
        s(&tmp.path().join("lockbox.toml")),
    ]));
    assert!(out.contains("ok (1 database(s), 5 user(s))"), "{out}");
}
