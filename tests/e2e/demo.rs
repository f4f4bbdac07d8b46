//! `lockbox demo` as the README uses it from another terminal: its env file gives a
//! verified (`verify-full`) connection, it takes no plaintext, and it leaves nothing on disk
//! however it stops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::init::{as_user, failed, mode, ok, psql, s, stop};

/// `lockbox demo --keep --env-file`, as the README uses it from another terminal.
struct Demo {
    child: Child,
    log: PathBuf,
    env_file: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("demo.log");
        let env_file = tmp.path().join("demo.env");
        let child = Command::new(env!("CARGO_BIN_EXE_lockbox"))
            .arg("demo")
            .args(args)
            .args(["--env-file", s(&env_file)])
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("demo");
        Demo {
            child,
            log,
            env_file,
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

/// Where the demo's PostgreSQL keeps its files (removed at the end).
fn demo_pg_folder(env: &std::collections::BTreeMap<String, String>) -> PathBuf {
    let out = ok(psql(
        &env["LOCKBOX_UPSTREAM_URL"],
        "",
        "SHOW data_directory",
    ));
    PathBuf::from(out)
        .parent()
        .expect("data directory has a parent")
        .to_owned()
}

fn assert_cleaned_up(env_file: &Path, env: &std::collections::BTreeMap<String, String>, pg: &Path) {
    let deployment = Path::new(&env["LOCKBOX_CONFIG"])
        .parent()
        .expect("config folder")
        .to_owned();
    assert!(!env_file.exists(), "the env file (API keys) is left");
    assert!(
        !deployment.exists(),
        "the deployment (signing key, passwords) is left: {}",
        deployment.display()
    );
    assert!(
        !pg.exists(),
        "PostgreSQL's folder is left: {}",
        pg.display()
    );
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
    let pg = demo_pg_folder(&env);

    let server = &env["LOCKBOX_SERVER"];
    let id = ok(as_user(
        server,
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
        &env["LOCKBOX_APPROVER_KEY"],
        &["request", "approve", &id, "--reason", "ok"],
    ));
    let token = ok(as_user(
        server,
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
    // Like production, the demo takes no token over plaintext, not even from loopback.
    let refused = failed(psql(&conninfo("disable"), &token, "SELECT 1"));
    assert!(refused.contains("only accepted over TLS"), "{refused}");

    let status = stop(&mut demo.child, "TERM");
    assert!(
        status.success(),
        "the demo ended with {status}:\n{}",
        demo.log()
    );
    assert_cleaned_up(&demo.env_file, &env, &pg);
}

#[test]
fn demo_interrupted_midway_leaves_nothing_behind() {
    // A long window: the walk-through is still waiting for it when Ctrl-C comes.
    let mut demo = Demo::start(&["--window", "10m"]);
    demo.wait_for("Waiting for the");
    let env = demo.env();
    let pg = demo_pg_folder(&env);
    let status = stop(&mut demo.child, "INT");
    assert!(!status.success(), "an interrupted demo reports it");
    assert!(demo.log().contains("Cleaning up"), "{}", demo.log());
    assert_cleaned_up(&demo.env_file, &env, &pg);
}
