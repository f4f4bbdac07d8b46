//! Attacks on the admin center from outside: a plain HTTP client with a cookie, doing what
//! a hostile page, a stolen cookie or a careless user would.

use std::time::Duration;

use crate::harness::Env;

/// A browser without JavaScript: follows no redirect, keeps the session cookie by hand.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: Option<String>,
}

/// The value of cookie `name` set by `response`.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The CSRF token a page's forms carry.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a csrf field")
        + 19;
    html[at..].split('"').next().expect("token").to_owned()
}

impl Browser {
    fn new(env: &Env) -> Browser {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(120));
        if let Some(ca) = &env.deployment.ca_path {
            let pem = std::fs::read(ca).expect("CA");
            builder =
                builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"));
        }
        Browser {
            http: builder.build().expect("client"),
            base: env.deployment.server_url(),
            session: None,
        }
    }

    /// Signs in with `user`'s API key.
    async fn sign_in(env: &Env, user: &str) -> Browser {
        let mut browser = Browser::new(env);
        let form = browser
            .http
            .get(format!("{}/login", browser.base))
            .send()
            .await
            .expect("login form");
        let nonce = set_cookie(&form, "lockbox_login").expect("login cookie");
        let key = env.deployment.api_keys[user].clone();
        let response = browser
            .http
            .post(format!("{}/login", browser.base))
            .header("cookie", format!("lockbox_login={nonce}"))
            .form(&[("nonce", nonce.as_str()), ("api_key", key.as_str())])
            .send()
            .await
            .expect("sign in");
        assert_eq!(response.status(), 303, "{user} signs in");
        browser.session = Some(set_cookie(&response, "lockbox_session").expect("session"));
        browser
    }

    fn with_cookie(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.session {
            Some(id) => request.header("cookie", format!("lockbox_session={id}")),
            None => request,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.with_cookie(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .expect("GET")
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.with_cookie(self.http.post(format!("{}{path}", self.base)))
            .form(form)
            .send()
            .await
            .expect("POST")
    }

    /// The CSRF token of this sign-in, as its pages carry it.
    async fn csrf(&self) -> String {
        let page = self.get("/requests").await;
        assert_eq!(page.status(), 200);
        csrf_of(&page.text().await.expect("page"))
    }
}

/// Reads `response` to its end; `false` if it is still going after `limit`.
async fn ends_within(mut response: reqwest::Response, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        while let Ok(Some(_)) = response.chunk().await {}
    })
    .await
    .is_ok()
}

/// A live statement stream is authorised when it opens; signing out must end it, or a
/// browser (or whoever holds its cookie) keeps reading every statement of the request
/// for as long as the connection lasts.
#[tokio::test]
async fn the_live_stream_ends_with_the_sign_in() {
    let env = Env::start("attack_web_stream").await;
    let id = env.pending_request("eve", "1h").await;
    let carol = Browser::sign_in(&env, "carol").await;
    let csrf = carol.csrf().await;
    let stream = carol.get(&format!("/requests/{id}/stream")).await;
    assert_eq!(stream.status(), 200);
    let out = carol.post("/logout", &[("csrf", csrf.as_str())]).await;
    assert_eq!(out.status(), 303);
    assert!(
        ends_within(stream, Duration::from_secs(60)).await,
        "the stream outlived the sign-in that opened it"
    );
}

/// A request id from the path goes back into the `Location` of the answer: a control
/// character in it must be a 404 (as the API answers an unknown id), not a 500.
#[tokio::test]
async fn a_control_character_in_a_request_id_is_not_found() {
    let env = Env::start("attack_web_ctl_id").await;
    let carol = Browser::sign_in(&env, "carol").await;
    let csrf = carol.csrf().await;
    for action in ["approve", "deny", "revoke"] {
        let response = carol
            .post(
                &format!("/requests/req-x%0Ay/{action}"),
                &[("csrf", &csrf), ("reason", "why"), ("duration", "soon")],
            )
            .await;
        assert_eq!(response.status(), 404, "{action}");
    }
    let page = carol.get("/requests/req-x%0Ay").await;
    assert_eq!(page.status(), 404);
}

/// Login CSRF by cookie tossing: a page on a sibling host (`evil.example.com` next to
/// `lockbox.example.com`, same site, so SameSite does not help) can set its own
/// `lockbox_login` cookie for the parent domain and post the login form with the same
/// nonce and the attacker's key, signing the victim's browser in as the attacker. The
/// double-submit nonce is not tied to anything the server issued; a POST whose `Origin`
/// is another origin must be refused.
#[tokio::test]
async fn a_post_from_another_origin_is_refused() {
    let env = Env::start("attack_web_origin").await;
    let browser = Browser::new(&env);
    let key = env.deployment.api_keys["eve"].clone();
    let tossed = "0123456789abcdef";
    let response = browser
        .http
        .post(format!("{}/login", browser.base))
        .header("cookie", format!("lockbox_login={tossed}"))
        .header("origin", "https://evil.example.com")
        .form(&[("nonce", tossed), ("api_key", key.as_str())])
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 403, "a cross-origin sign-in");
    assert!(set_cookie(&response, "lockbox_session").is_none());

    // The same holds for every other form, token or not.
    let carol = Browser::sign_in(&env, "carol").await;
    let csrf = carol.csrf().await;
    let response = carol
        .with_cookie(carol.http.post(format!("{}/logout", carol.base)))
        .header("origin", "null")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(response.status(), 403, "an opaque origin");
    // A browser that says the form came from a sibling host of the same site.
    let response = carol
        .with_cookie(carol.http.post(format!("{}/logout", carol.base)))
        .header("sec-fetch-site", "same-site")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(response.status(), 403, "a same-site, cross-origin form");
    // Its own origin (what a browser sends with the page's own forms) still works.
    let response = carol
        .with_cookie(carol.http.post(format!("{}/logout", carol.base)))
        .header("origin", carol.base.clone())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(response.status(), 303, "a same-origin sign-out");
    // Behind a reverse proxy that rewrites `Host`, the browser's own word decides.
    let dave = Browser::sign_in(&env, "dave").await;
    let csrf = dave.csrf().await;
    let response = dave
        .with_cookie(dave.http.post(format!("{}/logout", dave.base)))
        .header("origin", "https://lockbox.example.com")
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(response.status(), 303, "a same-origin form behind a proxy");
}

/// Every answer of the admin center (pages, redirects, errors, the framework's own
/// rejections, assets) carries the browser protections, and the policy also pins where
/// forms may post and what `<base>` may say: `default-src` covers neither, so injected
/// markup could otherwise send a form (with its CSRF token) elsewhere.
#[tokio::test]
async fn every_answer_carries_the_protections() {
    let env = Env::start("attack_web_headers").await;
    let anonymous = Browser::new(&env);
    let carol = Browser::sign_in(&env, "carol").await;
    let csrf = carol.csrf().await;
    let mut answers = vec![
        ("login", anonymous.get("/login").await),
        ("to login", anonymous.get("/requests").await),
        ("asset", anonymous.get("/assets/app.css").await),
        ("page", carol.get("/requests").await),
        (
            "bad filter",
            carol.get("/requests?status=%3Cscript%3E").await,
        ),
        ("bad page", carol.get("/requests?page=-1").await),
        (
            "huge page",
            carol.get("/requests?page=18446744073709551616").await,
        ),
        (
            "last page",
            carol.get("/requests?page=18446744073709551615").await,
        ),
        (
            "last trail page",
            carol.get("/audit?page=18446744073709551615").await,
        ),
        (
            "bad utf-8",
            carol.get("/audit?engineer=%FF%FE&page=%FF").await,
        ),
        (
            "stream resume",
            carol.get("/requests/req-x%0A/stream?after_seq=-1").await,
        ),
        ("forbidden", carol.get("/exports").await),
        (
            "not found",
            carol.get("/requests/req-0000000000000000").await,
        ),
        ("method", carol.get("/logout").await),
        ("no token", carol.post("/logout", &[]).await),
    ];
    let not_a_form = carol
        .with_cookie(
            carol
                .http
                .post(format!("{}/requests/x/approve", carol.base)),
        )
        .header("content-type", "application/json")
        .body(format!("{{\"csrf\":\"{csrf}\"}}"))
        .send()
        .await
        .expect("json");
    answers.push(("not a form", not_a_form));
    for (what, response) in &answers {
        let headers = response.headers();
        let csp = headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what} ({}): no CSP", response.status()));
        for part in [
            "default-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(part), "{what}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{what}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
        if *what != "asset" {
            assert_eq!(headers["cache-control"], "no-store", "{what}");
        }
        assert!(
            response.status().as_u16() < 500,
            "{what}: {}",
            response.status()
        );
    }
}

/// The status the API answers `user` for `method path` (with a JSON body for a POST).
async fn api_status(env: &Env, user: &str, method: &str, path: &str) -> u16 {
    let browser = Browser::new(env);
    let key = &env.deployment.api_keys[user];
    let url = format!("{}{path}", browser.base);
    let request = match method {
        "GET" => browser.http.get(url),
        _ => browser
            .http
            .post(url)
            .json(&serde_json::json!({"reason": "why", "justification": "why"})),
    };
    request
        .bearer_auth(key)
        .send()
        .await
        .expect("API call")
        .status()
        .as_u16()
}

/// Each page and form refuses whom the API refuses, with the API's status: another
/// engineer's request, one's own approval, roles without the right, pages for auditors
/// and admins only.
#[tokio::test]
async fn pages_and_forms_refuse_as_the_api_does() {
    let env = Env::start("attack_web_authz").await;
    let id = env.pending_request("eve", "1h").await;
    for (user, web, api) in [
        (
            "bob",
            format!("/requests/{id}"),
            format!("/v1/requests/{id}"),
        ),
        (
            "eve",
            format!("/requests/{id}"),
            format!("/v1/requests/{id}"),
        ),
        (
            "dave",
            format!("/requests/{id}"),
            format!("/v1/requests/{id}"),
        ),
        ("eve", "/audit".into(), "/v1/audit".into()),
        ("lena", "/audit".into(), "/v1/audit".into()),
        (
            "eve",
            format!("/requests/{id}/stream"),
            format!("/v1/requests/{id}/audit/stream"),
        ),
        ("eve", "/exports".into(), "/v1/exports".into()),
        ("carol", "/exports".into(), "/v1/exports".into()),
    ] {
        let browser = Browser::sign_in(&env, user).await;
        let got = browser.get(&web).await.status().as_u16();
        let want = api_status(&env, user, "GET", &api).await;
        assert_eq!(got, want, "{user} GET {web} (API {api})");
    }
    let eve_audit = Browser::sign_in(&env, "eve").await;
    assert_eq!(
        eve_audit.get("/audit/download?format=csv").await.status(),
        403
    );
    for (user, action) in [
        ("eve", "approve"),
        ("bob", "approve"),
        ("dave", "approve"),
        ("lena", "deny"),
        ("bob", "revoke"),
        ("bob", "cancel"),
        ("carol", "cancel"),
        ("carol", "extend"),
        ("eve", "acknowledge"),
    ] {
        let browser = Browser::sign_in(&env, user).await;
        let csrf = browser.csrf().await;
        let got = browser
            .post(
                &format!("/requests/{id}/{action}"),
                &[
                    ("csrf", csrf.as_str()),
                    ("reason", "why"),
                    ("duration", "30m"),
                ],
            )
            .await
            .status()
            .as_u16();
        let want = api_status(&env, user, "POST", &format!("/v1/requests/{id}/{action}")).await;
        // The API may refuse a body it cannot read (400/422) before it authorises; the
        // page must refuse all the same, never act.
        if got == 303 {
            panic!("{user} {action}: the page acted where the API answers {want}");
        }
        if (want == 403 || want == 404) && got != want {
            panic!("{user} {action}: page {got}, API {want}");
        }
    }
    let eve = Browser::sign_in(&env, "eve").await;
    let csrf = eve.csrf().await;
    for (path, form) in [
        (
            "/policy",
            vec![("csrf", csrf.as_str()), ("protect", "none")],
        ),
        (
            "/exports",
            vec![
                ("csrf", csrf.as_str()),
                ("name", "x"),
                ("format", "jsonl"),
                ("to", "/tmp/x"),
                ("every", "1d"),
            ],
        ),
        ("/exports/x/run", vec![("csrf", csrf.as_str())]),
    ] {
        assert_eq!(eve.post(path, &form).await.status(), 403, "eve POST {path}");
    }
    // An engineer may end their own sessions: one that is not theirs (here, none at all)
    // is "not live", back on the page with the answer, as for anyone who cannot see it.
    let not_live = eve
        .post(
            "/sessions/s-0000000000000000/end",
            &[("csrf", csrf.as_str()), ("reason", "r")],
        )
        .await;
    assert_eq!(not_live.status(), 303);
    // Still pending: nothing above changed it.
    let request = env.client("carol").show_request(&id).await.expect("show");
    assert!(request.status.is_pending(), "{:?}", request.status);
}

/// Rotating a user's API key (and reloading) signs out the browsers signed in with the
/// old key, as it ends the old key's API calls; signing in with the new key works.
#[tokio::test]
async fn a_rotated_key_ends_its_sign_ins() {
    let mut env = Env::start("attack_web_rotate").await;
    let carol = Browser::sign_in(&env, "carol").await;
    assert_eq!(carol.get("/requests").await.status(), 200);
    let old = env.deployment.api_keys["carol"].clone();
    let new = lockbox::keys::generate_api_key();
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = text.replace(
        &lockbox::keys::api_key_hash_string(&old),
        &lockbox::keys::api_key_hash_string(&new),
    );
    std::fs::write(&env.config_path, text).expect("config");
    let reload = api_status(&env, "alice", "POST", "/v1/admin/reload").await;
    assert_eq!(reload, 200);
    let page = carol.get("/requests").await;
    assert_eq!(
        page.status(),
        303,
        "the old key's sign-in still opens pages"
    );
    assert_eq!(page.headers()["location"], "/login");
    env.deployment.api_keys.insert("carol".into(), new);
    let again = Browser::sign_in(&env, "carol").await;
    assert_eq!(again.get("/requests").await.status(), 200);
}

/// Under TLS the cookies are `Secure` and every answer tells the browser to come back
/// over HTTPS only (HSTS): without it, a user typing the address without `https://`, or
/// following an `http://` link, asks in the clear first, where an attacker on the path
/// answers in lockbox's place.
#[tokio::test]
async fn under_tls_the_browser_is_kept_on_https() {
    let mut env = Env::prepare("attack_web_hsts", crate::harness::Options::default());
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let listen = format!("listen = \"127.0.0.1:{}\"\n", env.deployment.api_port);
    let text = text.replacen(
        &listen,
        &format!("{listen}tls_cert = \"proxy-cert.pem\"\ntls_key = \"proxy-key.pem\"\n"),
        1,
    );
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    let base = format!("https://127.0.0.1:{}", env.deployment.api_port);
    let form = http
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("login form");
    let cookie = form.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    let nonce = set_cookie(&form, "lockbox_login").expect("nonce");
    let key = env.deployment.api_keys["carol"].clone();
    let signed = http
        .post(format!("{base}/login"))
        .header("cookie", format!("lockbox_login={nonce}"))
        .form(&[("nonce", nonce.as_str()), ("api_key", key.as_str())])
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed.status(), 303);
    let cookie = signed.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Under TLS the session cookie is a `__Host-` one, which no sibling subdomain can
    // plant; the form's nonce is spent.
    let session = set_cookie(&signed, "__Host-lockbox_session").expect("a __Host- session");
    assert!(set_cookie(&signed, "lockbox_session").is_none());
    assert_eq!(set_cookie(&signed, "lockbox_login").as_deref(), Some(""));
    let page = |cookie: String| {
        http.get(format!("{base}/requests"))
            .header("cookie", cookie)
            .send()
    };
    let shown = page(format!("__Host-lockbox_session={session}"))
        .await
        .expect("page");
    assert_eq!(shown.status(), 200);
    // The same id under the name a sibling could set is no sign-in.
    let planted = page(format!("lockbox_session={session}"))
        .await
        .expect("page");
    assert_eq!(planted.status(), 303, "sent to sign in");
    for response in [&form, &signed] {
        let hsts = response
            .headers()
            .get("strict-transport-security")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(hsts.starts_with("max-age="), "no HSTS: {hsts:?}");
    }
    // Over plain HTTP (the default deployment) there is no such header to send.
    let plain = Env::start("attack_web_no_hsts").await;
    let page = Browser::new(&plain).get("/login").await;
    assert!(page.headers().get("strict-transport-security").is_none());
}

/// A reload that takes MFA away from a user (their key is no longer trusted as MFA)
/// applies to their signed-in browsers as to their key: an extension filed from the page
/// is judged with the MFA the configuration gives now, not with the one at sign-in.
#[tokio::test]
async fn a_reload_that_takes_mfa_away_applies_to_signed_in_browsers() {
    let env = Env::start("attack_web_mfa").await;
    let (id, _token) = env.approved_token("eve", "1h").await;
    let eve = Browser::sign_in(&env, "eve").await;
    let csrf = eve.csrf().await;
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let before = "name = \"eve\"\nroles = [\"engineer\"]\nmfa = true";
    assert!(text.contains(before), "eve's entry");
    let text = text.replace(
        before,
        "name = \"eve\"\nroles = [\"engineer\"]\nmfa = false",
    );
    std::fs::write(&env.config_path, text).expect("config");
    assert_eq!(
        api_status(&env, "alice", "POST", "/v1/admin/reload").await,
        200
    );
    let api = env
        .client("eve")
        .extend(&id, "30m", "more time")
        .await
        .expect_err("the API refuses eve's key without MFA");
    assert!(api.to_string().contains("require-mfa"), "{api}");
    let page = eve
        .post(
            &format!("/requests/{id}/extend"),
            &[
                ("csrf", csrf.as_str()),
                ("duration", "30m"),
                ("reason", "more time"),
            ],
        )
        .await;
    let status = page.status();
    let location = page
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = page.text().await.unwrap_or_default();
    assert!(
        status != 303 || location == format!("/requests/{id}"),
        "the page filed an extension the API refuses: {status} {location}"
    );
    assert!(
        status == 303 || body.contains("require-mfa"),
        "{status}: {body}"
    );
}

/// What a requester types (reason, ticket) and what an engineer runs (statement text) is
/// shown as text on every page that shows it: in the table, on the request page, in the
/// trail, and in the flash an action leaves.
#[tokio::test]
async fn what_users_type_stays_text() {
    let env = Env::start("attack_web_xss").await;
    let evil = "\"><script>alert(1)</script><img src=x onerror=alert(2)>";
    let mut new = lockbox::policy::NewRequest {
        database: env.db.clone(),
        ticket: format!("T-1{evil}"),
        reason: evil.into(),
        access: lockbox::policy::AccessLevel::Read,
        duration: Some("1h".into()),
        ..lockbox::policy::NewRequest::default()
    };
    let id = match env.client("eve").create_request(&new).await {
        Ok(r) => r.id.to_string(),
        // A ticket format the service refuses: the reason alone carries the attack.
        Err(_) => {
            new.ticket = "T-1".into();
            env.file("eve", &new).await
        }
    };
    let carol = Browser::sign_in(&env, "carol").await;
    let csrf = carol.csrf().await;
    // A bad window echoes what was typed in the flash.
    let flashed = carol
        .post(
            &format!("/requests/{id}/approve"),
            &[
                ("csrf", csrf.as_str()),
                ("reason", "ok"),
                ("duration", evil),
            ],
        )
        .await;
    assert_eq!(flashed.status(), 303);
    for path in [
        "/requests".to_owned(),
        format!("/requests/{id}"),
        format!("/audit?request={id}"),
        format!("/audit?engineer={}", urlencode(evil)),
        format!("/requests?status={}", urlencode(evil)),
    ] {
        let page = carol.get(&path).await;
        let body = page.text().await.expect("page");
        for raw in ["<script>alert", "<img src=x"] {
            assert!(!body.contains(raw), "{path} shows markup: {body}");
        }
    }
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)]).expect("encode")[2..].to_owned()
}

/// A reload that takes away the role the stream was opened with ends the stream too, as
/// it refuses the role's next page.
#[tokio::test]
async fn the_live_stream_ends_with_the_role() {
    let env = Env::start("attack_web_stream_role").await;
    let id = env.pending_request("eve", "1h").await;
    let dave = Browser::sign_in(&env, "dave").await;
    let stream = dave.get(&format!("/requests/{id}/stream")).await;
    assert_eq!(stream.status(), 200);
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let before = "name = \"dave\"\nroles = [\"auditor\"]";
    assert!(text.contains(before), "dave's entry");
    let text = text.replace(before, "name = \"dave\"\nroles = [\"engineer\"]");
    std::fs::write(&env.config_path, text).expect("config");
    assert_eq!(
        api_status(&env, "alice", "POST", "/v1/admin/reload").await,
        200
    );
    assert_eq!(dave.get("/audit").await.status(), 403);
    assert!(
        ends_within(stream, Duration::from_secs(60)).await,
        "the stream outlived the role that opened it"
    );
}

/// A reload that removes `[oidc]` (the identity provider is no longer trusted) ends the
/// sign-ins made with its identity tokens, as the API refuses those tokens from then on.
#[tokio::test]
async fn removing_oidc_ends_identity_token_sign_ins() {
    let (env, idp, _dir) = crate::oidc::with_provider("attack_web_oidc").await;
    let token = idp.token("carol", &["pwd", "otp"], crate::oidc::ISSUER, 600);
    let mut carol = Browser::new(&env);
    let form = carol.get("/login").await;
    let nonce = set_cookie(&form, "lockbox_login").expect("nonce");
    let signed = carol
        .http
        .post(format!("{}/login", carol.base))
        .header("cookie", format!("lockbox_login={nonce}"))
        .form(&[("nonce", nonce.as_str()), ("id_token", token.as_str())])
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed.status(), 303, "an identity token signs in");
    carol.session = set_cookie(&signed, "lockbox_session");
    assert_eq!(carol.get("/requests").await.status(), 200);
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let at = text.find("\n[oidc]").expect("the [oidc] section");
    let rest = &text[at + 1..];
    let end = rest[1..].find("\n[").map_or(rest.len(), |i| i + 1);
    let text = format!("{}{}", &text[..at + 1], &rest[end..]);
    std::fs::write(&env.config_path, text).expect("config");
    assert_eq!(
        api_status(&env, "alice", "POST", "/v1/admin/reload").await,
        200
    );
    let api = Browser::new(&env)
        .http
        .get(format!("{}/v1/whoami", carol.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("whoami");
    assert_eq!(api.status(), 401, "the API no longer takes the token");
    let page = carol.get("/requests").await;
    assert_eq!(page.status(), 303, "the token's sign-in still opens pages");
}

/// Each live stream holds a task and an open trail file for as long as its client keeps
/// the connection (a client that never reads keeps it forever): one sign-in may hold only
/// a few at once; past them the answer is 429, and a closed stream makes room again.
#[tokio::test]
async fn one_sign_in_holds_a_bounded_number_of_streams() {
    let env = Env::start("attack_web_streams").await;
    let id = env.pending_request("eve", "1h").await;
    let carol = Browser::sign_in(&env, "carol").await;
    let path = format!("/requests/{id}/stream");
    let mut open = Vec::new();
    for _ in 0..64 {
        let response = carol.get(&path).await;
        if response.status() != 200 {
            assert_eq!(response.status(), 429);
            break;
        }
        open.push(response);
    }
    assert!(open.len() < 64, "64 streams held open by one sign-in");
    let held = open.len();
    drop(open.pop());
    // The server notices the closed connection when it next writes to it: ask until the
    // place is free again.
    let reopened = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let response = carol.get(&path).await;
            if response.status() == 200 {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a closed stream makes room");
    open.push(reopened);
    assert_eq!(open.len(), held);
}
