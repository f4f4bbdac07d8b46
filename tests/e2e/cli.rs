//! The `lockbox` binary as a person or a script uses it.

use std::process::{Command, Output};

use crate::harness::Env;

/// Runs the `lockbox` binary as `user` against `env`'s server.
pub(crate) fn lockbox(env: &Env, user: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockbox"))
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
        .output()
        .expect("run lockbox")
}

/// The output of a run that must succeed, trimmed.
pub(crate) fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_lifecycle_from_the_command_line() {
    let env = Env::start("cli_flow").await;
    let id = ok(lockbox(
        &env,
        "eve",
        &[
            "request",
            "create",
            "--database",
            &env.db,
            "--ticket",
            "SUP-7",
            "--reason",
            "slow query",
            "--access",
            "read",
            "--duration",
            "15m",
        ],
    ));
    assert!(
        id.starts_with("req-") && !id.contains(char::is_whitespace),
        "only the id: {id:?}"
    );

    let pending = ok(lockbox(
        &env,
        "carol",
        &["request", "list", "--status", "pending", "--wide"],
    ));
    assert!(pending
        .lines()
        .next()
        .is_some_and(|h| h.contains("SUPPORT REQUEST")
            && h.contains("ACCESS EXPIRES")
            && h.contains("APPROVERS")));
    assert!(pending.contains(&id) && pending.contains("SUP-7"));

    ok(lockbox(
        &env,
        "carol",
        &["request", "approve", &id, "--reason", "go ahead"],
    ));
    let shown: serde_json::Value = serde_json::from_str(&ok(lockbox(
        &env,
        "eve",
        &["--json", "request", "show", &id],
    )))
    .expect("json");
    assert_eq!(shown["status"], "active", "approved and inside its window");
    assert_eq!(shown["decided_by"], "carol");

    let token = ok(lockbox(&env, "eve", &["token", &id]));
    assert_eq!(token.split('.').count(), 3, "stdout holds only the token");
    let (client, _conn) = env
        .connect("eve", &token)
        .await
        .expect("the printed token logs in");
    client.batch_execute("SELECT 42").await.expect("query");

    let audit = env
        .wait_for_audit("the statement", |records| {
            records.iter().any(|r| r["statement"] == "SELECT 42")
        })
        .await;
    assert!(!audit.is_empty());
    let lines = ok(lockbox(&env, "dave", &["audit", "list", "--request", &id]));
    let records: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(records.iter().all(|r| r["request_id"] == id.as_str()));
    assert!(records.iter().any(|r| r["statement"] == "SELECT 42"));
    let events: Vec<&str> = records.iter().filter_map(|r| r["event"].as_str()).collect();
    assert!(
        events.starts_with(&["created", "approved", "token_issued", "connected"]),
        "{events:?}"
    );

    ok(lockbox(
        &env,
        "carol",
        &["request", "revoke", &id, "--reason", "done"],
    ));
    let revoked = ok(lockbox(
        &env,
        "carol",
        &["request", "list", "--status", "revoked"],
    ));
    assert!(revoked.contains(&id));
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_exit_non_zero_with_a_message() {
    let env = Env::start("cli_errors").await;
    let out = lockbox(&env, "nobody", &["request", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown API key"));
    let out = lockbox(&env, "eve", &["token", "req-missing"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = lockbox(
        &env,
        "eve",
        &[
            "request",
            "create",
            "--database",
            &env.db,
            "--ticket",
            "T",
            "--reason",
            "r",
            "--access",
            "sudo",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown access level"));
}

#[test]
fn invalid_config_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |toml: &str, says: &str| {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, toml).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_lockbox"))
            .args(["config", "check", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{toml} should be rejected");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{says:?} not in {stderr:?}");
        assert!(!stderr.contains("panicked"));
    };
    let base = "[proxy]\nlisten = \"127.0.0.1:6432\"\nallow_plaintext_loopback = true\n[token]\nsigning_key = \"k.pem\"\n";
    check("[proxy]\nlisten = \"nowhere\"\nallow_plaintext_loopback = true\n[token]\nsigning_key = \"k\"\n", "proxy.listen");
    check(
        &format!("{base}[timings]\nrequest_ttl = \"soon\"\n"),
        "timings.request_ttl",
    );
    check(
        &format!("{base}[[users]]\nname = \"x\"\nroles = [\"engineer\"]\napi_key_hash = \"abc\"\n"),
        "users[0].api_key_hash",
    );
    check(
        &format!(
            "{base}[[users]]\nname = \"x\"\nroles = [\"king\"]\napi_key_hash = \"sha256:{}\"\n",
            "0".repeat(64)
        ),
        "unknown role `king`",
    );
    check(&format!("{base}surprise = 1\n"), "unknown field");
    check(
        &format!(
            "{base}[[rules]]\nname = \"a\"\ninternal_approvals = 1\n[[rules]]\nname = \"b\"\ninternal_approvals = 1\ninternal_role = \"dba\"\n"
        ),
        "rules[1].internal_role",
    );
    check(
        &format!("{base}[audit]\npath = \"a\"\ndurability = \"sometimes\"\n"),
        "unknown variant",
    );
    check(
        &format!("{base}[audit]\npath = \"a\"\nsync_interval = \"often\"\n"),
        "audit.sync_interval",
    );
    check(
        "[proxy]\nlisten = \"127.0.0.1:1\"\n[token]\nsigning_key = \"k\"\n",
        "proxy.tls_cert",
    );
    check(&format!("{base}[[databases]]\nname = \"d\"\nhost = \"h\"\nuser = \"u\"\npassword_file = \"/nonexistent/pw\"\n"),
        "databases[0].password_file");
    // Read grants would log in as the service role, which can write.
    check(
        &format!("{base}[[databases]]\nname = \"d\"\nhost = \"h\"\nuser = \"u\"\n"),
        "databases.d.access.read",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_list_filters_and_formats() {
    let env = Env::start("cli_audit_list").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .batch_execute("SELECT 42, 'a,b'")
        .await
        .expect("select");
    client
        .batch_execute("UPDATE items SET name = 'x'")
        .await
        .expect_err("refused under read");
    env.wait_for_audit("two outcomes", |records| {
        records
            .iter()
            .filter(|r| r["type"] == "outcome" && r["request_id"] == id.as_str())
            .count()
            == 2
    })
    .await;
    let list = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["audit", "list", "--request", id.as_str()];
        all.extend_from_slice(args);
        ok(lockbox(&env, "dave", &all))
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    let selects = list(&["--kind", "select"]);
    assert_eq!(selects.len(), 1, "{selects:#?}");
    assert_eq!(selects[0]["statement"], "SELECT 42, 'a,b'");
    let refused = list(&["--outcome", "refused"]);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["rule"], "read_only");
    let updates = list(&["--text", "UPDATE items"]);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0]["kind"], "update");
    assert!(list(&["--engineer", "bob"]).is_empty());
    assert!(list(&["--until", "2000-01-01T00:00:00Z"]).is_empty());

    let csv = ok(lockbox(
        &env,
        "dave",
        &[
            "audit",
            "list",
            "--request",
            &id,
            "--kind",
            "select",
            "--format",
            "csv",
        ],
    ));
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .is_some_and(|h| h.starts_with("seq,time,type,event")));
    let row = lines.next().expect("one row");
    assert!(
        row.contains("\"SELECT 42, 'a,b'\""),
        "fields with commas are quoted: {row}"
    );
    assert!(lines.next().is_none());
}
