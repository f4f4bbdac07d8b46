//! `[proxy] max_connections` and the per-source failed-login limit.

use crate::harness::{db_error, Env, Options, Raw};

/// Starts lockbox with `keys` added to the test deployment's `[proxy]` table.
pub(crate) async fn start_with_proxy_keys(name: &str, keys: &str) -> Env {
    let mut env = Env::prepare(name, Options::default());
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    assert!(text.contains("[proxy]\n"));
    let text = text.replacen("[proxy]\n", &format!("[proxy]\n{keys}\n"), 1);
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn past_max_connections_a_client_gets_53300_before_any_login() {
    let env = start_with_proxy_keys("ops_maxconn", "max_connections = 2").await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let (first, _c1) = env.connect("eve", &token).await.expect("first");
    // A connection that has not logged in yet holds a slot too, but a full proxy sheds it
    // for a new connection rather than refuse that one (see `preauth::`).
    let mut idle = Raw::connect(env.proxy_port()).await;
    let (second, _c2) = env
        .connect("eve", &token)
        .await
        .expect("admitted in the place of the connection that had not logged in");
    assert!(idle.read_to_close().await.is_empty(), "it was closed");
    let refused = env
        .connect("eve", &token)
        .await
        .expect_err("the third connection is refused: two sessions hold the slots");
    let (code, message) = db_error(&refused);
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("max_connections"), "{message}");
    first
        .simple_query("SELECT 1")
        .await
        .expect("the first runs on");
    second
        .simple_query("SELECT 1")
        .await
        .expect("the second runs on");
    // Refused before any work: no login was looked at, so nothing was audited for it (the
    // sessions' `connected` records are in the file by their statements').
    let connected = env
        .audit()
        .iter()
        .filter(|r| r["event"] == "connected" || r["event"] == "authentication_failed")
        .count();
    assert_eq!(connected, 2, "only the two sessions reached login");
    // A cancel still goes through a full proxy.
    let cancel = first.cancel_token();
    let sleeper = tokio::spawn(async move {
        let result = first.simple_query("SELECT pg_sleep(60)").await;
        (first, result)
    });
    env.wait_for_audit("the sleep to start", |records| {
        records
            .iter()
            .any(|r| r["statement"] == "SELECT pg_sleep(60)")
    })
    .await;
    // The record is written before the statement is forwarded: wait until the server runs
    // it, or the cancel could reach an idle backend and be lost.
    env.wait_until_running("SELECT pg_sleep(60)").await;
    cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let (first, result) = tokio::time::timeout(std::time::Duration::from_secs(30), sleeper)
        .await
        .expect("the sleep was cancelled")
        .expect("join");
    assert_eq!(db_error(&result.expect_err("cancelled")).0, "57014");
    drop(first);
    drop(second);
    // Slots come back when connections end.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = env.connect("eve", &token).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a slot was given back");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_past_the_limit_are_refused_and_counted_not_recorded() {
    let mut env = start_with_proxy_keys(
        "ops_failed_logins",
        "failed_login_limit = 3\nfailed_login_window = \"10m\"",
    )
    .await;
    // A burst like round 1's: many bad tokens at once from one address.
    let attempts = (0..40).map(|_| env.connect("eve", "not-a-token"));
    let results = futures::future::join_all(attempts).await;
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for result in results {
        let Err(error) = result else {
            panic!("every attempt is refused");
        };
        *codes.entry(db_error(&error).0).or_default() += 1;
    }
    assert_eq!(codes.values().sum::<usize>(), 40);
    assert!(
        codes.keys().all(|c| c == "28P01" || c == "08004"),
        "{codes:?}"
    );
    // Past the limit the source is refused quickly, without its token being looked at.
    let late = env
        .connect("eve", "not-a-token")
        .await
        .expect_err("refused");
    let (code, message) = db_error(&late);
    assert_eq!(code, "08004", "{message}");
    assert!(message.contains("too many failed logins"), "{message}");
    // A valid token from the same address is still admitted: only failures are blocked
    // (finding 3 of the issue 11 review: garbage must not lock out a NAT's engineers).
    let (_id, token) = env.approved_token("eve", "1h").await;
    let admitted = env.connect("eve", &token).await;
    assert!(admitted.is_ok(), "{:?}", admitted.err());
    drop(admitted);

    // The window's summary is written when it ends, or at shutdown.
    env.stop().await;
    let records = env.audit();
    let failed = records
        .iter()
        .filter(|r| r["event"] == "authentication_failed")
        .count();
    assert_eq!(
        failed, 3,
        "only the first failed_login_limit are recorded one by one"
    );
    let summaries: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "logins_throttled")
        .collect();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let reason = summaries[0]["reason"].as_str().expect("reason");
    // 40 + 1 failed attempts, 3 of them recorded one by one.
    assert!(reason.starts_with("38 "), "{reason}");
    assert_eq!(summaries[0]["client_addr"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread")]
async fn completion_and_man_page_name_the_subcommands() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockbox"))
            .args(args)
            .output()
            .expect("run lockbox");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completion", shell]);
        for word in ["serve", "request", "session", "audit"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let page = run(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH lockbox 1"),
        "{page}"
    );
    for word in ["serve", "request", "session", "completion"] {
        assert!(page.contains(word), "man page lacks {word}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    run(&["man", "--out", &dir.path().display().to_string()]);
    for page in ["lockbox.1", "lockbox-serve.1", "lockbox-session.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(!text.is_empty(), "{page}");
    }
}
