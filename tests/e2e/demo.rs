//! `lockbox demo` as the README uses it from another terminal: its env file gives a
//! verified (`verify-full`) connection, it takes no plaintext, and it leaves nothing on disk
//! however it stops.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::init::{as_user, failed, mode, ok, psql, s, stop};

/// `lockbox demo --keep --env-file`, as the README uses it from another terminal.
struct Demo {
    child: Child,
    log: PathBuf,
    env_file: PathBuf,
    /// The demo's TMPDIR: its PostgreSQL and its deployment (keys, passwords) go here.
    sandbox: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("demo.log");
        let env_file = tmp.path().join("demo.env");
        let sandbox = tmp.path().join("sandbox");
        std::fs::create_dir(&sandbox).expect("sandbox folder");
        // PostgreSQL runs as `postgres` under root: it must reach its folder in here.
        for dir in [tmp.path(), &sandbox] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let child = Command::new(env!("CARGO_BIN_EXE_lockbox"))
            .arg("demo")
            .args(args)
            .args(["--env-file", s(&env_file)])
            .env("TMPDIR", &sandbox)
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("demo");
        Demo {
            child,
            log,
            env_file,
            sandbox,
            _tmp: tmp,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the demo's log says `what`.
    fn wait_for(&mut self, what: &str) {
        for _ in 0..1200 {
            if self.log().contains(what) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the demo exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the demo never said {what:?}:\n{}", self.log());
    }

    /// The env file's variables.
    fn env(&self) -> std::collections::BTreeMap<String, String> {
        std::fs::read_to_string(&self.env_file)
            .expect("env file")
            .lines()
            .filter_map(|l| {
                let (name, value) = l.strip_prefix("export ")?.split_once('=')?;
                Some((name.to_owned(), value.trim_matches('\'').to_owned()))
            })
            .collect()
    }
}

/// A test that fails midway still stops its demo (and so its PostgreSQL): a demo left
/// running would hold the test's output open and its ports.
impl Drop for Demo {
    fn drop(&mut self) {
        // Nothing here may panic: this may run while a failed assertion unwinds.
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-s", "TERM", &pid]).status();
            let _ = self.child.wait();
        }
    }
}

impl Demo {
    /// Stops the demo with `signal` and checks it left nothing: no env file (API keys), and
    /// nothing in its TMPDIR (PostgreSQL, the deployment's keys and passwords).
    fn stop_and_check_cleanup(&mut self, signal: &str) -> std::process::ExitStatus {
        let status = stop(&mut self.child, signal);
        assert!(self.log().contains("Cleaning up"), "{}", self.log());
        assert!(!self.env_file.exists(), "the env file (API keys) is left");
        let left: Vec<PathBuf> = std::fs::read_dir(&self.sandbox)
            .expect("sandbox")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        status
    }
}

/// Signs in to the admin center at `server` (trusting `ca`); returns the session's
/// `Set-Cookie`.
fn admin_center_cookie(server: &str, ca: &Path, key: &str) -> String {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).expect("ca")).expect("ca");
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let signed = crate::web::http::login(&http, server, "api_key", key).await;
        assert_eq!(signed.status(), 303);
        signed.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .to_owned()
    })
}

#[test]
fn demo_env_file_connects_verify_full_and_sigterm_cleans_up() {
    // The default window: the walk-through's session must fit in it on a loaded machine.
    let mut demo = Demo::start(&["--keep"]);
    demo.wait_for("The sandbox keeps running");
    assert_eq!(mode(&demo.env_file), 0o600, "the env file holds API keys");
    let env = demo.env();
    let ca = Path::new(&env["LOCKBOX_CA_CERT"]);
    assert!(ca.exists(), "LOCKBOX_CA_CERT names no file");

    let server = &env["LOCKBOX_SERVER"];
    assert!(
        server.starts_with("https://"),
        "the demo's API serves HTTPS: {server}"
    );
    // The admin center's URL and the keys to sign in with are on the demo's output.
    let log = demo.log();
    assert!(log.contains(&format!("Admin center: {server}/")), "{log}");
    assert!(
        log.contains(&format!(
            "carol  (approver): {}",
            env["LOCKBOX_APPROVER_KEY"]
        )),
        "{log}"
    );
    // Served over HTTPS, the admin center's session cookie is `Secure`.
    let cookie = admin_center_cookie(server, ca, &env["LOCKBOX_APPROVER_KEY"]);
    for part in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let id = ok(as_user(
        server,
        ca,
        &env["LOCKBOX_ENGINEER_KEY"],
        &[
            "request",
            "create",
            "--database",
            "sales",
            "--ticket",
            "SUP-1",
            "--reason",
            "check",
            "--access",
            "read",
            "--duration",
            "30m",
        ],
    ));
    ok(as_user(
        server,
        ca,
        &env["LOCKBOX_APPROVER_KEY"],
        &["request", "approve", &id, "--reason", "ok"],
    ));
    let token = ok(as_user(
        server,
        ca,
        &env["LOCKBOX_ENGINEER_KEY"],
        &["token", &id],
    ));
    let conninfo = |sslmode: &str| {
        format!(
            "host={} port={} dbname=sales user={} sslmode={sslmode} sslrootcert={}",
            env["LOCKBOX_PROXY_HOST"],
            env["LOCKBOX_PROXY_PORT"],
            env["LOCKBOX_ENGINEER"],
            ca.display()
        )
    };
    let count = ok(psql(
        &conninfo("verify-full"),
        &token,
        "SELECT count(*) FROM customers",
    ));
    assert_eq!(count, "4");
    // Ordinary read-only work on the demo's database, under its rules (deny_drop and the
    // like, nothing off limits): the planner's statistics, as GUI clients' statistics tabs
    // read them, and a dump, which reads each sequence's value (an attack review found both
    // refused: the read role could not read `customers_id_seq`, and `pg_stats` counted as
    // running the database's code).
    let stats = ok(psql(
        &conninfo("verify-full"),
        &token,
        "SELECT count(*) FROM pg_stats, pg_sequences",
    ));
    assert!(stats.parse::<u64>().is_ok(), "{stats}");
    let bin = lockbox::sandbox::find_server_binaries().expect("pg_dump is installed");
    let dump = Command::new(bin.join("pg_dump"))
        .arg(conninfo("verify-full"))
        .env("PGPASSWORD", &token)
        .output()
        .expect("run pg_dump");
    let dumped = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(dumped.contains("CREATE TABLE public.customers"), "{dumped}");
    assert!(dumped.contains("customers_id_seq"), "{dumped}");
    // Like production, the demo takes no token over plaintext, not even from loopback.
    let refused = failed(psql(&conninfo("disable"), &token, "SELECT 1"));
    assert!(refused.contains("only accepted over TLS"), "{refused}");

    let status = demo.stop_and_check_cleanup("TERM");
    assert!(
        status.success(),
        "the demo ended with {status}:\n{}",
        demo.log()
    );
}

#[test]
fn demo_interrupted_midway_leaves_nothing_behind() {
    // A long window: the walk-through is still waiting for it when Ctrl-C comes.
    let mut demo = Demo::start(&["--window", "10m"]);
    demo.wait_for("Waiting for the");
    let status = demo.stop_and_check_cleanup("INT");
    assert!(!status.success(), "an interrupted demo reports it");
}

#[test]
fn demo_stopped_while_postgres_starts_leaves_nothing_behind() {
    let mut demo = Demo::start(&[]);
    demo.wait_for("Starting a throwaway PostgreSQL server");
    let status = demo.stop_and_check_cleanup("TERM");
    assert!(!status.success(), "an interrupted demo reports it");
}

#[test]
fn demo_with_three_nodes_shares_one_state_and_lists_them() {
    let mut demo = Demo::start(&["--keep", "--nodes", "3"]);
    demo.wait_for("The sandbox keeps running");
    let env = demo.env();
    let ca = Path::new(&env["LOCKBOX_CA_CERT"]);
    assert_eq!(env["LOCKBOX_NODE1_SERVER"], env["LOCKBOX_SERVER"]);
    assert_eq!(env["LOCKBOX_NODE1_PROXY_PORT"], env["LOCKBOX_PROXY_PORT"]);
    for i in 2..=3 {
        assert!(env[&format!("LOCKBOX_NODE{i}_SERVER")].starts_with("https://"));
        assert_ne!(
            env[&format!("LOCKBOX_NODE{i}_PROXY_PORT")],
            env["LOCKBOX_PROXY_PORT"]
        );
    }
    // A request filed on node 2 is the one node 3 shows: one state.
    let id = ok(as_user(
        &env["LOCKBOX_NODE2_SERVER"],
        ca,
        &env["LOCKBOX_ENGINEER_KEY"],
        &[
            "request",
            "create",
            "--database",
            "sales",
            "--ticket",
            "SUP-2",
            "--reason",
            "check",
            "--access",
            "read",
            "--duration",
            "30m",
        ],
    ));
    let shown = ok(as_user(
        &env["LOCKBOX_NODE3_SERVER"],
        ca,
        &env["LOCKBOX_APPROVER_KEY"],
        &["request", "show", &id],
    ));
    assert!(shown.contains(&id), "{shown}");
    // Every node's heartbeat reaches the others (every 2 s).
    let mut listed = String::new();
    for _ in 0..50 {
        listed = ok(as_user(
            &env["LOCKBOX_NODE3_SERVER"],
            ca,
            &env["LOCKBOX_ADMIN_KEY"],
            &["status"],
        ));
        if ["node-1", "node-2", "node-3 (this)"]
            .iter()
            .all(|n| listed.contains(n))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for node in ["node-1", "node-2", "node-3 (this)"] {
        assert!(listed.contains(node), "{listed}");
    }
    let status = demo.stop_and_check_cleanup("TERM");
    assert!(status.success(), "{}", demo.log());
}
