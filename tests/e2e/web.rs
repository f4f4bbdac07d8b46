//! The admin center in a real headless Chromium: an approver approves, watches a session
//! live and revokes it; an auditor filters the trail and downloads it; an admin changes
//! the policy; an engineer is offered (and allowed) nothing of theirs to decide; forged and
//! token-less POSTs are refused; an expired sign-in goes back to `/login`.

use std::time::Duration;

use lockbox::policy::{AccessLevel, NewRequest};

use crate::harness::{db_error, Env, Options};

pub mod browser;
pub mod http;

use browser::{Browser, ONE_BROWSER};

/// Files a read request for `env`'s database as `engineer`, ticket `ticket`.
async fn file(env: &Env, engineer: &str, ticket: &str) -> String {
    env.client(engineer)
        .create_request(&NewRequest {
            database: env.db.clone(),
            ticket: ticket.into(),
            reason: "checkout is slow <b>for</b> one customer".into(),
            access: AccessLevel::Read,
            duration: Some("1h".into()),
            ..NewRequest::default()
        })
        .await
        .expect("create request")
        .id
        .0
}

/// Waits (bounded) for a connection to be dropped; returns the SQLSTATE it got.
async fn dropped(conn: tokio::task::JoinHandle<Option<tokio_postgres::Error>>) -> String {
    let err = tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("the session was never dropped")
        .expect("join");
    db_error(&err.expect("the session ended with an error from the proxy")).0
}

fn key<'a>(env: &'a Env, user: &str) -> &'a str {
    env.deployment
        .api_keys
        .get(user)
        .map(String::as_str)
        .expect("an API key")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approver_approves_watches_live_ends_a_session_and_revokes() {
    let _one = ONE_BROWSER.lock().await;
    let env = Env::start("web_approver").await;
    let id = file(&env, "eve", "SUP-4711").await;
    let b = Browser::start(&env.deployment.server_url()).await;
    b.sign_in(key(&env, "carol")).await;

    // The pending request is in the table, every column filled.
    let row = b.find("table tbody tr").await;
    let cells = row
        .find_all(fantoccini::Locator::Css("td"))
        .await
        .expect("cells");
    assert_eq!(cells.len(), 8, "support request, database, status, requested, request expires, access period, access expires, approvers");
    let mut texts = Vec::new();
    for cell in &cells {
        texts.push(cell.text().await.expect("cell"));
    }
    assert!(texts.iter().all(|t| !t.trim().is_empty()), "{texts:?}");
    assert!(texts[0].contains("SUP-4711"), "{texts:?}");
    assert_eq!(texts[1], env.db);
    assert_eq!(texts[2], "pending customer");

    // Approve with a justification: the request moves to approved.
    b.click("table tbody tr td a").await;
    assert_eq!(b.path().await, format!("/requests/{id}"));
    // The requester's HTML is shown as text.
    assert!(b.text("dd.reason").await.contains("<b>for</b>"));
    b.fill("#approve-reason", "customer agreed on the phone")
        .await;
    b.click("button[value=approve]").await;
    b.wait_text(".flash", "Approved").await;
    // Approved with its window open now: `active` (an approved grant inside its window).
    b.wait_text("dl.facts", "active").await;
    assert_eq!(
        env.client("carol")
            .show_request(&id)
            .await
            .expect("show")
            .status
            .as_str(),
        "active"
    );

    // The engineer connects; the approver watches a statement appear by itself.
    let token = env.client("eve").token(&id).await.expect("token").token;
    let (client, conn) = env.connect("eve", &token).await.expect("connect");
    b.goto(&format!("/requests/{id}")).await;
    b.wait_text("#live-state", "Live").await;
    client
        .simple_query("SELECT name FROM items WHERE id = 7 -- watched live")
        .await
        .expect("query");
    b.wait_text("#statements", "watched live").await;
    // A bidi override in a statement would reorder what the approver reads: the live list
    // shows it as an escape, and so does the list the server renders.
    client
        .simple_query("SELECT 'txt.exe' -- \u{202e}gpj.txt")
        .await
        .expect("query");
    b.wait_text("#statements", "-- \\u{202e}gpj.txt").await;
    b.goto(&format!("/requests/{id}")).await;
    let rendered = b.text("#statements").await;
    assert!(rendered.contains("-- \\u{202e}gpj.txt"), "{rendered}");
    assert!(!rendered.contains('\u{202e}'), "{rendered}");
    // A statement padded past the audit's field limit: its record keeps a prefix of
    // padding and what it names, and both lists say so.
    b.wait_text("#live-state", "Live").await;
    let padded = format!(
        "/* {} */ SELECT name FROM items WHERE id = 8",
        "x".repeat(70_000)
    );
    client.simple_query(&padded).await.expect("padded query");
    let summary = format!(
        "(clipped: {} bytes; relations: items; fields: name, id)",
        padded.len()
    );
    b.wait_text("#statements", &summary).await;
    b.goto(&format!("/requests/{id}")).await;
    let rendered = b.text("#statements").await;
    assert!(rendered.contains(&summary), "{rendered}");

    // End the session from the page: the engineer's session is dropped.
    b.goto(&format!("/requests/{id}")).await;
    b.fill("ul.sessions input[name=reason]", "enough for today")
        .await;
    b.click("ul.sessions button").await;
    b.wait_text(".flash", "ended").await;
    assert_eq!(dropped(conn).await, "57P01");

    // The grant still stands: connect again, then revoke from the page.
    let (_client, conn) = env.connect("eve", &token).await.expect("connect again");
    b.goto(&format!("/requests/{id}")).await;
    b.fill("#revoke-reason", "customer withdrew consent").await;
    b.click("form[action$=revoke] button").await;
    b.wait_text(".flash", "Revoked").await;
    assert_eq!(dropped(conn).await, "57P01");
    b.quit().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auditors_admins_and_engineers_each_get_what_is_theirs() {
    let _one = ONE_BROWSER.lock().await;
    let env = Env::start("web_roles").await;
    let (_granted, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("connect");
    client
        .simple_query("SELECT name FROM items WHERE id = 3 -- for the auditor")
        .await
        .expect("query");
    let pending = file(&env, "eve", "SUP-9").await;
    let base = env.deployment.server_url();
    let b = Browser::start(&base).await;

    // The auditor filters the trail and downloads what the filter selects.
    b.sign_in(key(&env, "dave")).await;
    b.goto("/audit").await;
    b.fill("#engineer", "eve").await;
    b.fill("#kind", "select").await;
    b.click("form.filters button").await;
    b.wait_text("table", "for the auditor").await;
    let csv_link = b
        .find("p.downloads a")
        .await
        .attr("href")
        .await
        .expect("href")
        .expect("a download link");
    assert!(csv_link.contains("engineer=eve"), "{csv_link}");
    let csv = http::get(&base, &b.session_cookie().await, &csv_link).await;
    assert_eq!(csv.status(), 200);
    assert!(csv
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("attachment")));
    let csv = csv.text().await.expect("csv");
    assert!(csv.starts_with("seq,time,type,event"), "{csv}");
    assert!(csv.contains("for the auditor"), "{csv}");
    assert!(
        csv.lines().skip(1).all(|l| l.contains(",eve,")),
        "only eve's records: {csv}"
    );
    b.sign_out().await;

    // The admin changes the policy; the change is on the trail.
    b.sign_in(key(&env, "alice")).await;
    b.goto("/policy").await;
    b.click("#protect-none").await;
    b.click("form[action='/policy'] button").await;
    b.wait_text(".flash", "Policy saved").await;
    env.wait_for_audit("the admin's policy change", |records| {
        records.iter().any(|r| {
            r["event"] == "policy_changed"
                && r["actor"] == "alice"
                && r["detail"]["protect"] == "none"
        })
    })
    .await;
    b.sign_out().await;

    // The engineer sees no approve button on their own request; a forged POST is refused.
    b.sign_in(key(&env, "eve")).await;
    b.goto(&format!("/requests/{pending}")).await;
    b.wait_text("h1", "SUP-9").await;
    let approve = b
        .client
        .find_all(fantoccini::Locator::Css("button[value=approve]"))
        .await
        .expect("find");
    assert!(approve.is_empty(), "no approve button for the requester");
    // Forged in the page itself, with the session's own CSRF token.
    b.client
        .execute(
            "const f = document.createElement('form'); f.method = 'post';
             f.action = arguments[0];
             for (const [k, v] of [['csrf', document.querySelector('input[name=csrf]').value],
                                   ['reason', 'I approve myself']]) {
               const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v;
               f.appendChild(i);
             }
             document.body.appendChild(f); f.submit();",
            vec![serde_json::json!(format!("/requests/{pending}/approve"))],
        )
        .await
        .expect("forge");
    b.wait_text("h1", "Forbidden").await;
    let cookie = b.session_cookie().await;
    let page = http::get(&base, &cookie, &format!("/requests/{pending}"))
        .await
        .text()
        .await
        .expect("page");
    let csrf = http::hidden_field(&page, "csrf").expect("csrf");
    let path = format!("/requests/{pending}/approve");
    let forged = http::post(
        &base,
        &cookie,
        &path,
        &[("csrf", &csrf), ("reason", "mine")],
    )
    .await;
    assert_eq!(forged.status(), 403);
    // Carol's own POST without the token is refused too, whoever sends it.
    let carol = http::sign_in(&base, key(&env, "carol")).await;
    let tokenless = http::post(&base, &carol, &path, &[("reason", "fine")]).await;
    assert_eq!(tokenless.status(), 403);
    let wrong = http::post(&base, &carol, &path, &[("csrf", &csrf), ("reason", "fine")]).await;
    assert_eq!(wrong.status(), 403, "another session's token");
    assert_eq!(
        env.client("dave")
            .show_request(&pending)
            .await
            .expect("show")
            .status
            .as_str(),
        "pending_customer",
        "nothing was decided"
    );
    b.quit().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_sign_in_goes_back_to_login() {
    let _one = ONE_BROWSER.lock().await;
    let mut env = Env::prepare("web_expiry", Options::default());
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    // Short enough to wait out, long enough for a loaded machine to finish signing in.
    let text = text.replacen("[api]\n", "[api]\nweb_session_ttl = \"3s\"\n", 1);
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    let b = Browser::start(&env.deployment.server_url()).await;
    b.sign_in(key(&env, "carol")).await;
    let signed_in = tokio::time::Instant::now();
    let cookie = b.session_cookie().await;
    tokio::time::sleep_until(signed_in + Duration::from_millis(3100)).await;
    // The server forgets the session, whatever the browser keeps.
    let stale = http::get(&env.deployment.server_url(), &cookie, "/requests").await;
    assert_eq!(stale.status(), 303);
    assert_eq!(
        stale
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some("/login")
    );
    b.goto("/requests").await;
    b.wait_text("h1", "Sign in").await;
    assert_eq!(b.path().await, "/login");
    b.quit().await;
}
