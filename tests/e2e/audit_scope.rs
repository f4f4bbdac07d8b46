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
}
