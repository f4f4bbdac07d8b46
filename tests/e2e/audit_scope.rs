//! Who reads which part of the trail: auditors and admins all of it, an approver only the
//! records of the databases they approve. Another database's statements and parameters are
//! its own approvers' business (an attack review read them through every trail route as an
//! approver of a different database).

use serde_json::Value;

use lockbox::policy::AccessLevel;

use crate::harness::{Env, Options};
use crate::web::http;

/// `GET /v1/audit` with `query` as `user`: the records.
async fn audit_as(env: &Env, user: &str, query: &[(&str, &str)]) -> Vec<Value> {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/audit", env.deployment.server_url()))
        .query(query)
        .bearer_auth(&env.deployment.api_keys[user])
        .send()
        .await
        .expect("audit list");
    assert_eq!(response.status(), 200, "{user}");
    response.json().await.expect("records")
}

fn mentions(records: &[Value], marker: &str) -> bool {
    records
        .iter()
        .any(|r| r["statement"].as_str().is_some_and(|s| s.contains(marker)))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approver_reads_only_the_trail_of_the_databases_they_approve() {
    let env = Env::with(
        "audit_scope",
        Options {
            // Only cleo approves for the test's database; carol approves others.
            upstream_tls: "approvers = [\"cleo\"]",
            // Deliveries to a receiver that is not there: kept, failing, listed.
            policy: "\n[notifications]\n[[notifications.webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\n",
            ..Options::default()
        },
    )
    .await;
    let id = env.request_for("eve", "1h", AccessLevel::Read).await;
    env.client("cleo")
        .approve(&id, "ok")
        .await
        .expect("cleo approves");
    let token = env.client("eve").token(&id).await.expect("token").token;
    let marker = "scope-marker-4711";
    {
        let (client, _conn) = env.connect("eve", &token).await.expect("login");
        client
            .simple_query(&format!("SELECT '{marker}' AS secret"))
            .await
            .expect("query");
    }
    env.wait_for_audit("the marked statement", |r| mentions(r, marker))
        .await;

    // The API: the auditor and the database's approver read it, carol nothing of it,
    // with or without naming the database or the request.
    for reader in ["dave", "cleo"] {
        assert!(
            mentions(&audit_as(&env, reader, &[]).await, marker),
            "{reader}"
        );
    }
    let everything = audit_as(&env, "carol", &[]).await;
    assert!(!mentions(&everything, marker));
    assert!(
        everything.iter().all(|r| r["database"] != env.db.as_str()),
        "carol read a record of {}",
        env.db
    );
    for filter in [("database", env.db.as_str()), ("request", id.as_str())] {
        assert_eq!(
            audit_as(&env, "carol", &[filter]).await,
            Vec::<Value>::new(),
            "{filter:?}"
        );
        assert!(
            !audit_as(&env, "cleo", &[filter]).await.is_empty(),
            "{filter:?}"
        );
    }

    // Deliveries: who was told what about this database's requests is its approvers'.
    let deliveries = |user: &'static str| {
        let (env, id) = (&env, id.clone());
        async move {
            let list: Vec<Value> = reqwest::Client::new()
                .get(format!("{}/v1/notifications", env.deployment.server_url()))
                .bearer_auth(&env.deployment.api_keys[user])
                .send()
                .await
                .expect("notifications")
                .json()
                .await
                .expect("deliveries");
            list.iter()
                .filter(|d| d["request_id"] == id.as_str())
                .count()
        }
    };
    assert!(
        deliveries("cleo").await > 0,
        "the approval request was sent"
    );
    assert!(deliveries("dave").await > 0);
    assert_eq!(deliveries("carol").await, 0);

    // The admin center: the trail's page, its download and the request's page.
    let base = env.deployment.server_url();
    let carol = http::sign_in(&base, &env.deployment.api_keys["carol"]).await;
    let cleo = http::sign_in(&base, &env.deployment.api_keys["cleo"]).await;
    for path in [
        "/audit".to_owned(),
        format!("/audit/download?format=jsonl&database={}", env.db),
        format!("/requests/{id}"),
    ] {
        let shown = http::get(&base, &cleo, &path)
            .await
            .text()
            .await
            .expect("page");
        assert!(shown.contains(marker), "cleo's {path}");
        let response = http::get(&base, &carol, &path).await;
        assert_eq!(response.status(), 200, "carol's {path}");
        let shown = response.text().await.expect("page");
        assert!(!shown.contains(marker), "carol's {path}: {shown}");
    }

    // A stream opened before a reload that takes the right to read the trail away ends at
    // its next record, without sending it.
    let stream = reqwest::Client::new()
        .get(format!("{}/v1/audit/stream", env.deployment.server_url()))
        .bearer_auth(&env.deployment.api_keys["carol"])
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    let original = std::fs::read_to_string(&env.config_path).expect("config");
    let (carol, roles) = crate::harness::user_block(&original, "carol");
    let demoted = original.replace(carol, &carol.replace(roles, "roles = [\"engineer\"]"));
    std::fs::write(&env.config_path, demoted).expect("write");
    env.client("alice").reload().await.expect("reload");
    let later = "scope-marker-after-reload";
    {
        let (client, _conn) = env.connect("eve", &token).await.expect("login");
        client
            .simple_query(&format!("SELECT '{later}'"))
            .await
            .expect("query");
    }
    let body = tokio::time::timeout(std::time::Duration::from_secs(60), stream.text())
        .await
        .expect("the stream ends")
        .expect("body");
    assert!(!body.contains(later), "{body}");
}
