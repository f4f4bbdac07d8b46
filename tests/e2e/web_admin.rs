//! The admin pages over plain HTTP: scheduled exports created and run from `/exports`,
//! the policy form only for admins (a forged change refused), and `/health` showing the
//! customer's databases only to those the API shows them to.

use crate::harness::Env;
use crate::web::http;

async fn page(base: &str, cookie: &str, path: &str) -> (u16, String) {
    let response = http::get(base, cookie, path).await;
    let status = response.status().as_u16();
    (status, response.text().await.expect("page"))
}

async fn post(base: &str, cookie: &str, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    let (_, body) = page(base, cookie, "/requests").await;
    let csrf = http::hidden_field(&body, "csrf").expect("csrf");
    let mut all = vec![("csrf", csrf.as_str())];
    all.extend_from_slice(fields);
    http::post(base, cookie, path, &all).await
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_schedule_exports_and_change_the_policy_others_may_not() {
    let env = Env::start("web_admin").await;
    let base = env.deployment.server_url();
    let key = |u: &str| env.deployment.api_keys.get(u).expect("key").clone();
    let alice = http::sign_in(&base, &key("alice")).await;
    let carol = http::sign_in(&base, &key("carol")).await;
    let eve = http::sign_in(&base, &key("eve")).await;

    // Exports: created from the form, run now, with status, watermark and history.
    let folder = tempfile::tempdir().expect("tempdir");
    let to = folder.path().display().to_string();
    let created = post(
        &base,
        &alice,
        "/exports",
        &[
            ("name", "nightly"),
            ("database", ""),
            ("format", "jsonl"),
            ("to", &to),
            ("every", "1d"),
        ],
    )
    .await;
    assert_eq!(created.status(), 303);
    let ran = post(&base, &alice, "/exports/nightly/run", &[]).await;
    assert_eq!(ran.status(), 303);
    let (status, exports) = page(&base, &alice, "/exports").await;
    assert_eq!(status, 200);
    assert!(exports.contains("Export nightly ran: ok"), "{exports}");
    assert!(exports.contains("<h2>nightly</h2>"), "{exports}");
    assert!(
        !exports.contains("seq 0<"),
        "the watermark moved: {exports}"
    );
    assert!(exports.contains(&to), "history names the folder: {exports}");
    let (status, _) = page(&base, &carol, "/exports").await;
    assert_eq!(status, 403, "exports are for admins");
    let (_, nav) = page(&base, &carol, "/requests").await;
    assert!(
        !nav.contains("href=\"/exports\""),
        "no link to what is refused"
    );
    assert!(nav.contains("href=\"/audit\""), "approvers read the trail");
    let (_, nav) = page(&base, &eve, "/requests").await;
    assert!(!nav.contains("href=\"/audit\""));
    let forged = post(&base, &carol, "/exports/nightly/run", &[]).await;
    assert_eq!(forged.status(), 403);

    // The policy form is an admin's; a forged change by an approver is refused.
    let (_, policy) = page(&base, &carol, "/policy").await;
    assert!(!policy.contains("Save policy"), "no form for an approver");
    let forged = post(&base, &carol, "/policy", &[("protect", "none")]).await;
    assert_eq!(forged.status(), 403);
    let (_, policy) = page(&base, &alice, "/policy").await;
    assert!(policy.contains("Save policy"));
    let db = env.db.clone();
    let saved = post(
        &base,
        &alice,
        "/policy",
        &[("protect", "some"), ("database", &db)],
    )
    .await;
    assert_eq!(saved.status(), 303);
    let view = env.client("alice").policy().await.expect("policy");
    assert_eq!(view.protected_databases, vec![db.clone()]);
    assert!(env
        .audit()
        .iter()
        .any(|r| r["event"] == "policy_changed" && r["actor"] == "alice"));

    // Health: the databases for whom the API shows them, up/down for the rest.
    let (status, health) = page(&base, &alice, "/health").await;
    assert_eq!(status, 200);
    assert!(health.contains(&format!("<td>{db}</td>")), "{health}");
    assert!(health.contains("Audit writer"));
    let (_, health) = page(&base, &eve, "/health").await;
    assert!(!health.contains(&format!("<td>{db}</td>")), "{health}");
}
