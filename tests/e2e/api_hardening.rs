//! What the API and its clients hold back: health details only for those who may read the
//! audit trail, redirects reported rather than followed, and idle plain-HTTP connections
//! closed like HTTPS ones.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockbox::client::{ApiClient, ClientError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{Env, Options};

/// `/v1/health` as `user` sees it (`None`: without an API key).
async fn health_as(env: &Env, user: Option<&str>) -> serde_json::Value {
    let mut request =
        reqwest::Client::new().get(format!("{}/v1/health", env.deployment.server_url()));
    if let Some(user) = user {
        request = request.bearer_auth(&env.deployment.api_keys[user]);
    }
    request
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn health_details_need_a_key_that_may_read_the_audit_trail() {
    let env = Env::start("harden_health").await;
    for user in [None, Some("eve")] {
        let body = health_as(&env, user).await;
        assert_eq!(body["status"], "ok", "{user:?}: {body}");
        assert_eq!(body["audit"], "ok", "{user:?}: {body}");
        assert!(body.get("live_sessions").is_none(), "{user:?}: {body}");
        assert!(body.get("databases").is_none(), "{user:?}: {body}");
    }
    for user in ["dave", "alice"] {
        let body = health_as(&env, Some(user)).await;
        assert_eq!(body["live_sessions"], 0, "{user}: {body}");
        let databases = body["databases"].as_array().expect("databases");
        assert!(
            databases
                .iter()
                .any(|d| d["name"] == env.db.as_str() && d["status"] == "ok"),
            "{user}: {body}"
        );
    }
}

/// A plain-HTTP server on loopback answering every request with a 307 to `location`.
async fn redirector(location: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            );
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// A plain-HTTP listener counting the connections it gets.
async fn counter() -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_reports_a_redirect_instead_of_following_it() {
    let (target, followed) = counter().await;
    let location = format!("http://{target}/v1/whoami");
    let server = redirector(location.clone()).await;
    let err = ApiClient::new(&format!("http://{server}"), "lbk_some_key")
        .whoami()
        .await
        .expect_err("a redirect is no answer");
    match &err {
        ClientError::Redirected {
            status,
            location: to,
            ..
        } => {
            assert_eq!((*status, to.as_str()), (307, location.as_str()));
        }
        other => panic!("not reported as a redirect: {other}"),
    }
    assert!(err.to_string().contains("LOCKBOX_SERVER"), "{err}");
    assert_eq!(*followed.lock().unwrap(), 0, "the redirect was followed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_redirect_is_the_delivery_failure_without_its_secrets() {
    let (target, followed) = counter().await;
    let hook = redirector(format!("http://{target}/internal/LOCATIONSECRET")).await;
    let settings = format!(
        "\n[notifications]\nretry_base = \"200ms\"\nmax_attempts = 1\n\
         [[notifications.webhooks]]\nurl = \"http://{hook}/hook/URLSECRET\"\n"
    );
    let env = Env::with(
        "harden_hook_redirect",
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    let _id = env.pending_request("eve", "1h").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        let list = env
            .client("dave")
            .notifications(None, None)
            .await
            .expect("an auditor lists deliveries");
        if let Some(error) = list.iter().find_map(|d| d.last_error.clone()) {
            break error;
        }
        assert!(Instant::now() < deadline, "no failed delivery: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains("307"), "{error}");
    assert!(error.contains(&format!("http://{target}")), "{error}");
    assert!(!error.contains("SECRET"), "a URL's path is shown: {error}");
    assert_eq!(*followed.lock().unwrap(), 0, "the redirect was followed");
}

/// The loopback plain-HTTP API closes a connection that never sends a request, as the
/// HTTPS one does (`attack_tls::a_connection_that_never_finishes_its_request_is_closed`).
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_plain_http_connection_is_closed() {
    let env = Env::start("harden_plain_idle").await;
    let addr = SocketAddr::from(([127, 0, 0, 1], env.deployment.api_port));
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(45), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection is still open: {read:?}"
    );
}

/// A request whose body trickles in (here: one byte of a announced thousand, then
/// nothing) is cut off rather than holding its connection for as long as the client likes.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_body_that_stops_coming_is_cut_off() {
    let env = Env::start("harden_slow_body").await;
    let addr = SocketAddr::from(([127, 0, 0, 1], env.deployment.api_port));
    let key = &env.deployment.api_keys["eve"];
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(
        format!(
            "POST /v1/requests HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
             content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .expect("head and one byte");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(45), slow.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the connection is still held open for the rest of the body ({} bytes answered)",
        answer.len()
    );
}

/// Input axum refuses before a handler runs gets the API's JSON error too, with a stable
/// `code` (an attack review got plain text for each of these, and a 422 the README did not
/// list); the scheme of `Authorization` is case-insensitive; a token's answer is not cached.
#[tokio::test(flavor = "multi_thread")]
async fn every_error_is_the_apis_json_and_tokens_are_not_cached() {
    let env = Env::start("harden_errors").await;
    let base = env.deployment.server_url();
    let eve = env.deployment.api_keys["eve"].clone();
    let http = reqwest::Client::new();
    let requests = format!("{base}/v1/requests");
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "bad JSON",
            http.post(&requests)
                .bearer_auth(&eve)
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "invalid",
        ),
        (
            "no content type",
            http.post(&requests).bearer_auth(&eve).body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            "an unknown access level",
            http.post(&requests)
                .bearer_auth(&eve)
                .json(&serde_json::json!({
                    "database": env.db, "ticket": "T-1", "reason": "x", "access": "root"
                })),
            400,
            "invalid",
        ),
        (
            "a query that does not parse",
            http.get(format!("{base}/v1/requests?break_glass=maybe"))
                .bearer_auth(&eve),
            400,
            "invalid",
        ),
        (
            "an unknown route",
            http.get(format!("{base}/v1/nothing-here"))
                .bearer_auth(&eve),
            404,
            "not_found",
        ),
        (
            "a method the route has not",
            http.delete(&requests).bearer_auth(&eve),
            405,
            "method_not_allowed",
        ),
    ];
    for (what, request, status, code) in cases {
        let response = request.send().await.expect(what);
        assert_eq!(response.status().as_u16(), status, "{what}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {content_type}"
        );
        let body: serde_json::Value = response.json().await.expect(what);
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }

    let whoami = http
        .get(format!("{base}/v1/whoami"))
        .header("authorization", format!("bearer {eve}"))
        .send()
        .await
        .expect("whoami");
    assert_eq!(whoami.status(), 200, "a lower-case scheme");

    let (id, _) = env.approved_token("eve", "1h").await;
    let token = http
        .post(format!("{base}/v1/requests/{id}/token"))
        .bearer_auth(&eve)
        .send()
        .await
        .expect("token");
    assert_eq!(token.status(), 200);
    assert_eq!(
        token
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}
