//! The fleet's trail read from the PostgreSQL audit sink (issue 13): three nodes ship to
//! one audit database, statements run through nodes 2 and 3, and `audit list`, the API
//! (page by page) and the admin center on node 1 show all of them with their nodes. The
//! admin center's sign-in made on node 1 holds on node 2.

use std::time::Duration;

use serde_json::Value;

use lockbox::audit::AuditQuery;

use crate::fleet::{client_of, connect_via, node_one, start_node};
use crate::harness::{cluster, Env, Options, SERVICE_PASSWORD, SERVICE_ROLE};
use crate::web::http;

/// Node 1 of a fleet whose nodes all ship to the audit database `audit_db`, each under its
/// node id as `proxy_id` (node i's config says `node-i` for both).
async fn fleet_with_sink(name: &str, audit_db: &str) -> Env {
    let pg = cluster();
    pg.psql("postgres", &format!("DROP DATABASE IF EXISTS {audit_db}"))
        .expect("drop audit database");
    pg.psql(
        "postgres",
        &format!("CREATE DATABASE {audit_db} OWNER {SERVICE_ROLE}"),
    )
    .expect("create audit database");
    let mut env = Env::prepare(
        name,
        Options {
            state_postgres: true,
            ..Options::default()
        },
    );
    let dir = env.config_path.parent().expect("config folder").to_owned();
    std::fs::write(dir.join("audit-db.password"), SERVICE_PASSWORD).expect("password file");
    let mut text = std::fs::read_to_string(&env.config_path).expect("config");
    text.push_str(&format!(
        "\n[audit.postgres]\nurl = \"postgres://{SERVICE_ROLE}@127.0.0.1:{}/{audit_db}\"\n\
         password_file = \"audit-db.password\"\nproxy_id = \"node-1\"\n",
        pg.port
    ));
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("node 1 starts"));
    env
}

/// The statement records of `id` as node 1's API lists them: (node, statement).
async fn statements_seen(env: &Env, id: &str) -> Vec<(String, String)> {
    let records = client_of(env, node_one(env), "dave")
        .audit(&AuditQuery {
            request: Some(id.to_owned()),
            kind: Some("select".into()),
            ..AuditQuery::default()
        })
        .await
        .expect("audit list through node 1");
    records
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap_or_default().to_owned(),
                r["statement"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Every record of `id` through the API `limit` at a time, following each page's
/// `Link: rel="next"`.
async fn paged(env: &Env, id: &str, limit: usize) -> Vec<Value> {
    let key = env.deployment.api_keys.get("dave").expect("key");
    let base = format!("http://{}", node_one(env).api_addr);
    let mut next = Some(format!("/v1/audit?request={id}&limit={limit}"));
    let mut all = Vec::new();
    while let Some(path) = next.take() {
        let response = http::client()
            .get(format!("{base}{path}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET /v1/audit");
        assert_eq!(response.status(), 200, "{path}");
        next = response
            .headers()
            .get("link")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.strip_prefix('<'))
            .and_then(|l| l.split_once('>'))
            .map(|(p, _)| p.to_owned());
        let page: Vec<Value> = response.json().await.expect("records");
        assert!(page.len() <= limit);
        all.extend(page);
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_list_the_api_and_the_admin_center_read_the_whole_fleet_from_the_audit_database() {
    let env = fleet_with_sink("fleet_audit", "t_fleet_audit_sink").await;
    let two = start_node(&env, 2).await;
    let three = start_node(&env, 3).await;
    let (id, token) = env.approved_token("eve", "1h").await;
    // The sessions stay open to the end, so no record of the request comes in late.
    let mut sessions = Vec::new();
    for (node, port) in [(2, two.proxy_addr.port()), (3, three.proxy_addr.port())] {
        let (client, connection) = connect_via(&env, port, &token).await.expect("connect");
        client
            .simple_query(&format!("SELECT 'via node {node}'"))
            .await
            .expect("query");
        sessions.push((client, connection));
    }
    // As fresh as the sink: wait (bounded) until the audit database holds every record of
    // the request the three nodes' files hold.
    let in_files = || {
        ["audit.jsonl", "node2.jsonl", "node3.jsonl"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(env.audit_path.with_file_name(f))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|r| r["request_id"] == id.as_str())
                    .count()
            })
            .sum::<usize>()
    };
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = statements_seen(&env, &id).await;
        let listed = paged(&env, &id, 1000).await.len();
        if seen.len() >= 2 && listed == in_files() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("node-2".to_owned(), "SELECT 'via node 2'".to_owned()),
            ("node-3".to_owned(), "SELECT 'via node 3'".to_owned()),
        ]
    );

    // The API pages through records of several nodes without losing or repeating one.
    let whole = paged(&env, &id, 1000).await;
    let nodes: std::collections::BTreeSet<&str> =
        whole.iter().filter_map(|r| r["node"].as_str()).collect();
    assert!(
        nodes.contains("node-1") && nodes.contains("node-2") && nodes.contains("node-3"),
        "{nodes:?}"
    );
    let key = |r: &Value| (r["node"].to_string(), r["seq"].as_u64());
    let by_two: Vec<_> = paged(&env, &id, 2).await.iter().map(key).collect();
    let at_once: Vec<_> = whole.iter().map(key).collect();
    assert_eq!(by_two, at_once);

    // `lockbox audit list` through node 1 names each statement's node.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["audit", "list", "--request", &id, "--format", "table"])
        .env(
            "LOCKBOX_SERVER",
            format!("http://{}", node_one(&env).api_addr),
        )
        .env(
            "LOCKBOX_API_KEY",
            env.deployment.api_keys.get("dave").expect("key"),
        )
        .output()
        .expect("lockbox audit list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for node in [2, 3] {
        assert!(
            table
                .lines()
                .any(|l| l.contains(&format!("\tnode-{node}\t"))
                    && l.contains(&format!("via node {node}"))),
            "{table}"
        );
    }

    // The admin center on node 1: the page and both downloads.
    let base = format!("http://{}", node_one(&env).api_addr);
    let cookie = http::sign_in(&base, env.deployment.api_keys.get("dave").expect("key")).await;
    let page = http::get(&base, &cookie, &format!("/audit?request={id}"))
        .await
        .text()
        .await
        .expect("page");
    for node in [2, 3] {
        assert!(page.contains(&format!("<td>node-{node}</td>")), "{page}");
        assert!(page.contains(&format!("via node {node}")), "{page}");
    }
    let csv = http::get(
        &base,
        &cookie,
        &format!("/audit/download?format=csv&request={id}"),
    )
    .await
    .text()
    .await
    .expect("csv");
    assert!(
        csv.lines().next().is_some_and(|h| h.ends_with(",node")),
        "{csv}"
    );
    for node in [2, 3] {
        assert!(
            csv.lines().any(|l| l.contains(&format!("via node {node}"))
                && l.ends_with(&format!(",node-{node}"))),
            "{csv}"
        );
    }
    let jsonl = http::get(
        &base,
        &cookie,
        &format!("/audit/download?format=jsonl&request={id}"),
    )
    .await
    .text()
    .await
    .expect("jsonl");
    let downloaded: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(downloaded.iter().map(key).collect::<Vec<_>>(), at_once);
    drop(sessions);

    // The sign-in made on node 1 holds on node 2 (the state store keeps sign-ins), and
    // signing out there ends it on node 1 too.
    let base_two = format!("http://{}", two.api_addr);
    let on_two = http::get(&base_two, &cookie, "/audit").await;
    assert_eq!(on_two.status(), 200, "node 2 knows node 1's sign-in");
    let body = on_two.text().await.expect("page");
    let csrf = http::hidden_field(&body, "csrf").expect("csrf");
    let out = http::post(&base_two, &cookie, "/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status(), 303);
    let after = http::get(&base, &cookie, "/audit").await;
    assert_eq!(after.status(), 303, "signed out on every node");
    two.shutdown().await;
    three.shutdown().await;
}
