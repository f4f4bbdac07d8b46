//! The operations surface: `/metrics` after real sessions, `lockbox session list/kill`,
//! per-database health, and `serve --log-format`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{db_error, Env, Options};

/// A scrape, parsed: every sample by `name{labels}`, and the families with HELP and TYPE.
struct Exposition {
    samples: BTreeMap<String, f64>,
}

impl Exposition {
    /// Parses the text format strictly: each line is a HELP, a TYPE or a sample, and every
    /// sample belongs to a family announced with both.
    fn parse(text: &str) -> Exposition {
        let mut help = std::collections::BTreeSet::new();
        let mut typed = std::collections::BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, doc) = rest.split_once(' ').expect("HELP name and text");
                assert!(!doc.is_empty(), "{line}");
                help.insert(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name and kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                typed.insert(name.to_owned(), kind.to_owned());
            } else {
                let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
                let name = series.split('{').next().expect("name");
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                    "metric name in {line}"
                );
                if let Some(labels) = series.strip_prefix(name) {
                    if !labels.is_empty() {
                        assert!(
                            labels.starts_with('{') && labels.ends_with('}'),
                            "labels in {line}"
                        );
                        for pair in labels[1..labels.len() - 1].split(',') {
                            let (k, v) = pair.split_once('=').expect("label=value");
                            assert!(!k.is_empty() && v.starts_with('"') && v.ends_with('"'));
                        }
                    }
                }
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s)
                            .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                    })
                    .unwrap_or(name);
                assert!(
                    help.contains(family) && typed.contains_key(family),
                    "{family} has HELP and TYPE before its samples"
                );
                samples.insert(series.to_owned(), value);
            }
        }
        Exposition { samples }
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {:#?}", self.samples.keys()))
    }
}

async fn scrape_as(env: &Env, user: &str) -> reqwest::Response {
    let key = &env.deployment.api_keys[user];
    reqwest::Client::new()
        .get(format!("{}/metrics", env.deployment.server_url()))
        .bearer_auth(key)
        .send()
        .await
        .expect("scrape")
}

async fn scrape(env: &Env) -> Exposition {
    let response = scrape_as(env, "dave").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("content type")
        .to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    Exposition::parse(&response.text().await.expect("body"))
}

/// Scrapes until `check` holds on the change since `before` (outcomes are counted as the
/// relay records them, which may be just after the client saw its answer).
async fn wait_for_metrics(
    env: &Env,
    what: &str,
    check: impl Fn(&Exposition) -> bool,
) -> Exposition {
    for _ in 0..100 {
        let now = scrape(env).await;
        if check(&now) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("metrics never showed {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_real_sessions_and_statements() {
    let env = Env::start("ops_metrics").await;
    let (_id, token) = env.approved_token("eve", "1h").await;
    let before = scrape(&env).await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    for _ in 0..3 {
        client.simple_query("SELECT 1").await.expect("select");
    }
    let refused = client
        .simple_query("INSERT INTO items VALUES (99, 'x')")
        .await
        .expect_err("a read grant may not write");
    assert_eq!(db_error(&refused).0, "42501");

    let delta = |after: &Exposition, series: &str| after.get(series) - before.get(series);
    let after = wait_for_metrics(&env, "the refusal's outcome", |m| {
        delta(m, "lockbox_refusals_total{rule=\"read_only\"}") == 1.0
            && delta(m, "lockbox_statement_outcomes_total{outcome=\"ok\"}") == 3.0
    })
    .await;
    assert_eq!(
        delta(&after, "lockbox_statements_total{kind=\"select\"}"),
        3.0
    );
    assert_eq!(
        delta(&after, "lockbox_statements_total{kind=\"insert\"}"),
        1.0
    );
    assert_eq!(
        delta(
            &after,
            "lockbox_statement_outcomes_total{outcome=\"refused\"}"
        ),
        1.0
    );
    assert_eq!(delta(&after, "lockbox_sessions_admitted_total"), 1.0);
    assert_eq!(after.get("lockbox_sessions_open"), 1.0);
    assert_eq!(after.get("lockbox_connections"), 1.0);
    assert_eq!(after.get("lockbox_audit_healthy"), 1.0);
    assert_eq!(
        after.get(&format!("lockbox_database_up{{database=\"{}\"}}", env.db)),
        1.0
    );
    // Each statement waited for its record to be durable: latency and fsync batches moved.
    assert!(delta(&after, "lockbox_audit_append_seconds_count") >= 4.0);
    assert!(delta(&after, "lockbox_audit_fsync_batch_records_count") >= 1.0);
    // Every sync that made a batch durable was timed (the syncer's idle syncs too).
    assert!(
        delta(&after, "lockbox_audit_fsync_seconds_count")
            >= delta(&after, "lockbox_audit_fsync_batch_records_count")
    );
    assert!(delta(&after, "lockbox_audit_fsync_seconds_sum") > 0.0);
    assert_eq!(
        after.get("lockbox_audit_append_seconds_bucket{le=\"+Inf\"}"),
        after.get("lockbox_audit_append_seconds_count")
    );
    assert!(after.get("lockbox_api_requests_total{class=\"2xx\"}") >= 1.0);

    drop(client);
    wait_for_metrics(&env, "the session's end", |m| {
        m.get("lockbox_sessions_open") == 0.0
    })
    .await;
    let bogus = env
        .connect("eve", "not-a-token")
        .await
        .expect_err("refused");
    assert_eq!(db_error(&bogus).0, "28P01");
    wait_for_metrics(&env, "the refused login", |m| {
        delta(
            m,
            "lockbox_sessions_refused_total{reason=\"authentication\"}",
        ) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_an_admin_or_auditor_key() {
    let env = Env::start("ops_metrics_auth").await;
    assert_eq!(scrape_as(&env, "eve").await.status(), 403);
    assert_eq!(scrape_as(&env, "alice").await.status(), 200);
    let anonymous = reqwest::get(format!("{}/metrics", env.deployment.server_url()))
        .await
        .expect("scrape");
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_listed_and_killed_like_a_revocation() {
    let env = Env::start("ops_sessions").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, conn) = env.connect("eve", &token).await.expect("login");
    client.simple_query("SELECT 1").await.expect("select");
    client.simple_query("SELECT 2").await.expect("select");

    let list = env.client("carol").list_sessions().await.expect("list");
    assert_eq!(list.len(), 1, "{list:?}");
    let session = &list[0];
    assert_eq!(session.engineer, "eve");
    assert_eq!(session.request_id, id);
    assert_eq!(session.database, env.db);
    assert_eq!(session.statements, 2);
    assert!(session.client_addr.starts_with("127.0.0.1:"));
    // Engineers see their own sessions only; bob has none.
    assert_eq!(
        env.client("eve").list_sessions().await.expect("own").len(),
        1
    );
    assert!(env
        .client("bob")
        .list_sessions()
        .await
        .expect("own")
        .is_empty());

    // The command line shows the same (`--wide`: no cell cut to fit 100 columns).
    let out = Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["session", "list", "--wide"])
        .env("LOCKBOX_SERVER", env.deployment.server_url())
        .env("LOCKBOX_API_KEY", &env.deployment.api_keys["alice"])
        .output()
        .expect("run lockbox");
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with(&session.session_id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("eve") && row.contains(&id) && row.contains(" 2 "),
        "{row}"
    );

    // Another engineer is told it is not live, as of a session that does not exist.
    let denied = env
        .client("bob")
        .kill_session(&session.session_id, "I want out")
        .await
        .expect_err("an engineer may not end another's session");
    assert!(matches!(
        denied,
        lockbox::client::ClientError::Api { status: 404, .. }
    ));
    // An auditor sees it and may not end it: told so.
    let seen = env
        .client("dave")
        .kill_session(&session.session_id, "I see it")
        .await
        .expect_err("an auditor may not kill");
    assert!(matches!(
        seen,
        lockbox::client::ClientError::Api { status: 403, .. }
    ));
    let missing = env
        .client("alice")
        .kill_session("no-such-session", "gone")
        .await
        .expect_err("not live");
    assert!(matches!(
        missing,
        lockbox::client::ClientError::Api { status: 404, .. }
    ));

    env.client("alice")
        .kill_session(&session.session_id, "suspicious activity")
        .await
        .expect("kill");
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the session ends")
        .expect("join");
    let (code, message) = db_error(&ended.expect("a FATAL"));
    assert_eq!(code, "57P01");
    assert!(
        message.contains("suspicious activity") && message.contains("by an operator"),
        "{message}"
    );
    let records = env
        .wait_for_audit("dropped_killed", |records| {
            records.iter().any(|r| {
                r["event"] == "dropped_killed" && r["session_id"] == session.session_id.as_str()
            })
        })
        .await;
    let killed = records
        .iter()
        .find(|r| r["event"] == "session_killed")
        .expect("a session_killed record");
    assert_eq!(killed["actor"], "alice");
    assert_eq!(killed["request_id"], id.as_str());
    assert!(killed["reason"]
        .as_str()
        .is_some_and(|r| r.contains("suspicious activity") && r.contains(&session.session_id)));
    assert!(env
        .client("carol")
        .list_sessions()
        .await
        .expect("list")
        .is_empty());
    // The grant itself stays: killing a session is not a revocation.
    env.connect("eve", &token).await.expect("login again");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_an_unreachable_database() {
    // Nothing listens on 127.0.0.2 (the cluster listens on 127.0.0.1 only).
    let env = Env::with(
        "ops_health",
        Options {
            upstream_host: "127.0.0.2",
            ..Default::default()
        },
    )
    .await;
    // Database names are for callers who may read the audit trail (an auditor here).
    let health: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/health", env.deployment.server_url()))
        .bearer_auth(&env.deployment.api_keys["dave"])
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["audit"], "ok");
    let databases = health["databases"].as_array().expect("databases");
    let status_of = |name: &str| {
        databases
            .iter()
            .find(|d| d["name"] == name)
            .map(|d| d["status"].clone())
    };
    assert_eq!(status_of(&env.db), Some("unreachable".into()), "{health}");
    assert_eq!(status_of("other"), Some("ok".into()), "{health}");
    let metrics = scrape(&env).await;
    assert_eq!(
        metrics.get(&format!("lockbox_database_up{{database=\"{}\"}}", env.db)),
        0.0
    );
    assert_eq!(metrics.get("lockbox_database_up{database=\"other\"}"), 1.0);
}

/// Runs `lockbox serve --log-format FORMAT` with stderr to a file, makes one API call as
/// alice, stops it, and returns what it logged.
async fn serve_log(name: &str, format: &str) -> (String, String) {
    let env = Env::prepare(name, Options::default());
    let log_path = env.deployment.dir.join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["serve", "--log-format", format, "--config"])
        .arg(&env.config_path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start lockbox serve");
    let key = env.deployment.api_keys["alice"].clone();
    let mut answered = false;
    for _ in 0..100 {
        if env.client("alice").whoami().await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered, "lockbox serve did not answer");
    (std::fs::read_to_string(&log_path).expect("log"), key)
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_json_lines_with_one_line_per_api_call() {
    let (log, key) = serve_log("ops_log_json", "json").await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let call = lines
        .iter()
        .find(|l| l["message"] == "api call" && l["route"] == "/v1/whoami")
        .unwrap_or_else(|| panic!("no access line: {log}"));
    assert_eq!(call["method"], "GET");
    assert_eq!(call["status"], 200);
    assert_eq!(call["caller"], "alice");
    assert!(call["duration_ms"].is_number());
    assert!(!log.contains(&key), "the API key reached the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let (log, key) = serve_log("ops_log_text", "text").await;
    assert!(log.contains("api call"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file: {log:?}"
    );
    assert!(!log.contains(&key), "the API key reached the log");
}
