//! The admin center over plain HTTP (no browser): sign in, read a page's CSRF token, post
//! forms as a browser would (or as a forger would).

/// A client that shows redirects instead of following them.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// The value of `name="{field}" value="…"` in `html`.
pub fn hidden_field(html: &str, field: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{field}\" value=\""))?;
    let rest = &html[at + field.len() + 15..];
    rest.split('"').next().map(str::to_owned)
}

/// The `name=value` part of a `Set-Cookie` for `name`.
pub fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// Posts the login form as a browser does (its pairing cookie and nonce first) with
/// `credential` in `field` (`api_key` or `id_token`); returns the answer.
pub async fn login(
    http: &reqwest::Client,
    base: &str,
    field: &str,
    credential: &str,
) -> reqwest::Response {
    let form = http
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("login page");
    let pairing = set_cookie(&form, "lockbox_login").expect("a login form cookie");
    let nonce = hidden_field(&form.text().await.expect("body"), "nonce").expect("nonce");
    http.post(format!("{base}/login"))
        .header(reqwest::header::COOKIE, pairing)
        .form(&[("nonce", nonce.as_str()), (field, credential)])
        .send()
        .await
        .expect("sign in")
}

/// The session cookie (`name=value`) a successful sign-in set.
pub fn session_cookie(signed: &reqwest::Response) -> String {
    assert_eq!(signed.status(), 303, "signing in redirects");
    set_cookie(signed, "lockbox_session").expect("a session cookie")
}

/// Signs in with `key`; returns the `Cookie` header value of the session.
pub async fn sign_in(base: &str, key: &str) -> String {
    session_cookie(&login(&client(), base, "api_key", key).await)
}

/// GET `path` with the session cookie.
pub async fn get(base: &str, cookie: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("{base}{path}"))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// POST the form `fields` to `path` with the session cookie.
pub async fn post(
    base: &str,
    cookie: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    client()
        .post(format!("{base}{path}"))
        .header(reqwest::header::COOKIE, cookie)
        .form(fields)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}
