//! Audit export end to end: real sessions through the proxy make the trail, the real
//! binary exports and verifies it, and Parquet parts are read back with the parquet crate.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::Value;

use crate::harness::Env;

/// Runs an offline verb (`audit export`, `audit verify-export`) with the test's config.
fn offline(env: &Env, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(args)
        .arg("--config")
        .arg(&env.config_path)
        .output()
        .expect("run lockbox")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn succeeded(out: Output) -> Output {
    assert!(
        out.status.success(),
        "failed: {}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every complete record of the trail, all files, as (seq, original line, record).
pub fn source(env: &Env) -> Vec<(u64, String, Value)> {
    let mut out = Vec::new();
    for segment in lockbox::audit::segments::segments(&env.audit_path).expect("segments") {
        let text = std::fs::read_to_string(&segment.path).expect("read");
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        for line in complete.lines() {
            let value: Value = serde_json::from_str(line).expect("JSON line");
            let seq = value["seq"].as_u64().expect("seq");
            out.push((seq, line.to_owned(), value));
        }
    }
    out
}

/// One approved session as eve, running `statements`, then closed.
pub async fn session(env: &Env, statements: &[&str]) {
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, conn) = env.connect("eve", &token).await.expect("login");
    for s in statements {
        client.batch_execute(s).await.expect("statement");
    }
    drop(client);
    let _ = conn.await;
}

/// The folder a record belongs in.
fn partition_of(record: &Value) -> String {
    let date = &record["time"].as_str().expect("time")[..10];
    let db = record["database"].as_str().unwrap_or("_none");
    format!("date={date}/database={db}")
}

/// The (seq, line) pairs a part holds, read back in its own format.
pub fn read_part(path: &Path, format: &str) -> Vec<(u64, String)> {
    let pairs: Vec<(u64, String)> = match format {
        "jsonl" => std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| (0, l.to_owned()))
            .collect(),
        "csv" => {
            let text = std::fs::read_to_string(path).expect("read");
            let rows = lockbox::audit::export::columns::parse_csv(&text).expect("csv");
            assert_eq!(rows[0].first().map(String::as_str), Some("seq"));
            assert_eq!(rows[0].last().map(String::as_str), Some("record"));
            rows[1..]
                .iter()
                .map(|r| {
                    let record: Value = serde_json::from_str(&r[14]).expect("record column");
                    assert_eq!(r[9], record["statement"].as_str().unwrap_or(""));
                    (r[0].parse().expect("seq column"), r[14].clone())
                })
                .collect()
        }
        _ => {
            let file = std::fs::File::open(path).expect("open");
            let reader = SerializedFileReader::new(file).expect("a Parquet file");
            reader
                .get_row_iter(None)
                .expect("rows")
                .map(|row| {
                    let row = row.expect("row");
                    let mut seq = 0;
                    let mut line = String::new();
                    let mut statement = None;
                    for (name, field) in row.get_column_iter() {
                        match (name.as_str(), field) {
                            ("seq", Field::Long(n)) => seq = *n as u64,
                            ("record", Field::Str(s)) => line = s.clone(),
                            ("statement", Field::Str(s)) => statement = Some(s.clone()),
                            _ => {}
                        }
                    }
                    let record: Value = serde_json::from_str(&line).expect("record column");
                    assert_eq!(statement.as_deref(), record["statement"].as_str());
                    (seq, line)
                })
                .collect()
        }
    };
    pairs
        .into_iter()
        .map(|(seq, line)| {
            let own: Value = serde_json::from_str(&line).expect("JSON");
            let own = own["seq"].as_u64().expect("seq");
            assert!(seq == 0 || seq == own, "seq column {seq} vs record {own}");
            (own, line)
        })
        .collect()
}

/// Every record of a run folder, checked against the partition its file sits in.
pub fn read_run(run: &Path) -> (Value, Vec<(u64, String)>) {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(run.join("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    let format = manifest["format"].as_str().expect("format").to_owned();
    let mut all = Vec::new();
    for file in manifest["files"].as_array().expect("files") {
        let relative = file["path"].as_str().expect("path");
        let records = read_part(&run.join(relative), &format);
        assert_eq!(records.len() as u64, file["records"].as_u64().expect("n"));
        for (_, line) in &records {
            let record: Value = serde_json::from_str(line).expect("JSON");
            assert!(
                relative.starts_with(&(partition_of(&record) + "/part-")),
                "{relative} holds {line}"
            );
        }
        all.extend(records);
    }
    all.sort();
    (manifest, all)
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_in_every_format_match_the_trail_and_tampering_is_named() {
    let mut env = Env::start("audit_export").await;
    session(
        &env,
        &[
            "SELECT 1",
            "SELECT name FROM items WHERE id = 2",
            "SELECT 'comma, \"quote\"\nand a new line'",
        ],
    )
    .await;
    assert!(env.connect("eve", "not-a-token").await.is_err());
    // Stopping writes the closing checkpoint: a record that names no database.
    env.stop().await;
    let trail = source(&env);
    let since = trail
        .iter()
        .find(|r| r.2["event"] == "connected")
        .map(|r| r.2["time"].as_str().expect("time").to_owned())
        .expect("a connected record");
    let since_t = chrono::DateTime::parse_from_rfc3339(&since).expect("time");
    let expected: Vec<(u64, String)> = trail
        .iter()
        .filter(|r| {
            chrono::DateTime::parse_from_rfc3339(r.2["time"].as_str().expect("time")).expect("time")
                >= since_t
        })
        .map(|r| (r.0, r.1.clone()))
        .collect();
    assert!(expected.len() < trail.len(), "the range leaves records out");
    assert!(expected
        .iter()
        .any(|r| r.1.contains("\"type\":\"checkpoint\"")));

    let out_dir = tempfile::tempdir().expect("tempdir");
    let mut runs: Vec<(String, PathBuf)> = Vec::new();
    for format in ["jsonl", "csv", "parquet"] {
        let to = out_dir.path().join(format);
        let to = to.to_str().expect("path");
        let out = succeeded(offline(
            &env,
            &[
                "audit", "export", "--since", &since, "--format", format, "--to", to, "--quiet",
            ],
        ));
        assert!(out.stderr.is_empty(), "--quiet prints nothing on stderr");
        let run = PathBuf::from(stdout(&out));
        let (manifest, records) = read_run(&run);
        assert_eq!(
            records, expected,
            "{format}: the export holds exactly the range"
        );
        assert_eq!(manifest["records"], expected.len() as u64);
        assert_eq!(manifest["first_seq"], expected[0].0);
        assert!(manifest["files"]
            .as_array()
            .expect("files")
            .iter()
            .any(|f| f["path"]
                .as_str()
                .expect("path")
                .contains("database=_none/")));
        let verified = succeeded(offline(
            &env,
            &["audit", "verify-export", run.to_str().expect("path")],
        ));
        assert!(
            stdout(&verified).contains("signature verified"),
            "{}",
            stdout(&verified)
        );
        assert!(!stdout(&verified).contains("PROBLEM"));
        runs.push((format.to_owned(), run));
    }

    // Not quiet: the summary goes to stderr, only the run's folder to stdout.
    let loud = succeeded(offline(
        &env,
        &[
            "audit",
            "export",
            "--to",
            out_dir.path().join("loud").to_str().expect("p"),
        ],
    ));
    assert!(String::from_utf8_lossy(&loud.stderr).contains("record(s)"));
    assert_eq!(stdout(&loud).lines().count(), 1);

    // One changed byte in a jsonl part: verification fails and names the file.
    let (_, jsonl) = &runs[0];
    let (manifest, _) = read_run(jsonl);
    let part = manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_owned())
        .find(|p| {
            std::fs::read_to_string(jsonl.join(p))
                .expect("read")
                .contains("SELECT 1")
        })
        .expect("the part with SELECT 1");
    let text = std::fs::read_to_string(jsonl.join(&part)).expect("read");
    std::fs::write(jsonl.join(&part), text.replacen("SELECT 1", "SELECT 9", 1)).expect("tamper");
    let failed = offline(
        &env,
        &["audit", "verify-export", jsonl.to_str().expect("p")],
    );
    assert!(!failed.status.success());
    assert!(
        stdout(&failed)
            .lines()
            .any(|l| l.starts_with("PROBLEM") && l.contains(&part) && l.contains("changed")),
        "{}",
        stdout(&failed)
    );

    // A deleted Parquet part: verification fails and names it.
    let (_, parquet_run) = &runs[2];
    let (manifest, _) = read_run(parquet_run);
    let gone = manifest["files"][0]["path"]
        .as_str()
        .expect("path")
        .to_owned();
    std::fs::remove_file(parquet_run.join(&gone)).expect("delete");
    let failed = offline(
        &env,
        &["audit", "verify-export", parquet_run.to_str().expect("p")],
    );
    assert!(!failed.status.success());
    assert!(
        stdout(&failed).contains(&gone) && stdout(&failed).contains("deleted"),
        "{}",
        stdout(&failed)
    );

    // A target that is a regular file: the export fails and leaves the file as it was.
    let blocked = out_dir.path().join("blocked");
    std::fs::write(&blocked, "not a folder").expect("write");
    let out = offline(
        &env,
        &["audit", "export", "--to", blocked.to_str().expect("p")],
    );
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(&blocked).expect("read"),
        "not a folder"
    );
}

/// Runs an API verb as `user`.
fn as_user(env: &Env, user: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(args)
        .env("LOCKBOX_SERVER", env.deployment.server_url())
        .env(
            "LOCKBOX_API_KEY",
            env.deployment
                .api_keys
                .get(user)
                .map_or("none", String::as_str),
        )
        .output()
        .expect("run lockbox")
}

fn json(out: Output) -> Value {
    serde_json::from_str(&stdout(&succeeded(out))).expect("JSON output")
}

/// The schedule `name` as `export list` shows it.
fn listed(env: &Env, name: &str) -> Value {
    json(as_user(env, "alice", &["--json", "export", "list"]))
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .expect("the schedule is listed")
}

/// Every record in every run folder of `target`, in seq order.
fn exported(target: &Path) -> Vec<(u64, String)> {
    // On a shared (PostgreSQL) state store a node's runs are in a folder named after it.
    let node = target.join("node-1");
    let target = if node.is_dir() { &node } else { target };
    let mut all = Vec::new();
    for entry in std::fs::read_dir(target).expect("target") {
        let path = entry.expect("entry").path();
        assert!(
            !path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .starts_with('.'),
            "no staging folder is left behind: {path:?}"
        );
        all.extend(read_run(&path).1);
    }
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_runs_cover_the_trail_without_gaps_or_duplicates_across_a_failure() {
    let env = Env::start("export_schedule").await;
    let out_dir = tempfile::tempdir().expect("tempdir");
    let target = out_dir.path().join("packages");
    let to = target.to_str().expect("path");
    let create = [
        "export", "create", "--name", "nightly", "--format", "jsonl", "--to", to, "--every", "1h",
    ];
    for user in ["eve", "dave", "carol"] {
        let refused = as_user(&env, user, &create);
        assert!(!refused.status.success(), "{user} may not create exports");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("forbidden"));
    }
    assert_eq!(
        stdout(&succeeded(as_user(&env, "alice", &create))),
        "nightly"
    );
    assert!(
        !as_user(&env, "alice", &create).status.success(),
        "names are unique"
    );

    session(&env, &["SELECT 1"]).await;
    let first = json(as_user(
        &env,
        "alice",
        &["--json", "export", "run", "nightly"],
    ));
    assert_eq!(first["status"], "ok");
    assert_eq!(first["after_seq"], 0);
    let watermark = first["through_seq"].as_u64().expect("through");
    assert_eq!(listed(&env, "nightly")["watermark"], watermark);

    // The target becomes a regular file: the run fails, says why, and moves nothing.
    session(&env, &["SELECT 2"]).await;
    let kept = out_dir.path().join("kept");
    std::fs::rename(&target, &kept).expect("move aside");
    std::fs::write(&target, "in the way").expect("block");
    let failed = as_user(&env, "alice", &["export", "run", "nightly"]);
    assert!(!failed.status.success());
    let history = json(as_user(
        &env,
        "alice",
        &["--json", "export", "history", "nightly"],
    ));
    assert_eq!(history[0]["status"], "failed", "{history:#}");
    assert!(history[0]["error"].as_str().is_some_and(|e| e.contains(to)));
    let status = listed(&env, "nightly");
    assert_eq!(
        status["watermark"], watermark,
        "a failed run keeps the watermark"
    );
    assert_eq!(status["last_status"], "failed");

    // Fixed: the next run starts at the same watermark and fills the gap exactly.
    session(&env, &["SELECT 3"]).await;
    std::fs::remove_file(&target).expect("unblock");
    std::fs::rename(&kept, &target).expect("move back");
    let third = json(as_user(
        &env,
        "alice",
        &["--json", "export", "run", "nightly"],
    ));
    assert_eq!(third["status"], "ok");
    assert_eq!(third["after_seq"], watermark);
    let through = third["through_seq"].as_u64().expect("through");

    let all = exported(&target);
    let seqs: Vec<u64> = all.iter().map(|r| r.0).collect();
    assert_eq!(
        seqs,
        (1..=through).collect::<Vec<_>>(),
        "contiguous, no duplicates"
    );
    let trail: Vec<(u64, String)> = source(&env)
        .into_iter()
        .filter(|r| r.0 <= through)
        .map(|r| (r.0, r.1))
        .collect();
    assert_eq!(all, trail, "byte for byte the trail's records");
    assert!(all.iter().any(|r| r.1.contains("SELECT 3")));
    let events: Vec<String> = trail
        .iter()
        .filter(|r| r.1.contains("\"type\":\"export\""))
        .map(|r| serde_json::from_str::<Value>(&r.1).expect("json")["event"].to_string())
        .collect();
    assert_eq!(
        events,
        ["\"schedule_created\"", "\"completed\"", "\"failed\""]
    );

    // The runs verify, one by one and as a sequence without gaps.
    let verified = succeeded(offline(&env, &["audit", "verify-export", to]));
    assert_eq!(stdout(&verified).matches("signature verified").count(), 2);

    let status = listed(&env, "nightly");
    assert_eq!(status["last_status"], "ok");
    assert_eq!(status["runs"], 3);
    assert_eq!(status["created_by"], "alice");
    let table = stdout(&succeeded(as_user(&env, "alice", &["export", "list"])));
    assert!(
        table.starts_with("DATA PACKAGE") && table.contains("nightly"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_runs_due_exports_by_itself() {
    let env = Env::start("export_scheduler").await;
    let out_dir = tempfile::tempdir().expect("tempdir");
    let to = out_dir.path().to_str().expect("path");
    session(&env, &["SELECT 1"]).await;
    succeeded(as_user(
        &env,
        "alice",
        &[
            "export",
            "create",
            "--name",
            "often",
            "--database",
            &env.db,
            "--format",
            "parquet",
            "--to",
            to,
            "--every",
            "1s",
        ],
    ));
    let mut runs = Value::Null;
    for _ in 0..100 {
        runs = json(as_user(
            &env,
            "alice",
            &["--json", "export", "history", "often"],
        ));
        if runs
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["status"] == "ok"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let run = runs
        .as_array()
        .and_then(|r| r.iter().find(|r| r["status"] == "ok"))
        .unwrap_or_else(|| panic!("the scheduler never ran the export: {runs:#}"));
    assert_eq!(run["trigger"], "schedule");
    let (manifest, records) = read_run(Path::new(run["path"].as_str().expect("path")));
    assert_eq!(manifest["selection"]["database"], env.db.as_str());
    assert!(records.iter().any(|r| r.1.contains("SELECT 1")));
    assert!(records.iter().all(
        |r| serde_json::from_str::<Value>(&r.1).expect("json")["database"] == env.db.as_str()
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_renamed_into_place_before_a_crash_is_taken_over_not_repeated() {
    let env = Env::start("export_takeover").await;
    let out_dir = tempfile::tempdir().expect("tempdir");
    let to = out_dir.path().to_str().expect("path");
    succeeded(as_user(
        &env,
        "alice",
        &[
            "export", "create", "--name", "pkg", "--format", "csv", "--to", to, "--every", "1h",
        ],
    ));
    session(&env, &["SELECT 1"]).await;
    let first = json(as_user(&env, "alice", &["--json", "export", "run", "pkg"]));
    assert_eq!(first["status"], "ok");
    // As if lockbox died between renaming the run into place and storing the watermark.
    let sqlite = env.deployment.dir.join("state.db");
    if sqlite.exists() {
        let state = rusqlite::Connection::open(sqlite).expect("state");
        state
            .execute(
                "UPDATE export_schedules SET watermark = 0 WHERE name = 'pkg'",
                [],
            )
            .expect("rewind");
    } else {
        // The PostgreSQL state store (LOCKBOX_TEST_STATE=postgres) keeps one per node.
        env.pg
            .psql(
                "s_export_takeover",
                "UPDATE lockbox_export_watermarks SET watermark = 0 WHERE schedule = 'pkg'",
            )
            .expect("rewind");
    }
    session(&env, &["SELECT 2"]).await;
    let again = json(as_user(&env, "alice", &["--json", "export", "run", "pkg"]));
    assert_eq!(
        again["path"], first["path"],
        "the folder on disk is taken over"
    );
    assert_eq!(again["through_seq"], first["through_seq"]);
    let next = json(as_user(&env, "alice", &["--json", "export", "run", "pkg"]));
    assert_eq!(next["after_seq"], first["through_seq"]);
    let seqs: Vec<u64> = exported(out_dir.path()).iter().map(|r| r.0).collect();
    let through = next["through_seq"].as_u64().expect("through");
    assert_eq!(
        seqs,
        (1..=through).collect::<Vec<_>>(),
        "nothing exported twice"
    );
}
