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
