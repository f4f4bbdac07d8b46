//! A node killed with SIGKILL while it holds pending work (issue 13): a notification it
//! claimed and was delivering, and a request waiting for its expiry. The nodes that go on
//! do both: the notification arrives once, the request expires.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use lockbox::client::ApiClient;
use lockbox::sandbox::free_port;

use crate::fleet::{ask, node_config, start_node};
use crate::harness::{Env, Options};

/// Deliveries the receiver answered, as (event, request id).
type Delivered = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver that leaves the first delivery unanswered (it hangs, as a slow
/// receiver does, so its sender is caught mid-delivery), says when it came, and counts
/// every later one it answers.
async fn receiver_holding_the_first(port: u16) -> (Delivered, oneshot::Receiver<()>) {
    let delivered: Delivered = Arc::default();
    let (first_tx, first_rx) = oneshot::channel();
    let first = Arc::new(Mutex::new(Some(first_tx)));
    let store = delivered.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let (store, first) = (store.clone(), first.clone());
            async move {
                let held = first.lock().expect("first").take();
                if let Some(tell) = held {
                    let _ = tell.send(());
                    std::future::pending::<()>().await;
                }
                if let Ok(v) = serde_json::from_str::<Value>(&body) {
                    let event = v["event"].as_str().unwrap_or_default().to_owned();
                    let request = v["request"]["request_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    store.lock().expect("delivered").push((event, request));
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind hook");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (delivered, first_rx)
}

/// The API address in a node's config file.
fn api_addr(config: &std::path::Path) -> String {
    let text = std::fs::read_to_string(config).expect("node config");
    let (_, after) = text.split_once("[api]\nlisten = \"").expect("[api] listen");
    after.split('"').next().expect("address").to_owned()
}

/// Whether the trail `file` (beside node 1's) holds `event` of request `id`.
fn recorded(env: &Env, file: &str, event: &str, id: &str) -> bool {
    std::fs::read_to_string(env.audit_path.with_file_name(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|r| r["event"] == event && r["request_id"] == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_mid_delivery_leaves_its_delivery_and_expiry_to_the_others() {
    let hook_port = free_port().expect("port");
    let (delivered, first) = receiver_holding_the_first(hook_port).await;
    let settings = format!(
        "\n[notifications]\nretry_base = \"200ms\"\n\
         [[notifications.webhooks]]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n"
    );
    let mut env = Env::prepare(
        "fleet_takeover",
        Options {
            state_postgres: true,
            policy: Box::leak(settings.into_boxed_str()),
            timings: "request_ttl = \"15s\"",
            ..Options::default()
        },
    );
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();

    // Node 4, a process of its own, is the only node running: the request's creation is
    // its delivery to make, and the request's expiry its sweep to do.
    let (path, _) = node_config(&env, 4);
    let mut node4 = std::process::Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("lockbox serve");
    let key = env.deployment.api_keys.get("eve").expect("key");
    let on_four = ApiClient::new(&format!("http://{}", api_addr(&path)), key);
    let mut created = None;
    for _ in 0..100 {
        if let Ok(request) = on_four.create_request(&ask(&env)).await {
            created = Some(request);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = created.expect("node 4 serves").id.0;
    // Node 4 claimed the delivery and is waiting for the receiver's answer: kill it now.
    tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("node 4 delivers")
        .expect("first delivery");
    node4.kill().expect("SIGKILL node 4");
    let _ = node4.wait();
    assert!(
        !recorded(&env, "node4.jsonl", "expired", &id),
        "node 4 expired the request before it died: nothing left to take over"
    );

    env.server = Some(lockbox::server::start(config).await.expect("node 1 starts"));
    let two = start_node(&env, 2).await;
    // Another node delivers once node 4's claim lapsed, and the request expires.
    let announced = || {
        delivered
            .lock()
            .expect("delivered")
            .iter()
            .filter(|(event, request)| event == "awaiting_approval" && *request == id)
            .count()
    };
    let expired_here = || {
        recorded(&env, "audit.jsonl", "expired", &id)
            || recorded(&env, "node2.jsonl", "expired", &id)
    };
    for _ in 0..900 {
        if announced() > 0 && expired_here() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(expired_here(), "no surviving node expired the request");
    let shown = env.client("eve").show_request(&id).await.expect("show");
    assert_eq!(shown.status.as_str(), "expired");
    assert_eq!(announced(), 1, "{:?}", delivered.lock().expect("delivered"));
    // Both survivors poll the outbox on: still once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(announced(), 1, "{:?}", delivered.lock().expect("delivered"));
    two.shutdown().await;
}
