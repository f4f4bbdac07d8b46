//! The trail as an auditor relies on it: outcomes found by every filter and in every
//! per-database export, times in the forms people type, typos refused, CSV safe to open in
//! a spreadsheet, a running deployment verified with its unsigned tail pending, and a trail
//! cut right after a checkpoint caught by verify and refused by the writer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lockbox::audit::AuditQuery;
use lockbox::policy::{AccessLevel, NewRequest};
use serde_json::Value;

use crate::harness::Env;

/// Runs the binary as `user` against the test's API (and with its config, for the offline
/// verbs that take one).
pub(crate) fn lockbox(env: &Env, user: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(args)
        .env("LOCKBOX_SERVER", env.deployment.server_url())
        .env(
            "LOCKBOX_API_KEY",
            env.deployment.api_keys.get(user).expect("user's key"),
        )
        .env("LOCKBOX_CONFIG", &env.config_path)
        .output()
        .expect("run lockbox")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "failed: {stdout}{stderr}");
    stdout
}

fn failed(out: Output) -> (String, String) {
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "succeeded: {stdout}{stderr}");
    (stdout, stderr)
}

/// Every record of every part file under `dir`.
fn exported(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(exported(&path));
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            let text = std::fs::read_to_string(&path).expect("part");
            out.extend(text.lines().map(|l| serde_json::from_str(l).expect("JSON")));
        }
    }
    out
}

fn outcomes_of<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == "outcome" && r["request_id"] == id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn outcomes_are_found_by_engineer_and_database_and_in_per_database_exports() {
    let env = Env::start("trail_outcomes").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .batch_execute("SELECT 1; SELECT 2")
        .await
        .expect("query");
    env.wait_for_audit("both outcomes", |r| {
        r.iter()
            .filter(|r| r["type"] == "outcome" && r["request_id"] == id.as_str())
            .count()
            == 2
    })
    .await;
    let auditor = env.client("dave");
    for query in [
        AuditQuery {
            engineer: Some("eve".into()),
            ..Default::default()
        },
        AuditQuery {
            database: Some(env.db.clone()),
            ..Default::default()
        },
    ] {
        let records = auditor.audit(&query).await.expect("audit");
        let outcomes = outcomes_of(&records, &id);
        assert_eq!(outcomes.len(), 2, "{query:?}: {records:#?}");
        assert!(outcomes
            .iter()
            .all(|o| o["engineer"] == "eve" && o["database"] == env.db.as_str()));
    }
    let target = tempfile::tempdir().expect("tempdir");
    let run = ok(lockbox(
        &env,
        "dave",
        &[
            "audit",
            "export",
            "--database",
            &env.db,
            "--to",
            target.path().to_str().expect("utf-8 path"),
            "--quiet",
        ],
    ));
    let records = exported(Path::new(run.trim()));
    assert_eq!(outcomes_of(&records, &id).len(), 2, "{records:#?}");

    // A scheduled per-database export holds them too.
    let scheduled = tempfile::tempdir().expect("tempdir");
    let to = scheduled.path().to_str().expect("utf-8 path");
    ok(lockbox(
        &env,
        "alice",
        &[
            "export",
            "create",
            "--name",
            "per-db",
            "--database",
            &env.db,
            "--format",
            "jsonl",
            "--to",
            to,
            "--every",
            "1d",
        ],
    ));
    let run: Value = serde_json::from_str(&ok(lockbox(
        &env,
        "alice",
        &["--json", "export", "run", "per-db"],
    )))
    .expect("run JSON");
    let folder = run["path"].as_str().expect("the run's folder");
    let records = exported(Path::new(folder));
    assert_eq!(outcomes_of(&records, &id).len(), 2, "{records:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn times_take_three_forms_and_unknown_kinds_and_outcomes_are_errors() {
    let env = Env::start("trail_filters").await;
    let id = env.pending_request("eve", "1h").await;
    let lines = |args: &[&str]| {
        let mut all = vec!["audit", "list", "--request", &id];
        all.extend_from_slice(args);
        ok(lockbox(&env, "dave", &all)).lines().count()
    };
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(lines(&["--since", "1h"]) > 0, "an age");
    assert!(lines(&["--since", &today]) > 0, "a date");
    assert_eq!(lines(&["--until", "2000-01-01"]), 0, "a date long past");
    assert_eq!(lines(&["--since", "2999-01-01T00:00:00Z"]), 0, "RFC 3339");
    let (_, stderr) = failed(lockbox(&env, "dave", &["audit", "list", "--since", "soon"]));
    assert!(
        stderr.contains("RFC 3339") && stderr.contains("2d"),
        "{stderr}"
    );
    let (_, stderr) = failed(lockbox(&env, "dave", &["audit", "list", "--kind", "bogus"]));
    assert!(
        stderr.contains("select") && stderr.contains("ddl"),
        "{stderr}"
    );
    let (_, stderr) = failed(lockbox(&env, "dave", &["audit", "list", "--outcome", "x"]));
    assert!(stderr.contains("not_executed"), "{stderr}");
    let target = tempfile::tempdir().expect("tempdir");
    let folder = target.path().to_str().expect("utf-8 path");
    ok(lockbox(
        &env,
        "dave",
        &[
            "audit", "export", "--since", "2h", "--to", folder, "--quiet",
        ],
    ));

    let key = env.deployment.api_keys.get("dave").expect("key").clone();
    let base = env.deployment.server_url();
    let get = |query: String| {
        let (key, base) = (key.clone(), base.clone());
        async move {
            let response = reqwest::Client::new()
                .get(format!("{base}/v1/audit?{query}"))
                .bearer_auth(key)
                .send()
                .await
                .expect("API");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    let (status, records) = get(format!("request={id}&since=2d")).await;
    assert_eq!(status, 200, "{records}");
    assert!(
        records.as_array().is_some_and(|r| !r.is_empty()),
        "{records}"
    );
    let (status, records) = get(format!("request={id}&until={today}")).await;
    assert_eq!((status, records), (200, Value::Array(Vec::new())));
    for (query, says) in [
        ("kind=bogus", "select"),
        ("outcome=bogus", "refused"),
        ("since=soon", "RFC 3339"),
    ] {
        let (status, body) = get(query.to_owned()).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid", "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{query}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn csv_cells_that_would_start_a_formula_are_neutralised_in_list_and_export() {
    let env = Env::start("trail_csv").await;
    let new = NewRequest {
        database: env.db.clone(),
        ticket: "T-1".into(),
        reason: "=HYPERLINK(\"http://example.invalid\")".into(),
        access: AccessLevel::Read,
        duration: Some("1h".into()),
        ..NewRequest::default()
    };
    let id = env.file("eve", &new).await;
    let listed = ok(lockbox(
        &env,
        "dave",
        &["audit", "list", "--request", &id, "--format", "csv"],
    ));
    let neutral = "\"'=HYPERLINK(\"\"http://example.invalid\"\")\"";
    assert!(listed.contains(neutral), "{listed}");
    assert!(!listed.contains(",=HYPERLINK"), "{listed}");

    let target = tempfile::tempdir().expect("tempdir");
    let folder = target.path().to_str().expect("utf-8 path");
    let run = ok(lockbox(
        &env,
        "dave",
        &[
            "audit",
            "export",
            "--database",
            &env.db,
            "--format",
            "csv",
            "--to",
            folder,
            "--quiet",
        ],
    ));
    let run = PathBuf::from(run.trim());
    let parts = csv_parts(&run);
    assert!(!parts.is_empty());
    let csv: String = parts
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("part"))
        .collect();
    assert!(csv.contains(neutral), "{csv}");
    // The exact records stay as they were: the export still verifies.
    ok(lockbox(
        &env,
        "dave",
        &["audit", "verify-export", run.to_str().expect("utf-8")],
    ));
}

fn csv_parts(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(csv_parts(&path));
        } else if path.extension().is_some_and(|e| e == "csv") {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_deployment_verifies_with_its_unsigned_tail_pending() {
    let env = Env::start("trail_running").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client.batch_execute("SELECT 1").await.expect("query");
    // The server runs on: the writer holds the file and has signed nothing yet.
    let out = ok(lockbox(&env, "dave", &["--json", "audit", "verify"]));
    let report: Value = serde_json::from_str(out.trim()).expect("JSON report");
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["pending"].as_u64() > Some(0), "{report}");
    let text = ok(lockbox(&env, "dave", &["audit", "verify"]));
    assert!(
        text.contains("pending: ") && !text.contains("PROBLEM"),
        "{text}"
    );
    // --live on the file alone keeps working.
    let live = lockbox(
        &env,
        "dave",
        &[
            "audit",
            "verify",
            "--live",
            env.audit_path.to_str().expect("utf-8"),
        ],
    );
    ok(live);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trail_cut_after_a_checkpoint_fails_verify_and_is_not_continued() {
    let mut env = Env::start("trail_cut").await;
    let (_, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    statement(&env, &token).await;
    env.stop().await;
    // Everything up to the checkpoint written at the first shutdown.
    let first = std::fs::read(&env.audit_path).expect("trail");
    env.restart().await;
    statement(&env, &token).await;
    env.stop().await;
    let whole = std::fs::read(&env.audit_path).expect("trail");
    let last_checkpoint = last_seq(&whole);

    let text = ok(lockbox(&env, "dave", &["audit", "verify"]));
    assert!(
        text.contains(&format!(
            "checkpoint seq {last_checkpoint} witnessed by the state store: present"
        )),
        "{text}"
    );

    std::fs::write(&env.audit_path, &first).expect("cut the trail");
    let (stdout, _) = failed(lockbox(&env, "dave", &["audit", "verify"]));
    let path = env.audit_path.display().to_string();
    assert!(
        stdout.contains("truncated")
            && stdout.contains(&path)
            && stdout.contains(&format!("seq {last_checkpoint}"))
            && stdout.contains(&format!("seq {}", last_seq(&first))),
        "{stdout}"
    );

    let config = lockbox::config::Config::load(&env.config_path).expect("config");
    let refused = match lockbox::server::start(config).await {
        Ok(server) => {
            server.shutdown().await;
            panic!("the server continued a truncated trail");
        }
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains(&path)
            && refused.contains(&format!("seq {last_checkpoint}"))
            && refused.contains("truncated"),
        "{refused}"
    );
    let (_, stderr) = failed(serve(&env));
    assert!(
        stderr.contains("truncated") && stderr.contains(&path),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&env.audit_path).expect("trail"),
        first,
        "nothing appended"
    );

    // The untouched trail verifies and the server continues it.
    std::fs::write(&env.audit_path, &whole).expect("restore the trail");
    ok(lockbox(&env, "dave", &["audit", "verify"]));
    env.restart().await;
    env.stop().await;
    ok(lockbox(&env, "dave", &["audit", "verify"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_appended_while_lockbox_is_stopped_fails_verify_and_is_not_signed() {
    let mut env = Env::start("trail_appended").await;
    let (_, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    statement(&env, &token).await;
    env.stop().await;
    let closed = std::fs::read(&env.audit_path).expect("trail");
    let closed_seq = last_seq(&closed);
    ok(lockbox(&env, "dave", &["audit", "verify"]));

    // A record chained exactly onto the last one, as anyone who can write the folder can.
    let text = String::from_utf8_lossy(&closed);
    let last = text.lines().last().expect("a record");
    let prev = hex::encode(lockbox::audit::chain::line_hash(last.as_bytes()));
    let forged = format!(
        "{{\"seq\":{},\"time\":\"2026-01-01T00:00:00.000000Z\",\"prev\":\"{prev}\",\"type\":\"request\",\"event\":\"approved\",\"request_id\":\"req-0\",\"actor\":\"carol\",\"reason\":\"forged\"}}\n",
        closed_seq + 1
    );
    let mut appended = closed.clone();
    appended.extend_from_slice(forged.as_bytes());
    std::fs::write(&env.audit_path, &appended).expect("append");

    let (stdout, _) = failed(lockbox(&env, "dave", &["audit", "verify"]));
    let expected = format!(
        "records up to seq {} follow the checkpoint at seq {closed_seq}",
        closed_seq + 1
    );
    assert!(stdout.contains(&expected), "{stdout}");
    let config = lockbox::config::Config::load(&env.config_path).expect("config");
    let refused = match lockbox::server::start(config).await {
        Ok(server) => {
            server.shutdown().await;
            panic!("the server signed a record written while it was stopped");
        }
        Err(e) => e.to_string(),
    };
    assert!(refused.contains(&expected), "{refused}");
    assert_eq!(
        std::fs::read(&env.audit_path).expect("trail"),
        appended,
        "nothing appended, nothing signed"
    );

    // The trail as lockbox closed it starts again, and a crash's tail after that start is
    // lockbox's own (reported pending, not refused).
    std::fs::write(&env.audit_path, &closed).expect("restore");
    env.restart().await;
    statement(&env, &token).await;
    env.stop().await;
    ok(lockbox(&env, "dave", &["audit", "verify"]));
}

/// A partial line after the checkpoint a clean stop closed the trail with is no record
/// being written (nothing writes while lockbox is stopped): `audit verify` reports it
/// rather than calling it pending.
#[tokio::test(flavor = "multi_thread")]
async fn a_partial_line_after_a_closed_trail_fails_verify() {
    let mut env = Env::start("trail_partial_after_close").await;
    let (_, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    statement(&env, &token).await;
    env.stop().await;
    let closed = std::fs::read(&env.audit_path).expect("trail");
    let closed_seq = last_seq(&closed);
    let mut torn = closed.clone();
    torn.extend_from_slice(format!("{{\"seq\":{},\"time\":\"2026-01-", closed_seq + 1).as_bytes());
    std::fs::write(&env.audit_path, &torn).expect("append");
    let (stdout, _) = failed(lockbox(&env, "dave", &["audit", "verify"]));
    assert!(
        stdout.contains(&format!(
            "a partial line follows the checkpoint (seq {closed_seq}) that closed the trail"
        )),
        "{stdout}"
    );
    std::fs::write(&env.audit_path, &closed).expect("restore");
    ok(lockbox(&env, "dave", &["audit", "verify"]));
}

async fn statement(env: &Env, token: &str) {
    let (client, conn) = env.connect("eve", token).await.expect("login");
    client.batch_execute("SELECT 1").await.expect("query");
    drop(client);
    let _ = conn.await;
}

/// The sequence number of the trail's last record.
fn last_seq(trail: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(trail);
    let last = text.lines().last().expect("a record");
    let record: Value = serde_json::from_str(last).expect("JSON");
    record["seq"].as_u64().expect("seq")
}

/// `lockbox serve` on the test's config; a server that starts is killed and reported.
fn serve(env: &Env) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .arg("serve")
        .env("LOCKBOX_CONFIG", &env.config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run lockbox serve");
    for _ in 0..300 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("lockbox serve kept running on a truncated trail");
}

/// `audit list` (jsonl) writes the characters a terminal obeys or hides (escapes, C1's CSI,
/// bidi overrides, zero-width spaces) as JSON `\uXXXX` escapes: nothing reaches the
/// terminal raw, and the value parsed back is exactly what the requester typed.
#[tokio::test(flavor = "multi_thread")]
async fn audit_list_jsonl_escapes_what_a_terminal_obeys_and_keeps_the_value() {
    let env = Env::start("trail_jsonl_escapes").await;
    let reason = "ok \u{1b}[2K\u{9b}1A adm\u{200b}in \u{202e}x";
    let mut new = NewRequest {
        database: env.db.clone(),
        ticket: "T-1".into(),
        reason: reason.into(),
        access: AccessLevel::Read,
        duration: Some("1h".into()),
        ..NewRequest::default()
    };
    // The API refuses such a reason; a session's statements carry any text all the same,
    // and a request stored before that check may hold it: both are shown escaped.
    let refused = env
        .client("eve")
        .create_request(&new)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Some("invalid"), "{refused}");
    new.reason = "plain".into();
    let id = env.file("eve", &new).await;
    env.store_reason(&id, reason);
    env.client("carol")
        .approve(&id, "ok")
        .await
        .expect("approve");
    let token = env.client("eve").token(&id).await.expect("token").token;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let statement = format!("SELECT 1 -- {reason}");
    client.simple_query(&statement).await.expect("query");
    env.wait_for_audit("the statement", |records| {
        records.iter().any(|r| r["statement"] == statement.as_str())
    })
    .await;
    let listed = ok(lockbox(&env, "dave", &["audit", "list", "--request", &id]));
    for raw in ['\u{1b}', '\u{9b}', '\u{200b}', '\u{202e}'] {
        assert!(!listed.contains(raw), "{raw:?} printed raw: {listed:?}");
    }
    let statements: Vec<String> = listed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("each line is JSON"))
        .filter_map(|r| r["statement"].as_str().map(str::to_owned))
        .collect();
    assert!(statements.contains(&statement), "{statements:?}");

    // Every other `--json` output escapes the same way (here `request show` and `list`).
    for args in [
        vec!["--json", "request", "show", id.as_str()],
        vec!["--json", "request", "list"],
    ] {
        let shown = ok(lockbox(&env, "eve", &args));
        for raw in ['\u{1b}', '\u{9b}', '\u{200b}', '\u{202e}'] {
            assert!(
                !shown.contains(raw),
                "{args:?}: {raw:?} printed raw: {shown:?}"
            );
        }
        let value: Value =
            serde_json::from_str(&shown).unwrap_or_else(|e| panic!("{args:?}: {e}: {shown}"));
        let reason_back = if value.is_array() {
            value[0]["reason"].clone()
        } else {
            value["reason"].clone()
        };
        assert_eq!(reason_back.as_str(), Some(reason), "{args:?}: {shown}");
    }
}

/// A trail verified where the state store holds no witness of it (moved to another folder,
/// as on another host or under another node id) is checked all the same, but `verify` says
/// that a cut after a checkpoint would go unnoticed, where it said nothing before.
#[tokio::test(flavor = "multi_thread")]
async fn verify_says_when_no_witness_of_the_trail_is_kept() {
    let mut env = Env::start("trail_unwitnessed").await;
    let (_, token) = env.approved_token_for("eve", "1h", AccessLevel::Read).await;
    statement(&env, &token).await;
    env.stop().await;
    let (_, stderr) = text(&lockbox(&env, "dave", &["audit", "verify"]));
    assert!(!stderr.contains("no witnessed checkpoint"), "{stderr}");

    let moved = env.audit_path.parent().expect("folder").join("moved");
    std::fs::create_dir_all(&moved).expect("folder");
    std::fs::copy(&env.audit_path, moved.join("audit.jsonl")).expect("copy");
    let config = std::fs::read_to_string(&env.config_path).expect("config");
    let changed = config.replace(
        "path = \"audit/audit.jsonl\"",
        "path = \"audit/moved/audit.jsonl\"",
    );
    assert_ne!(changed, config);
    std::fs::write(&env.config_path, changed).expect("config");
    let out = lockbox(&env, "dave", &["audit", "verify"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("holds no witnessed checkpoint of this trail") && stderr.contains("moved"),
        "{stderr}"
    );
    assert!(!stdout.contains("witnessed by the state store"), "{stdout}");
}
