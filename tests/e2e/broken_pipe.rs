//! A reader that stops early (`lockbox audit list | head`): the CLI ends quietly, without a
//! panic, with the verb's own exit status.

use std::process::{Command, Output, Stdio};

use crate::harness::Env;

/// Runs lockbox with standard output a pipe whose reader is already gone, so the first
/// write meets EPIPE whatever the amount of output.
fn closed_pipe_run(env: &Env, user: &str, args: &[&str]) -> Output {
    // The write end of a pipe whose reader (`true`, which reads nothing) has exited.
    let mut reader = Command::new("true")
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn true");
    let writer = reader.stdin.take().expect("pipe to true");
    assert!(reader.wait().expect("wait for true").success());
    let child = Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(args)
        .env("LOCKBOX_SERVER", env.deployment.server_url())
        .env(
            "LOCKBOX_API_KEY",
            env.deployment
                .api_keys
                .get(user)
                .map(String::as_str)
                .unwrap_or("none"),
        )
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockbox");
    // `--follow` never ends by itself: a hang here is the failure this test looks for.
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    waited
        .recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("lockbox {args:?} kept running after its reader left"))
        .expect("wait for lockbox")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_output_path_ends_quietly_when_the_reader_leaves() {
    let env = Env::start("cli_broken_pipe").await;
    let (id, _token) = env.approved_token("eve", "1h").await;
    for (user, args) in [
        ("dave", vec!["audit", "list"]),
        ("dave", vec!["audit", "list", "--format", "table"]),
        ("dave", vec!["audit", "list", "--format", "csv"]),
        ("dave", vec!["audit", "list", "--request", &id, "--follow"]),
        ("eve", vec!["request", "list"]),
        ("eve", vec!["--json", "request", "show", &id]),
        ("eve", vec!["token", &id]),
        ("eve", vec!["keygen", "api-key"]),
    ] {
        let out = closed_pipe_run(&env, user, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_verify_still_fails_when_its_reader_left() {
    let env = Env::start("cli_broken_pipe_verify").await;
    let (id, _token) = env.approved_token("eve", "1h").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("audit.jsonl");
    let text = std::fs::read_to_string(&env.audit_path).expect("audit");
    std::fs::write(&copy, text.replacen(&id, "req-tampered", 1)).expect("tamper");
    // `audit verify | head -1`: the summary may be all the reader wants, yet the broken
    // chain must still fail the command.
    let out = closed_pipe_run(
        &env,
        "dave",
        &["audit", "verify", copy.to_str().expect("utf-8 path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.status.success(), "a broken chain exits non-zero");
    assert!(stderr.contains("failed verification"), "{stderr}");
}
