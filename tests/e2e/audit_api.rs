//! The trail for auditors over HTTP: pages that add up to the whole trail, a live stream
//! an approver can watch a session on (resumable with `Last-Event-ID`), and
//! `lockbox audit list --follow`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use lockbox::audit::AuditQuery;
use serde_json::Value;

use crate::harness::Env;

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().filter_map(|r| r["seq"].as_u64()).collect()
}

async fn run_statements(env: &Env, token: &str, n: usize) {
    let (client, _conn) = env.connect("eve", token).await.expect("login");
    for i in 0..n {
        client
            .simple_query(&format!("SELECT {i} AS step"))
            .await
            .expect("query");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_add_up_to_the_whole_trail() {
    let env = Env::start("audit_pages").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    run_statements(&env, &token, 12).await;
    env.wait_for_audit("12 outcomes", |r| {
        r.iter()
            .filter(|r| r["type"] == "outcome" && r["request_id"] == id.as_str())
            .count()
            == 12
    })
    .await;

    let http = reqwest::Client::new();
    let key = &env.deployment.api_keys["dave"];
    let url = format!("{}/v1/audit", env.deployment.server_url());
    let first = http
        .get(&url)
        .query(&[("request", id.as_str()), ("limit", "5")])
        .bearer_auth(key)
        .send()
        .await
        .expect("page");
    let link = first
        .headers()
        .get("link")
        .and_then(|l| l.to_str().ok())
        .expect("a full page links to the next one")
        .to_owned();
    let page: Vec<Value> = first.json().await.expect("json");
    assert_eq!(page.len(), 5);
    let last = page[4]["seq"].as_u64().expect("seq");
    assert!(
        link.contains(&format!("after_seq={last}")) && link.contains("rel=\"next\""),
        "{link}"
    );

    // The client walks the pages; together they are exactly what the file holds.
    let all = env
        .client("dave")
        .audit(&AuditQuery {
            request: Some(id.clone()),
            ..AuditQuery::default()
        })
        .await
        .expect("all pages");
    let in_file: Vec<Value> = env
        .audit()
        .into_iter()
        .filter(|r| r["request_id"] == id.as_str())
        .collect();
    assert_eq!(seqs(&all), seqs(&in_file));
    assert!(all.len() > 24, "{} records", all.len());

    let limited = env
        .client("dave")
        .audit(&AuditQuery {
            request: Some(id.clone()),
            limit: Some(7),
            ..AuditQuery::default()
        })
        .await
        .expect("limited");
    assert_eq!(seqs(&limited), seqs(&in_file[..7]));
}

/// Reads SSE `data:` payloads from `response` until `want` records arrived.
async fn read_events(response: &mut reqwest::Response, want: usize) -> Vec<Value> {
    let mut buffer = String::new();
    let mut out = Vec::new();
    while out.len() < want {
        let chunk = tokio::time::timeout(Duration::from_secs(20), response.chunk())
            .await
            .expect("a live record within 20 s")
            .expect("stream")
            .expect("stream still open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                out.push(serde_json::from_str(data).expect("record JSON"));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approver_watches_a_session_live_and_resumes_where_it_left_off() {
    let env = Env::start("audit_sse").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (other, other_token) = env.approved_token("bob", "1h").await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v1/requests/{id}/audit/stream",
        env.deployment.server_url()
    );
    let refused = http
        .get(&url)
        .bearer_auth(&env.deployment.api_keys["eve"])
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 403, "engineers do not read the trail");

    let mut stream = http
        .get(&url)
        .bearer_auth(&env.deployment.api_keys["carol"])
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    // Someone else's session is not part of this stream.
    let (bob, _bob_conn) = env.connect("bob", &other_token).await.expect("bob");
    bob.simple_query("SELECT 'bob was here'")
        .await
        .expect("bob");
    run_statements(&env, &token, 3).await;

    let seen = read_events(&mut stream, 8).await;
    assert!(
        seen.iter().all(|r| r["request_id"] == id.as_str()),
        "{seen:#?}"
    );
    assert!(seen.iter().all(|r| r["request_id"] != other.as_str()));
    let statements: Vec<&str> = seen
        .iter()
        .filter(|r| r["type"] == "statement")
        .filter_map(|r| r["statement"].as_str())
        .collect();
    assert!(
        statements.starts_with(&["SELECT 0 AS step", "SELECT 1 AS step"]),
        "{statements:?}"
    );
    let ordered = seqs(&seen);
    assert!(ordered.windows(2).all(|w| w[0] < w[1]), "{ordered:?}");
    drop(stream);

    // A client that reconnects with Last-Event-ID carries on after that record.
    let mut resumed = http
        .get(&url)
        .header("Last-Event-ID", ordered[1].to_string())
        .bearer_auth(&env.deployment.api_keys["dave"])
        .send()
        .await
        .expect("stream");
    let again = read_events(&mut resumed, 2).await;
    assert_eq!(seqs(&again), ordered[2..4].to_vec());
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_list_follow_prints_records_as_they_are_written() {
    let env = Env::start("audit_follow").await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args([
            "audit",
            "list",
            "--follow",
            "--request",
            &id,
            "--kind",
            "select",
        ])
        .env("LOCKBOX_SERVER", env.deployment.server_url())
        .env("LOCKBOX_API_KEY", &env.deployment.api_keys["dave"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lockbox");
    let stdout = child.stdout.take().expect("stdout");
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(3)
            .collect::<Vec<String>>()
    });
    run_statements(&env, &token, 3).await;
    let reader = tokio::task::spawn_blocking(move || lines.join().expect("reader"));
    let lines = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("three records within 30 s")
        .expect("reader");
    let _ = child.kill();
    let _ = child.wait();
    let statements: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .map(|r| r["statement"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        statements,
        ["SELECT 0 AS step", "SELECT 1 AS step", "SELECT 2 AS step"]
    );
}
