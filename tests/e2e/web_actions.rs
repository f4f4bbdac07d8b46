//! The request page's actions over plain HTTP, as a browser with JavaScript off sends them:
//! each is a form POST that redirects back (303) with a flash, is offered only to whom the
//! policy allows, and leaves the request as the API would. And whatever a requester typed
//! is shown as text.

use lockbox::policy::{AccessLevel, NewRequest};

use crate::harness::Env;
use crate::web::http;

struct Persona<'a> {
    base: &'a str,
    cookie: String,
}

impl Persona<'_> {
    async fn sign_in<'a>(env: &'a Env, base: &'a str, user: &str) -> Persona<'a> {
        let key = env.deployment.api_keys.get(user).expect("key");
        Persona {
            base,
            cookie: http::sign_in(base, key).await,
        }
    }

    async fn page(&self, path: &str) -> String {
        let response = http::get(self.base, &self.cookie, path).await;
        assert_eq!(response.status(), 200, "{path}");
        response.text().await.expect("page")
    }

    /// Posts `fields` (and the session's CSRF token) to `path`; returns where it redirected.
    async fn act(&self, path: &str, fields: &[(&str, &str)]) -> String {
        let page = self.page("/requests").await;
        let csrf = http::hidden_field(&page, "csrf").expect("csrf");
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        let response = http::post(self.base, &self.cookie, path, &all).await;
        assert_eq!(response.status(), 303, "{path}");
        response.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned()
    }
}

fn ask(env: &Env, reason: &str) -> NewRequest {
    NewRequest {
        database: env.db.clone(),
        ticket: "SUP-77".into(),
        reason: reason.into(),
        access: AccessLevel::Read,
        duration: Some("1h".into()),
        ..NewRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_action_works_as_a_plain_form() {
    let env = Env::start("web_actions").await;
    let base = env.deployment.server_url();
    let carol = Persona::sign_in(&env, &base, "carol").await;
    let eve = Persona::sign_in(&env, &base, "eve").await;
    let dave = Persona::sign_in(&env, &base, "dave").await;

    // Deny with a justification; a missing justification comes back as a flash.
    let hostile = "<script>alert(1)</script>";
    let denied = env
        .client("eve")
        .create_request(&ask(&env, hostile))
        .await
        .expect("file")
        .id
        .0;
    let page = carol.page(&format!("/requests/{denied}")).await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "escaped"
    );
    assert!(!page.contains("<script>alert"), "never markup");
    assert!(
        page.contains("value=\"approve\""),
        "the approver is offered a decision"
    );
    assert!(
        !dave
            .page(&format!("/requests/{denied}"))
            .await
            .contains("<form class=\"action\""),
        "an auditor is offered no action"
    );
    let back = carol
        .act(&format!("/requests/{denied}/deny"), &[("reason", " ")])
        .await;
    assert_eq!(back, format!("/requests/{denied}"));
    // A download in between does not use up the flash meant for the page.
    let download = http::get(&base, &carol.cookie, "/audit/download?format=jsonl").await;
    assert_eq!(download.status(), 200);
    assert!(
        carol.page(&back).await.contains("justification"),
        "the refusal is flashed"
    );
    carol
        .act(
            &format!("/requests/{denied}/deny"),
            &[("reason", "not for this ticket")],
        )
        .await;
    let shown = env
        .client("dave")
        .show_request(&denied)
        .await
        .expect("show");
    assert_eq!(shown.status.as_str(), "denied");

    // Approve with a shorter window; the engineer asks for an extension, which is approved
    // on its own page.
    let granted = env
        .client("eve")
        .create_request(&ask(&env, "slow"))
        .await
        .expect("file")
        .id
        .0;
    carol
        .act(
            &format!("/requests/{granted}/approve"),
            &[("reason", "ok"), ("duration", "30m")],
        )
        .await;
    let shown = env
        .client("dave")
        .show_request(&granted)
        .await
        .expect("show");
    assert_eq!(
        shown.duration_secs, 1800,
        "the approver shortened the window"
    );
    let extension = eve
        .act(
            &format!("/requests/{granted}/extend"),
            &[("duration", "15m"), ("reason", "more")],
        )
        .await;
    let extension_id = extension.trim_start_matches("/requests/").to_owned();
    assert_ne!(extension_id, granted);
    assert!(carol
        .page(&format!("/requests/{granted}"))
        .await
        .contains(&extension));
    carol
        .act(
            &format!("/requests/{extension_id}/approve"),
            &[("reason", "fine")],
        )
        .await;
    let extended = env
        .client("dave")
        .show_request(&granted)
        .await
        .expect("show");
    assert!(
        extended.access_expires_at > shown.access_expires_at,
        "the grant runs on"
    );

    // With JavaScript off the page still lists the latest statements.
    let token = env
        .client("eve")
        .token(&granted)
        .await
        .expect("token")
        .token;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    client
        .simple_query("SELECT 42 AS served_without_js")
        .await
        .expect("query");
    env.wait_for_audit("the statement", |r| {
        r.iter().any(|r| {
            r["statement"]
                .as_str()
                .is_some_and(|s| s.contains("served_without_js"))
        })
    })
    .await;
    assert!(carol
        .page(&format!("/requests/{granted}"))
        .await
        .contains("served_without_js"));
    // Each live session with its button, for whom may end it only.
    let live = carol.page(&format!("/requests/{granted}")).await;
    assert!(live.contains("End session"), "{live}");
    let audited = dave.page(&format!("/requests/{granted}")).await;
    assert!(audited.contains("Live sessions") && !audited.contains("End session"));
    // Its engineer may end their own (a frozen client holds a limited grant's place).
    let own = eve.page(&format!("/requests/{granted}")).await;
    assert!(own.contains("End session"), "{own}");

    // The requester cancels a pending request of theirs.
    let cancelled = env
        .client("eve")
        .create_request(&ask(&env, "oops"))
        .await
        .expect("file")
        .id
        .0;
    assert!(eve
        .page(&format!("/requests/{cancelled}"))
        .await
        .contains("Cancel request"));
    eve.act(&format!("/requests/{cancelled}/cancel"), &[("reason", "")])
        .await;
    let shown = env
        .client("dave")
        .show_request(&cancelled)
        .await
        .expect("show");
    assert_eq!(shown.status.as_str(), "cancelled");

    // Break-glass access is flagged in the table and acknowledged from its page.
    let mut urgent = ask(&env, "outage");
    urgent.break_glass = true;
    let glass = env
        .client("oncall")
        .create_request(&urgent)
        .await
        .expect("break glass")
        .id
        .0;
    assert!(carol.page("/requests").await.contains("break-glass"));
    carol
        .act(
            &format!("/requests/{glass}/acknowledge"),
            &[("reason", "reviewed the outage")],
        )
        .await;
    let shown = env.client("dave").show_request(&glass).await.expect("show");
    assert_eq!(shown.acknowledged_by.as_deref(), Some("carol"));

    // An action nobody offers is a 404, a request nobody may see too.
    let csrf = http::hidden_field(&carol.page("/requests").await, "csrf").expect("csrf");
    let unknown = http::post(
        &base,
        &carol.cookie,
        &format!("/requests/{granted}/delete"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(unknown.status(), 404);

    // The trail newest first, in pages; the JSON Lines download holds what the filter
    // selects, oldest first.
    let audit = dave.page("/audit").await;
    let seqs: Vec<u64> = audit
        .split("<tr><td>")
        .skip(1)
        .filter_map(|c| c.split('<').next()?.parse().ok())
        .collect();
    assert!(seqs.len() > 10, "{audit}");
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    let jsonl = http::get(
        &base,
        &dave.cookie,
        &format!("/audit/download?request={denied}&format=jsonl"),
    )
    .await
    .text()
    .await
    .expect("jsonl");
    let events: Vec<String> = jsonl
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")["event"].to_string()
        })
        .collect();
    assert_eq!(events, ["\"created\"", "\"denied\""], "{jsonl}");
    let bob = Persona::sign_in(&env, &base, "bob").await;
    assert_eq!(
        http::get(&base, &bob.cookie, &format!("/requests/{granted}"))
            .await
            .status(),
        404
    );
}
