//! Fail closed: when the audit log cannot be written, no statement runs and no session
//! starts; service resumes by itself once the disk has room again.

use std::path::{Path, PathBuf};
use std::process::Command;

use lockbox::policy::AccessLevel;

use crate::harness::{db_error, Env, Options};

/// A tiny tmpfs, unmounted on drop. Mounting needs root, as the tests run in CI.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount() -> TinyDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the disk-full test needs root)"
        );
        TinyDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk to the last byte.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 4096];
        use std::io::Write;
        while file.write_all(&chunk).is_ok() {}
        let one = [0u8; 1];
        while file.write_all(&one).is_ok() {}
        filler
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        // Lazily: the proxy the test started may still hold the audit file open while it
        // exits, and a busy mount left in place would stay mounted after the run (its
        // folder could not be removed either).
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path())
            .status();
    }
}

async fn health(env: &Env) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("{}/v1/health", env.deployment.server_url()))
        .await
        .expect("health");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_statements_and_sessions_until_it_has_room() {
    let disk = TinyDisk::mount();
    let env = Env::with(
        "audit_full_disk",
        Options {
            audit_path: Some(disk.path().join("audit.jsonl")),
            ..Default::default()
        },
    )
    .await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, conn) = env.connect("eve", &token).await.expect("login");
    client
        .batch_execute("SELECT 1")
        .await
        .expect("audited statement");

    let filler = disk.fill();
    // The audit file's last page may still have room for a few records: write until the
    // audit cannot take one more. That statement must not have run.
    let mut refused = None;
    for id in 100..400 {
        if let Err(e) = client
            .execute("INSERT INTO items VALUES ($1, 'probe')", &[&id])
            .await
        {
            refused = Some((id, e));
            break;
        }
    }
    let (id, err) = refused.expect("the full disk never refused a statement");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn)
        .await
        .expect("session ended")
        .expect("join");
    let (code, message) = crate::harness::fatal_error(Some(err), ended);
    assert_eq!(code, "58030", "{message}");
    assert!(message.contains("not executed"), "{message}");
    assert_eq!(
        env.superuser_sql(&format!("SELECT count(*) FROM items WHERE id = {id}")),
        "0",
        "fail closed: the statement without an audit record did not run"
    );
    assert_eq!(
        env.superuser_sql(&format!(
            "SELECT count(*) FROM items WHERE id >= 100 AND id < {id}"
        )),
        (id - 100).to_string()
    );

    // What is left of the page may still take a `connected` record (a few hundred bytes):
    // such a session is audited, so it may start; once none fits, none starts.
    let mut admitted = Vec::new();
    let err = loop {
        match env.connect("eve", &token).await {
            Ok(session) if admitted.len() < 10 => admitted.push(session),
            Ok(_) => panic!("no new session without an audit log"),
            Err(e) => break e,
        }
    };
    assert_eq!(db_error(&err).0, "58030");
    let (status, body) = health(&env).await;
    assert_eq!((status, body["audit"].as_str()), (503, Some("failing")));

    std::fs::remove_file(filler).expect("free the disk");
    let (client, _conn) = env
        .connect("eve", &token)
        .await
        .expect("service resumes by itself");
    client
        .batch_execute("INSERT INTO items VALUES (78, 'after recovery')")
        .await
        .expect("write");
    let (status, body) = health(&env).await;
    assert_eq!((status, body["audit"].as_str()), (200, Some("ok")));
    let verified = lockbox::audit::chain::verify(&[&disk.path().join("audit.jsonl")], None, true)
        .expect("verify");
    assert!(
        verified.ok(),
        "the chain survived the failure: {:?}",
        verified.problems
    );
}

/// An outcome waiting to ride the next write is not lost when that write fails: a
/// statement too big for what is left of the disk is refused, and the outcome of the one
/// before it (small enough to fit) still reaches the trail.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_outcome_survives_the_failed_write_of_the_next_statement() {
    let disk = TinyDisk::mount();
    let audit = disk.path().join("audit.jsonl");
    let env = Env::with(
        "audit_held_outcome",
        Options {
            audit_path: Some(audit.clone()),
            ..Default::default()
        },
    )
    .await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client.batch_execute("SELECT 1").await.expect("audited");
    let filler = disk.fill();
    // Only the audit file's last tmpfs page has room left; one more page if that is little.
    let size = || std::fs::metadata(&audit).expect("audit").len();
    let room = || 4096 - size() % 4096;
    if room() < 2048 {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .expect("filler");
        let len = file.metadata().expect("len").len();
        file.set_len(len.saturating_sub(4096)).expect("free a page");
    }
    let before = size();
    client.batch_execute("SELECT 'small'").await.expect("fits");
    // One round: a statement record and the outcome held before it.
    let round = size() - before;
    // Use the room up until two to three rounds are left: the last small statement and its
    // outcome fit, the big one does not.
    while room() >= 3 * round {
        client.batch_execute("SELECT 'small'").await.expect("fits");
    }
    client
        .batch_execute("SELECT 'last small one'")
        .await
        .expect("its record fits");
    let big = format!("SELECT '{}'", "x".repeat(10_000));
    let err = client
        .batch_execute(&big)
        .await
        .expect_err("no room for the big statement's record");
    assert_eq!(db_error(&err).0, "58030", "{err:?}");
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .expect("read")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last = records
        .iter()
        .rfind(|r| r["type"] == "statement" && r["request_id"] == id.as_str())
        .expect("statement records");
    assert_eq!(last["statement"], "SELECT 'last small one'");
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "outcome" && r["statement_seq"] == last["seq"]),
        "the held outcome of {last} was lost with the failed write"
    );
}

/// `lockbox serve` as a separate process, killed with SIGKILL on drop.
pub struct ServeProcess(pub std::process::Child);

impl ServeProcess {
    pub async fn start(env: &Env) -> ServeProcess {
        let process = ServeProcess(
            Command::new(env!("CARGO_BIN_EXE_lockbox"))
                .args(["serve", "--config"])
                .arg(&env.config_path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start lockbox serve"),
        );
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", env.deployment.proxy_port))
                .await
                .is_ok()
            {
                return process;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("lockbox serve did not start");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_the_torn_record_is_dropped_and_nothing_executed_is_lost() {
    let mut env = Env::start("audit_crash").await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    env.stop().await;
    let serve = ServeProcess::start(&env).await;
    let config = env.pg_config("eve", &token);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("login");
    tokio::spawn(connection);
    for n in 200..220 {
        client
            .execute("INSERT INTO items VALUES ($1, 'before the crash')", &[&n])
            .await
            .expect("insert");
    }
    drop(serve); // SIGKILL: no shutdown, no closing checkpoint.
                 // A write cut short by the crash.
    use std::io::Write;
    let mut audit = std::fs::OpenOptions::new()
        .append(true)
        .open(&env.audit_path)
        .expect("audit");
    audit
        .write_all(b"{\"seq\":999999,\"time\":\"2026-")
        .expect("torn record");
    drop(audit);

    let _serve = ServeProcess::start(&env).await;
    let text = std::fs::read_to_string(&env.audit_path).expect("audit");
    assert!(
        !text.contains("{\"seq\":999999,\"time\":\"2026-"),
        "the torn record was truncated at start"
    );
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("login after restart");
    tokio::spawn(connection);
    client
        .batch_execute("SELECT 'after the crash'")
        .await
        .expect("query");

    let executed: i64 = env
        .superuser_sql("SELECT count(*) FROM items WHERE id BETWEEN 200 AND 219")
        .parse()
        .expect("n");
    assert_eq!(executed, 20);
    let recorded = env
        .audit()
        .iter()
        .filter(|r| {
            r["type"] == "statement"
                && r["request_id"] == id.as_str()
                && r["statement"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("INSERT"))
        })
        .count();
    assert_eq!(recorded, 20, "every executed statement has its record");
    let report = lockbox::audit::chain::verify(&[&env.audit_path], None, true).expect("verify");
    assert!(
        report.ok(),
        "the chain is intact across the crash: {:?}",
        report.problems
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn write_mode_records_every_statement_and_syncs_on_its_own() {
    let env = Env::with(
        "audit_write_mode",
        Options {
            audit_durability: "write",
            ..Default::default()
        },
    )
    .await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    for n in 0..25 {
        client
            .query_one("SELECT $1::int", &[&n])
            .await
            .expect("query");
    }
    let records = env
        .wait_for_audit("25 statements with outcomes", |records| {
            records
                .iter()
                .filter(|r| r["type"] == "outcome" && r["request_id"] == id.as_str())
                .count()
                == 25
        })
        .await;
    let statements = records
        .iter()
        .filter(|r| r["type"] == "statement" && r["request_id"] == id.as_str())
        .count();
    assert_eq!(statements, 25);
    let report = lockbox::audit::chain::verify(&[&env.audit_path], None, true).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
}

fn verify_with_config(env: &Env) -> (bool, String) {
    let out = env.verify_trail();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A power loss in `fsync` mode: the records every executed statement waited for are in the
/// journal; the trail, fdatasynced only every `sync_interval`, may have lost them. The next
/// start writes them back before anything reads the trail.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_power_loss_the_journal_gives_back_every_executed_statement() {
    let mut env = Env::start("audit_journal").await;
    let (id, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    env.stop().await;
    // The trail itself is fdatasynced once an hour: only the journal vouches for the records.
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = text.replacen(
        "durability = \"fsync\"",
        "durability = \"fsync\"\nsync_interval = \"1h\"",
        1,
    );
    std::fs::write(&env.config_path, text).expect("config");
    let serve = ServeProcess::start(&env).await;
    let on_disk = std::fs::metadata(&env.audit_path).expect("trail").len();
    let config = env.pg_config("eve", &token);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("login");
    tokio::spawn(connection);
    for n in 300..320 {
        client
            .execute(
                "INSERT INTO items VALUES ($1, 'before the power loss')",
                &[&n],
            )
            .await
            .expect("insert");
    }
    drop(serve);
    // What a power loss leaves of a file fdatasynced last at `on_disk`: its new size may have
    // reached the disk without its data.
    let grown = std::fs::metadata(&env.audit_path).expect("trail").len();
    assert!(grown > on_disk, "the statements were written to the trail");
    let trail = std::fs::OpenOptions::new()
        .write(true)
        .open(&env.audit_path)
        .expect("trail");
    trail.set_len(on_disk).expect("lose the tail");
    trail.set_len(grown).expect("size without data");
    drop(trail);

    let (ok, report) = verify_with_config(&env);
    assert!(
        !ok,
        "a trail missing acknowledged records verifies: {report}"
    );
    assert!(
        report.contains("in the audit journal") && report.contains("writes them back"),
        "{report}"
    );

    let serve = ServeProcess::start(&env).await;
    let executed: i64 = env
        .superuser_sql("SELECT count(*) FROM items WHERE id BETWEEN 300 AND 319")
        .parse()
        .expect("n");
    assert_eq!(executed, 20);
    let recorded = env
        .audit()
        .iter()
        .filter(|r| {
            r["type"] == "statement"
                && r["request_id"] == id.as_str()
                && r["statement"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("INSERT"))
        })
        .count();
    assert_eq!(recorded, 20, "every executed statement has its record back");
    drop(serve);
    let (ok, report) = verify_with_config(&env);
    assert!(ok, "{report}");
}
