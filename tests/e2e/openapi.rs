//! The checked-in OpenAPI document is served, and it matches the API: every route the
//! server registers and every path the CLI's client calls is documented, and every
//! documented operation exists.

use std::collections::BTreeSet;

use crate::harness::Env;

const SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// `(METHOD, path)` pairs registered with `.route("…", get(…).post(…))` in `src/api/`.
fn registered_routes() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(format!("{SOURCES}/api")).expect("src/api") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).unwrap_or_default();
        for chunk in text.split(".route(\"").skip(1) {
            let (path, rest) = chunk.split_once('"').expect("a quoted path");
            let call = &rest[..rest.find("))\n").map_or(rest.len(), |i| i + 1)];
            for method in ["get", "post", "put", "delete", "patch"] {
                if call.contains(&format!("{method}(")) {
                    out.insert((method.to_uppercase(), path.to_owned()));
                }
            }
        }
    }
    out
}

/// Every `/v1/…` path the client library builds.
fn client_paths() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut files = vec![format!("{SOURCES}/client.rs")];
    if let Ok(dir) = std::fs::read_dir(format!("{SOURCES}/client")) {
        files.extend(dir.flatten().map(|e| e.path().display().to_string()));
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for chunk in text.split("\"/v1/").skip(1) {
            let path = chunk.split('"').next().unwrap_or_default();
            // `{}` placeholders of format! stand for one path segment.
            out.insert(format!("/v1/{}", path.replace("{}", "{x}")));
        }
    }
    out
}

fn documented(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

fn segments_match(template: &str, path: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| x == y || x.starts_with('{') || y.starts_with('{'))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_served_and_matches_routes_and_client() {
    let env = Env::start("openapi").await;
    let served: serde_json::Value =
        reqwest::get(format!("{}/v1/openapi.json", env.deployment.server_url()))
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
    let file: serde_json::Value =
        serde_json::from_str(lockbox::api::OPENAPI).expect("the file is JSON");
    assert_eq!(served, file);
    assert_eq!(file["openapi"], "3.1.0");

    let documented = documented(&file);
    let registered = registered_routes();
    assert!(registered.len() > 20, "{registered:?}");
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    let unregistered: Vec<_> = documented.difference(&registered).collect();
    assert!(
        unregistered.is_empty(),
        "documented but not served: {unregistered:?}"
    );

    for path in client_paths() {
        assert!(
            documented.iter().any(|(_, d)| segments_match(d, &path)),
            "the client calls {path}, which openapi.json does not document"
        );
    }

    // Each documented operation exists: without a key it is refused, never unknown.
    let http = reqwest::Client::new();
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "req-0").replace("{name}", "nightly");
        let url = format!("{}{concrete}", env.deployment.server_url());
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let status = http
            .request(method.clone(), &url)
            .send()
            .await
            .expect("send")
            .status();
        let open = path == "/v1/health" || path == "/v1/openapi.json";
        let expected = if open { 200 } else { 401 };
        assert_eq!(status.as_u16(), expected, "{method} {path}");
        let operation = &file["paths"][path][method.as_str().to_lowercase()];
        if !open {
            assert!(
                operation["responses"]["401"].is_object(),
                "{method} {path} documents 401"
            );
        }
    }
}
