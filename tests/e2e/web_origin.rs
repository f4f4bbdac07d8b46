//! The admin center over plain HTTP, as each persona: every page answers, carries the
//! security headers, and references nothing outside its own origin (no CDN, no external
//! font or script); the API's health is unchanged beside it.

use crate::harness::Env;
use crate::web::http;

/// Every `src=`, `href=`, `action=` and `url(` target in `text`.
fn references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for marker in ["src=\"", "href=\"", "action=\"", "url("] {
        for chunk in text.split(marker).skip(1) {
            let end = chunk.find(['"', ')']).unwrap_or(chunk.len());
            out.push(chunk[..end].trim_matches(['\'', '"']).to_owned());
        }
    }
    out
}

/// Whether `target` stays on the page's own origin: a path, a query or a fragment.
fn same_origin(target: &str) -> bool {
    (target.starts_with('/') && !target.starts_with("//"))
        || target.starts_with('?')
        || target.starts_with('#')
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_stays_on_its_origin_for_every_persona() {
    let env = Env::start("web_origin").await;
    let (granted, _token) = env.approved_token("eve", "1h").await;
    let base = env.deployment.server_url();
    let login = http::client()
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("login page");
    assert_eq!(login.status(), 200);
    let mut bodies = vec![("/login".to_owned(), login.text().await.expect("body"))];
    for asset in ["/assets/app.css", "/assets/live.js"] {
        let r = http::client()
            .get(format!("{base}{asset}"))
            .send()
            .await
            .expect("asset");
        assert_eq!(r.status(), 200, "{asset}");
        bodies.push((asset.to_owned(), r.text().await.expect("asset body")));
    }
    let pages = [
        "/requests".to_owned(),
        "/requests?status=pending&page=1".to_owned(),
        format!("/requests/{granted}"),
        "/sessions".to_owned(),
        "/audit".to_owned(),
        "/policy".to_owned(),
        "/exports".to_owned(),
        "/health".to_owned(),
    ];
    for user in ["carol", "eve", "dave", "alice", "lena"] {
        let key = env.deployment.api_keys.get(user).expect("key");
        let cookie = http::sign_in(&base, key).await;
        for path in &pages {
            let response = http::get(&base, &cookie, path).await;
            let status = response.status().as_u16();
            // A page a persona may not use is a 403 page, never a broken one.
            assert!(status == 200 || status == 403, "{user} {path}: {status}");
            let headers = response.headers();
            assert_eq!(
                headers["content-security-policy"],
                "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
                "{path}"
            );
            assert_eq!(headers["x-content-type-options"], "nosniff");
            assert_eq!(headers["referrer-policy"], "same-origin");
            assert_eq!(headers["cache-control"], "no-store");
            bodies.push((
                format!("{user} {path}"),
                response.text().await.expect("body"),
            ));
        }
    }
    let mut seen = 0;
    for (page, body) in &bodies {
        assert!(!body.contains("<script>"), "{page}: no inline script");
        for target in references(body) {
            assert!(same_origin(&target), "{page} references `{target}`");
            seen += 1;
        }
    }
    assert!(seen > 50, "the pages link to each other: {seen}");
    let root = http::client()
        .get(format!("{base}/"))
        .send()
        .await
        .expect("/");
    assert_eq!(root.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_does_not_sign_in_and_pages_need_a_sign_in() {
    let env = Env::start("web_signin").await;
    let base = env.deployment.server_url();
    let unsigned = http::client()
        .get(format!("{base}/requests"))
        .send()
        .await
        .expect("get");
    assert_eq!(unsigned.status(), 303);
    assert_eq!(unsigned.headers()["location"], "/login");
    let refused = http::login(&http::client(), &base, "api_key", "not-a-key").await;
    assert_eq!(refused.status(), 401);
    assert!(http::set_cookie(&refused, "lockbox_session").is_none());
    // A login form posted without its pairing cookie (from another site) is refused.
    let key = env.deployment.api_keys.get("carol").expect("key");
    let form = http::client()
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("login");
    let nonce = http::hidden_field(&form.text().await.expect("body"), "nonce").expect("nonce");
    let cross = http::client()
        .post(format!("{base}/login"))
        .form(&[("nonce", nonce.as_str()), ("api_key", key.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(cross.status(), 403);
    // Signing out ends the session on the server.
    let session = http::sign_in(&base, key).await;
    // The cookie is no credential for the API.
    let api = http::get(&base, &session, "/v1/whoami").await;
    assert_eq!(api.status(), 401);
    let page = http::get(&base, &session, "/requests")
        .await
        .text()
        .await
        .expect("page");
    let csrf = http::hidden_field(&page, "csrf").expect("csrf");
    let out = http::post(&base, &session, "/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status(), 303);
    let after = http::get(&base, &session, "/requests").await;
    assert_eq!(after.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_ends_with_its_api_key() {
    let env = Env::start("web_rotation").await;
    let base = env.deployment.server_url();
    let old = env.deployment.api_keys.get("carol").expect("key");
    let cookie = http::sign_in(&base, old).await;
    assert_eq!(http::get(&base, &cookie, "/requests").await.status(), 200);
    // The admin rotates carol's key and reloads: her browser is signed out with it.
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let rotated = text.replace(
        &lockbox::keys::api_key_hash_string(old),
        &lockbox::keys::api_key_hash_string("a-brand-new-key-for-carol"),
    );
    assert_ne!(text, rotated);
    std::fs::write(&env.config_path, rotated).expect("config");
    env.client("alice").reload().await.expect("reload");
    let after = http::get(&base, &cookie, "/requests").await;
    assert_eq!(after.status(), 303);
    assert_eq!(after.headers()["location"], "/login");
}

/// `lockbox serve`'s access log has a line per page with the route and the signed-in user,
/// and never the session's cookie.
#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_names_the_signed_in_user_never_the_cookie() {
    let env = crate::harness::Env::prepare("web_log", crate::harness::Options::default());
    let log_path = env.deployment.dir.join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&env.config_path)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start lockbox serve");
    let base = env.deployment.server_url();
    for _ in 0..100 {
        if env.client("carol").whoami().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let cookie = http::sign_in(&base, &env.deployment.api_keys["carol"]).await;
    let status = http::get(&base, &cookie, "/requests").await.status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
    let log = std::fs::read_to_string(&log_path).expect("log");
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "api call" && l["route"] == "/requests")
        .unwrap_or_else(|| panic!("no access line: {log}"));
    assert_eq!(line["caller"], "carol");
    let session = cookie.trim_start_matches("lockbox_session=");
    assert!(!log.contains(session), "the session id reached the log");
}
