//! The PostgreSQL audit sink: the trail reaches a table of a real audit database, line for
//! line across rotated files; an unreachable audit database never stops the proxy, and the
//! sink catches up with no gap and no duplicate; proxies share a table under their own ids.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use lockbox::policy::AccessLevel;

use crate::harness::{cluster, Env, SERVICE_PASSWORD, SERVICE_ROLE};

/// A fresh audit database on the shared cluster, owned by a role that logs in with a
/// password, as a customer's would.
pub(crate) fn audit_database(name: &str) -> String {
    let db = format!("t_{name}");
    let pg = cluster();
    pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"))
        .expect("drop audit database");
    pg.psql(
        "postgres",
        &format!("CREATE DATABASE {db} OWNER {SERVICE_ROLE}"),
    )
    .expect("create audit database");
    db
}

/// Turns the sink on in `env`'s config and restarts it. The trail rotates every 4 KiB so
/// shipping has to cross files; small batches so it takes several INSERTs.
pub(crate) async fn with_sink(env: &mut Env, audit_db: &str, proxy_id: &str) {
    let dir = env.config_path.parent().expect("config folder").to_owned();
    std::fs::write(dir.join("audit-db.password"), SERVICE_PASSWORD).expect("password file");
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let mut text = text.replace(
        "path = \"audit/audit.jsonl\"",
        "path = \"audit/audit.jsonl\"\nrotate_size = \"4KiB\"",
    );
    text.push_str(&format!(
        "\n[audit.postgres]\nurl = \"postgres://{SERVICE_ROLE}@127.0.0.1:{}/{audit_db}\"\n\
         password_file = \"audit-db.password\"\nproxy_id = \"{proxy_id}\"\nbatch_size = 7\n",
        cluster().port
    ));
    std::fs::write(&env.config_path, text).expect("config");
    env.restart().await;
}

/// Every line of the trail, every segment, oldest first: (seq, exact line).
fn trail(env: &Env) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for (_, mut file) in lockbox::audit::open_segments(&env.audit_path, None).expect("segments") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).expect("read segment");
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let line = line.trim_end_matches('\n');
            let record: Value = serde_json::from_str(line).expect("JSON line");
            out.push((record["seq"].as_i64().expect("seq"), line.to_owned()));
        }
    }
    out
}

/// The table's rows for `proxy_id`: (seq, line), by seq.
async fn rows(audit_db: &str, proxy_id: &str) -> Vec<(i64, String)> {
    let (client, connection) =
        tokio_postgres::connect(&cluster().url(audit_db), tokio_postgres::NoTls)
            .await
            .expect("connect to the audit database");
    tokio::spawn(connection);
    let exists: bool = client
        .query_one("SELECT to_regclass('lockbox_audit') IS NOT NULL", &[])
        .await
        .expect("table lookup")
        .get(0);
    if !exists {
        return Vec::new();
    }
    client
        .query(
            "SELECT seq, line FROM lockbox_audit WHERE proxy_id = $1 ORDER BY seq",
            &[&proxy_id],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits (bounded) until the table holds exactly the trail for `proxy_id`.
pub(crate) async fn shipped(env: &Env, audit_db: &str, proxy_id: &str) -> Vec<(i64, String)> {
    let mut last = (Vec::new(), Vec::new());
    for _ in 0..150 {
        let (file, table) = (trail(env), rows(audit_db, proxy_id).await);
        if !file.is_empty() && file == table {
            let seqs: Vec<i64> = table.iter().map(|(s, _)| *s).collect();
            let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
            assert_eq!(seqs, expected, "no gaps, no duplicates");
            return table;
        }
        last = (file, table);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{proxy_id}: the table never matched the trail ({} lines in the file, {} rows; last seq {:?} vs {:?})",
        last.0.len(),
        last.1.len(),
        last.0.last().map(|l| l.0),
        last.1.last().map(|l| l.0)
    );
}

async fn health(env: &Env) -> (u16, Value) {
    // The sink's details are shown to callers who may read the audit trail only.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/health", env.deployment.server_url()))
        .bearer_auth(&env.deployment.api_keys["dave"])
        .send()
        .await
        .expect("health");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// Waits (bounded) until the sink's part of `/v1/health` satisfies `check`.
async fn sink_health(env: &Env, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        let (status, body) = health(env).await;
        assert_eq!(status, 200, "sink trouble never fails health: {body}");
        if check(&body["audit_sink"]) {
            return body["audit_sink"].clone();
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never showed {what}: {last}");
}

/// Runs `n` audited statements in a session of its own and returns once the session's end
/// is in the local trail: a comparison of the trail with the table made after it sees the
/// whole session, not a moment before its last records.
pub(crate) async fn statements(env: &Env, token: &str, n: usize) {
    let ended = |env: &Env| {
        trail(env)
            .iter()
            .filter(|(_, line)| {
                serde_json::from_str::<Value>(line).is_ok_and(|r| r["event"] == "disconnected")
            })
            .count()
    };
    let before = ended(env);
    let (client, conn) = env.connect("eve", token).await.expect("login");
    for i in 0..n {
        client
            .execute(
                "UPDATE items SET name = $1 WHERE id = 1",
                &[&format!("n{i}")],
            )
            .await
            .expect("statement");
    }
    drop(client);
    let _ = conn.await;
    for _ in 0..100 {
        if ended(env) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the session's end never reached the trail");
}

/// The table's lines as a file, checked as one chain by `lockbox audit verify`'s code.
fn verify_from_table(rows: &[(i64, String)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("from-table.jsonl");
    let text: String = rows.iter().map(|(_, l)| format!("{l}\n")).collect();
    std::fs::write(&path, text).expect("write");
    let report = lockbox::audit::chain::verify(&[&path], None, true).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.records as usize, rows.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trail_reaches_the_table_and_catches_up_after_an_outage() {
    let audit_db = audit_database("sink_outage_audit");
    let mut env = Env::start("sink_outage").await;
    with_sink(&mut env, &audit_db, "proxy-a").await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    statements(&env, &token, 20).await;
    let table = shipped(&env, &audit_db, "proxy-a").await;
    let files = lockbox::audit::segments::segments(&env.audit_path).expect("segments");
    assert!(files.len() > 1, "the trail rotated: {files:?}");
    verify_from_table(&table);

    // The audit database goes away: nobody may connect, the sink's connection is cut.
    let pg = cluster();
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {audit_db} ALLOW_CONNECTIONS false"),
    )
    .expect("close the audit database");
    pg.psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{audit_db}'"
        ),
    )
    .expect("cut connections");
    statements(&env, &token, 10).await;
    let down = sink_health(&env, "the sink lagging with an error", |s| {
        s["connected"] == false && s["lag"].as_u64() > Some(0) && s["last_error"].is_string()
    })
    .await;
    assert_eq!(down["proxy_id"], "proxy-a");

    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {audit_db} ALLOW_CONNECTIONS true"),
    )
    .expect("reopen the audit database");
    let caught_up = shipped(&env, &audit_db, "proxy-a").await;
    assert!(caught_up.len() > table.len());
    sink_health(&env, "the sink caught up", |s| {
        s["connected"] == true && s["lag"] == 0 && s["last_error"].is_null()
    })
    .await;

    // Records written just before a shutdown are shipped by the final drain or, failing
    // that, after the restart, from where the table ends.
    statements(&env, &token, 5).await;
    env.restart().await;
    let resumed = shipped(&env, &audit_db, "proxy-a").await;
    verify_from_table(&resumed);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxies_share_a_table_under_their_own_ids_and_a_shared_id_is_refused() {
    let audit_db = audit_database("sink_two_audit");
    let mut a = Env::start("sink_two_a").await;
    let mut b = Env::start("sink_two_b").await;
    with_sink(&mut a, &audit_db, "proxy-a").await;
    with_sink(&mut b, &audit_db, "proxy-b").await;
    let (_, token_a) = a.approved_token_for("eve", "1h", AccessLevel::Write).await;
    let (_, token_b) = b.approved_token_for("eve", "1h", AccessLevel::Write).await;
    tokio::join!(statements(&a, &token_a, 12), statements(&b, &token_b, 8));
    let rows_a = shipped(&a, &audit_db, "proxy-a").await;
    let rows_b = shipped(&b, &audit_db, "proxy-b").await;
    assert!(rows_a.iter().any(|(_, l)| l.contains(&a.db)));
    assert!(rows_b.iter().any(|(_, l)| l.contains(&b.db)));
    assert!(!rows_a.iter().any(|(_, l)| l.contains(&b.db)));

    // A third proxy that claims proxy-a's id must not resume after proxy-a's rows.
    let mut c = Env::start("sink_two_c").await;
    with_sink(&mut c, &audit_db, "proxy-a").await;
    let refused = sink_health(&c, "the shared proxy id refused", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("proxy_id \"proxy-a\""))
    })
    .await;
    assert_eq!(refused["connected"], false, "{refused}");
    c.stop().await;
    assert_eq!(shipped(&a, &audit_db, "proxy-a").await, trail(&a));
}

/// The audit database's newest checkpoint row witnesses the trail from outside: `audit
/// verify --config` finds it in the trail, and fails, naming the audit database, once the
/// trail is cut before it.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_database_witnesses_the_last_checkpoint_it_holds() {
    let audit_db = audit_database("sink_witness_audit");
    let mut env = Env::start("sink_witness").await;
    with_sink(&mut env, &audit_db, "proxy-w").await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    statements(&env, &token, 12).await;
    shipped(&env, &audit_db, "proxy-w").await;
    env.stop().await;
    let witnessed = rows(&audit_db, "proxy-w")
        .await
        .into_iter()
        .filter(|(_, l)| l.contains("\"type\":\"checkpoint\""))
        .map(|(seq, _)| seq)
        .max()
        .expect("the 4 KiB rotations shipped checkpoints");
    let out = env.verify_trail();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "checkpoint seq {witnessed} witnessed by the audit database: present"
        )),
        "{stdout}"
    );
    // Keep only the records before the witnessed checkpoint, in every file.
    for segment in lockbox::audit::segments::segments(&env.audit_path).expect("segments") {
        let text = std::fs::read_to_string(&segment.path).expect("read");
        let kept: String = text
            .split_inclusive('\n')
            .filter(|l| {
                let record: Value = serde_json::from_str(l).expect("JSON line");
                record["seq"].as_i64().is_some_and(|s| s < witnessed)
            })
            .collect();
        std::fs::write(&segment.path, kept).expect("cut");
    }
    let out = env.verify_trail();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "the audit database witnessed a checkpoint at seq {witnessed}: the trail was truncated"
        )),
        "{stdout}"
    );
}

/// Someone who may create schemas in the audit database makes one named after the sink's
/// role, holding a table of the sink's name that anyone may write: the role's default search
/// path looks there before `public`. The sink's rows still go to `public.lockbox_audit`.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_named_after_the_sink_role_does_not_take_its_rows() {
    let audit_db = audit_database("sink_decoy_audit");
    cluster()
        .psql(
            &audit_db,
            &format!(
                "CREATE SCHEMA {SERVICE_ROLE}; \
                 CREATE TABLE {SERVICE_ROLE}.lockbox_audit (proxy_id text NOT NULL, \
                 seq bigint NOT NULL, \"time\" timestamptz NOT NULL, \"type\" text NOT NULL, \
                 request_id text, session_id text, engineer text, \"database\" text, \
                 record jsonb NOT NULL, line text NOT NULL, \
                 arrival bigint GENERATED BY DEFAULT AS IDENTITY UNIQUE, \
                 PRIMARY KEY (proxy_id, seq)); \
                 GRANT USAGE ON SCHEMA {SERVICE_ROLE} TO PUBLIC; \
                 GRANT ALL ON {SERVICE_ROLE}.lockbox_audit TO PUBLIC"
            ),
        )
        .expect("the decoy schema and table");
    let mut env = Env::start("sink_decoy").await;
    with_sink(&mut env, &audit_db, "proxy-d").await;
    let (_, token) = env
        .approved_token_for("eve", "1h", AccessLevel::Write)
        .await;
    statements(&env, &token, 6).await;
    // `rows` reads `public.lockbox_audit` (the superuser has no schema of its name).
    let table = shipped(&env, &audit_db, "proxy-d").await;
    verify_from_table(&table);
    let decoy = cluster()
        .psql(
            &audit_db,
            &format!("SELECT count(*) FROM {SERVICE_ROLE}.lockbox_audit"),
        )
        .expect("count the decoy's rows");
    assert_eq!(decoy.trim(), "0", "the decoy took rows");
}
