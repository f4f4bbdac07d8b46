//! Attacks on the admin center with the fleet's trail and sign-ins in the state store:
//! findings of a review, each a test that failed before its fix.

use crate::attack_review::{sink_env, wait_shipped};
use crate::harness::{cluster, query, Env, Options, Raw};

/// Signs `user` in to the admin center; returns the session cookie (`name=value`).
pub(crate) async fn web_sign_in(env: &Env, user: &str) -> String {
    let base = env.deployment.server_url();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let form = http
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("login page");
    let login_cookie = form
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("login cookie")
        .to_owned();
    let page = form.text().await.expect("login page");
    let nonce = page
        .split("name=\"nonce\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("nonce");
    let signed = http
        .post(format!("{base}/login"))
        .header("cookie", login_cookie)
        .form(&[
            ("nonce", nonce),
            ("api_key", &env.deployment.api_keys[user]),
        ])
        .send()
        .await
        .expect("sign in");
    signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("lockbox_session="))
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_owned()
}

/// Finding 5: with the sink, a request page lists the fleet's records, newest first, and
/// its live list follows this node's own trail from `after_seq` = the newest record's
/// `seq`. That record may be another node's, whose numbering has nothing to do with this
/// node's: the live list then skipped every record of this node up to that number
/// (here 900), so statements run right now through this node never appeared.
#[tokio::test]
async fn a_request_pages_live_list_resumes_after_this_nodes_own_newest_record() {
    let (env, audit_db) = sink_env("review_page_after").await;
    let (id, token) = env.approved_token("eve", "30m").await;
    let mut raw = Raw::login(&env, "eve", &token).await;
    raw.read_until_ready().await;
    raw.send(&query("SELECT 'page probe'")).await;
    raw.read_until_ready().await;
    wait_shipped(&audit_db, "page probe").await;
    // Another node's newer record of the same request, far ahead in its own numbering.
    let time = (chrono::Utc::now() + chrono::Duration::seconds(60))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let line = serde_json::json!({
        "seq": 900, "time": time, "prev": "00".repeat(32), "node": "node-2",
        "type": "statement", "session_id": "s-2", "request_id": id, "ticket": "T",
        "engineer": "eve", "database": env.db, "client_addr": "127.0.0.1:1",
        "protocol": "simple", "statement": "SELECT 2 AS on_node_2", "kind": "select",
    })
    .to_string();
    cluster()
        .psql(
            &audit_db,
            &format!(
                "INSERT INTO lockbox_audit (proxy_id, seq, \"time\", \"type\", request_id, \
                 session_id, engineer, \"database\", record, line) VALUES ('node-2', 900, \
                 '{time}', 'statement', '{id}', 's-2', 'eve', '{}', '{line}'::jsonb, '{line}')",
                env.db
            ),
        )
        .expect("another node's record");
    let cookie = web_sign_in(&env, "carol").await;
    let page = reqwest::Client::new()
        .get(format!("{}/requests/{id}", env.deployment.server_url()))
        .header("cookie", cookie)
        .send()
        .await
        .expect("request page")
        .text()
        .await
        .expect("request page");
    assert!(
        page.contains("on_node_2"),
        "the page lists the fleet's records"
    );
    let after: u64 = page
        .split("stream?after_seq=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("the live list's resume point");
    let newest_here = env
        .audit()
        .iter()
        .filter(|r| r["request_id"] == id.as_str())
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .expect("this node's records of the request");
    assert!(
        after <= newest_here,
        "the live list resumes after {after}, past this node's newest record {newest_here}"
    );
}

/// Finding 6: signing out when the state store fails to delete the sign-in answered as a
/// success (303 to `/login`, the cookie cleared in this browser) while the sign-in stayed
/// valid in the store: a copy of the cookie (another tab's, a stolen one) kept working
/// after the user believed they had signed out. It must say the sign-out failed.
#[tokio::test]
async fn a_sign_out_the_store_did_not_take_is_not_reported_as_done() {
    let env = Env::with(
        "review_signout",
        Options {
            state_postgres: false,
            ..Options::default()
        },
    )
    .await;
    let cookie = web_sign_in(&env, "carol").await;
    let base = env.deployment.server_url();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let page = http
        .get(format!("{base}/requests"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("a page")
        .text()
        .await
        .expect("a page");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("csrf token")
        .to_owned();
    // The store reads, but refuses to delete sign-ins (a store failing mid-request).
    let state = rusqlite::Connection::open(env.deployment.dir.join("state.db")).expect("state");
    state
        .execute_batch(
            "CREATE TRIGGER keep_sign_ins BEFORE DELETE ON web_sessions
             BEGIN SELECT RAISE(FAIL, 'the store is failing'); END;",
        )
        .expect("trigger");
    let out = http
        .post(format!("{base}/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("sign out");
    let still = http
        .get(format!("{base}/requests"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("a page")
        .status();
    assert!(
        !(out.status().is_redirection() && still.is_success()),
        "the sign-out answered {} but the cookie still signs in ({still})",
        out.status()
    );
    assert_eq!(out.status().as_u16(), 503);
}

/// Finding 10: with the sink configured, a request page read its latest statements from
/// the audit database and failed whole (500) when that read failed: an approver could not
/// see, approve, revoke or end sessions from the page while the audit database (a copy;
/// the file is the primary record) was down. The page shows without the statements then.
#[tokio::test]
async fn a_request_page_works_while_the_audit_database_is_down() {
    let mut env = Env::prepare("review_page_sink_down", Options::default());
    let mut text = std::fs::read_to_string(&env.config_path).expect("config");
    // Nothing listens on port 1: every read of the audit database fails at once.
    text.push_str("\n[audit.postgres]\nurl = \"postgres://postgres@127.0.0.1:1/audit\"\nproxy_id = \"node-1\"\n");
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    let (id, _token) = env.approved_token("eve", "30m").await;
    let cookie = web_sign_in(&env, "carol").await;
    let response = reqwest::Client::new()
        .get(format!("{}/requests/{id}", env.deployment.server_url()))
        .header("cookie", cookie)
        .send()
        .await
        .expect("request page");
    let status = response.status().as_u16();
    let page = response.text().await.expect("request page");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("/revoke"),
        "the page offers its actions: {page}"
    );
    // Finding 11: the trail page itself answered 500 "could not show this page", as for
    // a bug; an unavailable part is a 503, as the API answers.
    let cookie = web_sign_in(&env, "dave").await;
    let status = reqwest::Client::new()
        .get(format!("{}/audit", env.deployment.server_url()))
        .header("cookie", cookie)
        .send()
        .await
        .expect("audit page")
        .status();
    assert_eq!(status.as_u16(), 503);
}
