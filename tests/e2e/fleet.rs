//! Several lockbox nodes on one PostgreSQL state store (issue 13): in-process servers on
//! ports of their own, one state database, the engineer's session on one node and the
//! decisions on others.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockbox::client::ApiClient;
use lockbox::policy::{AccessLevel, NewRequest, RequestStatus};
use lockbox::sandbox::{free_port, PgSandbox};
use lockbox::server::RunningServer;

use crate::harness::{db_error, fatal_error, postgres_state, Env, Options};

/// One node whose state store is `state`, a cluster of the test's own (which it may stop or
/// freeze), whichever store the other tests run on.
async fn on_own_state_store(name: &str, state: &PgSandbox) -> Env {
    let mut env = Env::prepare(
        name,
        Options {
            state_postgres: false,
            ..Options::default()
        },
    );
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    std::fs::write(&env.config_path, postgres_state(state, "state", &text)).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("starts"));
    env
}

/// Node `i` of the fleet `env` started as node 1: the same config (state, keys, users)
/// with listeners, audit trail and node id of its own. Returns its config file and proxy port.
pub(crate) fn node_config(env: &Env, i: usize) -> (std::path::PathBuf, u16) {
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let proxy_port = free_port().expect("port");
    let text = text
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", env.proxy_port()),
            &format!("listen = \"127.0.0.1:{proxy_port}\""),
        )
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", env.deployment.api_port),
            &format!("listen = \"127.0.0.1:{}\"", free_port().expect("port")),
        )
        .replace(
            "path = \"audit/audit.jsonl\"",
            &format!("path = \"audit/node{i}.jsonl\""),
        )
        .replace("id = \"node-1\"", &format!("id = \"node-{i}\""));
    let path = env.config_path.with_file_name(format!("node{i}.toml"));
    std::fs::write(&path, text).expect("node config");
    (path, proxy_port)
}

/// Node `i`, in-process.
pub(crate) async fn start_node(env: &Env, i: usize) -> RunningServer {
    let (path, _) = node_config(env, i);
    let config = lockbox::config::Config::load(&path).expect("node config loads");
    lockbox::server::start(config).await.expect("node starts")
}

pub(crate) fn client_of(env: &Env, server: &RunningServer, user: &str) -> ApiClient {
    let key = env.deployment.api_keys.get(user).expect("user's key");
    ApiClient::new(&format!("http://{}", server.api_addr), key)
}

pub(crate) fn node_one(env: &Env) -> &RunningServer {
    env.server.as_ref().expect("node 1 runs")
}

pub(crate) async fn start_fleet(name: &str, policy: &'static str) -> (Env, Vec<RunningServer>) {
    let env = Env::with(
        name,
        Options {
            state_postgres: true,
            policy,
            ..Options::default()
        },
    )
    .await;
    let two = start_node(&env, 2).await;
    let three = start_node(&env, 3).await;
    (env, vec![two, three])
}

pub(crate) fn ask(env: &Env) -> NewRequest {
    NewRequest {
        database: env.db.clone(),
        ticket: "T-13".into(),
        reason: "investigate".into(),
        access: AccessLevel::Read,
        duration: Some("1h".into()),
        ..NewRequest::default()
    }
}

/// Connects through the proxy listening on `port`.
pub(crate) async fn connect_via(
    env: &Env,
    port: u16,
    token: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::task::JoinHandle<Option<tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    let config = env.pg_config_at(port, "eve", token);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    Ok((client, tokio::spawn(async move { connection.await.err() })))
}

/// A session of eve's on a grant of an hour, connected through `node` and past its first
/// statement: (request id, client, its connection).
async fn session_through(
    env: &Env,
    node: &RunningServer,
) -> (
    String,
    tokio_postgres::Client,
    tokio::task::JoinHandle<Option<tokio_postgres::Error>>,
) {
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, connection) = connect_via(env, node.proxy_addr.port(), &token)
        .await
        .expect("connect through the node");
    client.simple_query("SELECT 1").await.expect("query");
    (id, client, connection)
}

/// Waits (bounded, never timed) until the session's next statement fails; returns the
/// proxy's FATAL (SQLSTATE, message).
async fn wait_until_dropped(
    client: &tokio_postgres::Client,
    connection: tokio::task::JoinHandle<Option<tokio_postgres::Error>>,
) -> (String, String) {
    for _ in 0..200 {
        if let Err(e) = client.simple_query("SELECT 1").await {
            let connection = tokio::time::timeout(Duration::from_secs(10), connection)
                .await
                .expect("connection ends")
                .expect("task");
            return fatal_error(Some(e), connection);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the session was never dropped");
}

#[tokio::test(flavor = "multi_thread")]
async fn decided_on_three_nodes_connected_through_one_revoked_through_another() {
    let (env, nodes) = start_fleet(
        "fleet_three",
        "\n[[rules]]\nname = \"lead-first\"\ninternal_approvals = 1\n",
    )
    .await;
    let (two, three) = (&nodes[0], &nodes[1]);
    let id = client_of(&env, node_one(&env), "eve")
        .create_request(&ask(&env))
        .await
        .expect("create on node 1")
        .id
        .0;
    let seen = client_of(&env, three, "carol")
        .show_request(&id)
        .await
        .expect("node 3 sees it");
    assert_eq!(seen.status, RequestStatus::PendingInternal);
    client_of(&env, two, "lena")
        .approve(&id, "lead ok")
        .await
        .expect("internal stage on node 2");
    let approved = client_of(&env, three, "carol")
        .approve(&id, "customer ok")
        .await
        .expect("customer stage on node 3");
    assert!(
        matches!(
            approved.status,
            RequestStatus::Approved | RequestStatus::Active
        ),
        "{:?}",
        approved.status
    );
    let token = client_of(&env, three, "eve")
        .token(&id)
        .await
        .expect("token")
        .token;
    let (client, connection) = connect_via(&env, three.proxy_addr.port(), &token)
        .await
        .expect("connect through node 3");
    let rows = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("read");
    assert_eq!(rows.get::<_, i64>(0), 10);

    client_of(&env, node_one(&env), "carol")
        .revoke(&id, "done")
        .await
        .expect("revoke on node 1");
    let (code, message) = wait_until_dropped(&client, connection).await;
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("revoked"), "{message}");
    // Node 3 wrote the drop into its own trail.
    let trail = env.audit_path.with_file_name("node3.jsonl");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&trail).expect("node 3's trail");
        if text.contains("dropped_revoked") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.contains("dropped_revoked"), "node 3's trail: {text}");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_approvals_of_a_quorum_given_at_once_on_two_nodes_both_count() {
    let (env, nodes) = start_fleet(
        "fleet_quorum",
        "\n[[rules]]\nname = \"two-customers\"\ncustomer_approvals = 2\n",
    )
    .await;
    for round in 0..3 {
        let id = client_of(&env, node_one(&env), "eve")
            .create_request(&ask(&env))
            .await
            .expect("create")
            .id
            .0;
        let (carol, cleo) = (
            client_of(&env, &nodes[0], "carol"),
            client_of(&env, &nodes[1], "cleo"),
        );
        let (a, b) = tokio::join!(carol.approve(&id, "one"), cleo.approve(&id, "two"));
        a.expect("carol on node 2");
        b.expect("cleo on node 3");
        let request = client_of(&env, node_one(&env), "carol")
            .show_request(&id)
            .await
            .expect("show");
        assert_eq!(request.status, RequestStatus::Active, "round {round}");
        let mut approvers: Vec<String> = request.approvals.iter().map(|a| a.by.clone()).collect();
        approvers.sort();
        assert_eq!(approvers, ["carol", "cleo"], "round {round}");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// An HTTP receiver counting each webhook body by (event, request id).
async fn counting_receiver(port: u16) -> Arc<Mutex<Vec<(String, String)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let store = store.clone();
            async move {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                    let event = v["event"].as_str().unwrap_or_default().to_owned();
                    let request = v["request"]["request_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    store.lock().expect("seen").push((event, request));
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind hook");
    tokio::spawn(async move { axum::serve(listener, app).await });
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn each_event_is_delivered_once_with_three_nodes_running() {
    let hook_port = free_port().expect("port");
    let seen = counting_receiver(hook_port).await;
    let settings = format!(
        "\n[notifications]\nretry_base = \"200ms\"\n\
         [[notifications.webhooks]]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n"
    );
    let (env, nodes) = start_fleet("fleet_notify", Box::leak(settings.into_boxed_str())).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let node = if i == 0 {
            node_one(&env)
        } else {
            &nodes[i - 1]
        };
        let id = client_of(&env, node, "eve")
            .create_request(&ask(&env))
            .await
            .expect("create")
            .id
            .0;
        ids.push(id);
    }
    // Every request's creation reaches the receiver…
    for _ in 0..200 {
        let got = seen.lock().expect("seen").clone();
        if ids.iter().all(|id| got.iter().any(|(_, r)| r == id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …and after every node has polled the outbox a few more times, still once each.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = seen.lock().expect("seen").clone();
    for id in &ids {
        let of_it: Vec<&(String, String)> = got.iter().filter(|(_, r)| r == id).collect();
        assert!(!of_it.is_empty(), "no delivery for {id}: {got:?}");
        let mut events: Vec<&str> = of_it.iter().map(|(e, _)| e.as_str()).collect();
        let all = events.len();
        events.sort_unstable();
        events.dedup();
        assert_eq!(
            all,
            events.len(),
            "a delivery for {id} went out twice: {got:?}"
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_state_store_down_new_sessions_and_decisions_are_refused_and_live_ones_kept() {
    // A cluster used only as the state store, so stopping it leaves the upstream running;
    // commits are flushed, so an immediate stop (a crash) keeps them, as a real store does.
    let mut state = PgSandbox::start_with(&[("synchronous_commit", "on")]).expect("state cluster");
    let env = on_own_state_store("fleet_down", &state).await;

    let (live_id, live_token) = env.approved_token("eve", "1h").await;
    let (_, spare_token) = env.approved_token("eve", "1h").await;
    let pending = env.pending_request("eve", "1h").await;
    let (live, live_connection) = env.connect("eve", &live_token).await.expect("connect");

    state.stop();
    let Err(refused) = env.connect("eve", &spare_token).await else {
        panic!("a new session was let in without the state store");
    };
    let (code, message) = db_error(&refused);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("state store"), "{message}");
    let decision = env
        .client("carol")
        .approve(&pending, "ok")
        .await
        .expect_err("no decision without the state store");
    assert_eq!(
        decision.code(),
        Some("state_store_unavailable"),
        "{decision}"
    );
    // This node's sessions are still listed, and the list says it is this node's alone.
    let (listed, partial) = env
        .client("carol")
        .list_sessions_noting()
        .await
        .expect("sessions without the state store");
    assert!(listed.iter().any(|s| s.request_id == live_id), "{listed:?}");
    let partial = partial.expect("a list without the other nodes' sessions says so");
    assert!(partial.contains("only this node's sessions"), "{partial}");
    // The live session keeps its grant (its deadline is known), across reconcile rounds.
    for _ in 0..3 {
        let row = live
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .expect("the live session goes on");
        assert_eq!(row.get::<_, i64>(0), 10);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    state.restart().expect("state store back");
    let mut resumed = Err(String::new());
    for _ in 0..100 {
        match env.connect("eve", &spare_token).await {
            Ok(session) => {
                resumed = Ok(session);
                break;
            }
            Err(e) => resumed = Err(format!("{:?}", db_error(&e))),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (spare, _) = resumed.expect("new sessions resume with the state store");
    spare.simple_query("SELECT 1").await.expect("query");
    env.client("carol")
        .approve(&pending, "ok")
        .await
        .expect("decisions resume");
    // Revoking the live grant still reaches its session after the outage.
    env.client("carol")
        .revoke(&live_id, "done")
        .await
        .expect("revoke");
    let (code, _) = wait_until_dropped(&live, live_connection).await;
    assert_eq!(code, "57P01");
}

/// A frozen state store (SIGSTOP: its connections stay open, its kernel still acknowledges,
/// nothing answers) refuses decisions, lists and logins as a store that is down does. The
/// server cannot time its own statements out while frozen, and keepalives see nothing
/// wrong: an attack review's API calls waited until the store woke.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_state_store_is_one_that_is_down() {
    let state = PgSandbox::start_with(&[("synchronous_commit", "on")]).expect("state cluster");
    let env = on_own_state_store("fleet_frozen", &state).await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let pending = env.pending_request("eve", "1h").await;

    let thawed = Thaw(&state);
    state.freeze(true).expect("freeze the state store");
    // Bounded here, so that a store waited on for ever fails the test rather than hangs it.
    let within = Duration::from_secs(60);
    // Decisions of one request wait for each other, each no longer than the store's bound
    // (behind one that waits for the store, the waits added up: 15, 30, 45 … s). The first
    // finds the store down; those that waited behind it are told so, nothing changed.
    let approvals = (0..4).map(|_| {
        let carol = env.client("carol");
        let pending = pending.clone();
        tokio::spawn(async move { carol.approve(&pending, "ok").await })
    });
    let decisions = tokio::time::timeout(within, futures::future::join_all(approvals))
        .await
        .expect("an answer while the store is frozen, not a wait for it to wake");
    let codes: Vec<String> = decisions
        .into_iter()
        .map(|d| {
            let e = d
                .expect("task")
                .expect_err("no decision while the store is frozen");
            e.code().unwrap_or_default().to_owned()
        })
        .collect();
    assert!(
        codes
            .iter()
            .all(|c| c == "state_store_unavailable" || c == "unavailable"),
        "{codes:?}"
    );
    assert!(
        codes.iter().any(|c| c == "unavailable"),
        "no decision was told it waited behind another: {codes:?}"
    );
    let listed = tokio::time::timeout(within, env.client("carol").list_requests(None))
        .await
        .expect("an answer while the store is frozen, not a wait for it to wake")
        .expect_err("no list while the store is frozen");
    assert_eq!(listed.code(), Some("state_store_unavailable"), "{listed}");
    let login = tokio::time::timeout(within, env.connect("eve", &token))
        .await
        .expect("an answer while the store is frozen, not a wait for it to wake");
    let Err(refused) = login else {
        panic!("a session was let in while the store was frozen");
    };
    let (code, message) = db_error(&refused);
    assert_eq!(code, "08006", "{message}");

    drop(thawed);
    let mut decided = None;
    for _ in 0..100 {
        match env.client("carol").approve(&pending, "ok").await {
            Ok(request) => {
                decided = Some(request);
                break;
            }
            Err(e) => assert_eq!(e.code(), Some("state_store_unavailable"), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        decided.is_some(),
        "decisions did not resume once the store woke"
    );
}

/// Wakes a frozen cluster when dropped: a failed assertion must not leave it stopped (its
/// own stop at the end would then wait for ever).
struct Thaw<'a>(&'a PgSandbox);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = self.0.freeze(false);
    }
}

/// A state store that answers nothing (here its requests table locked by another
/// transaction; a frozen server is alike) refuses logins and decisions as a store that is
/// down does, instead of holding them until the login's own timeout or for ever (an attack
/// review waited 30 s for a generic "login timed out", and 45 s for a revoke).
#[tokio::test(flavor = "multi_thread")]
async fn a_state_store_that_does_not_answer_is_one_that_is_down() {
    let env = Env::with(
        "fleet_store_locked",
        Options {
            state_postgres: true,
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let pending = env.pending_request("eve", "1h").await;
    let locker = lock_state_table("s_fleet_store_locked", "lockbox_requests").await;

    let Err(refused) = env.connect("eve", &token).await else {
        panic!("a session was let in while its request could not be read");
    };
    let (code, message) = db_error(&refused);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("state store"), "{message}");
    // Bounded, so that a store waited on for ever fails here rather than hangs the run.
    let decision = tokio::time::timeout(
        Duration::from_secs(60),
        env.client("carol").approve(&pending, "ok"),
    )
    .await
    .expect("an answer, not a wait for the lock")
    .expect_err("no decision while the request cannot be read");
    assert_eq!(
        decision.code(),
        Some("state_store_unavailable"),
        "{decision}"
    );

    locker.batch_execute("ROLLBACK").await.expect("unlock");
    let (client, _conn) = env.connect("eve", &token).await.expect("logins resume");
    client.simple_query("SELECT 1").await.expect("query");
    env.client("carol")
        .approve(&pending, "ok")
        .await
        .expect("decisions resume");
}

/// Node `server`'s session list as `user` sees it, once it holds `session` (or after 10 s).
async fn listed_until(
    env: &Env,
    server: &RunningServer,
    user: &str,
    seen: impl Fn(&[lockbox::proxy::SessionInfo]) -> bool,
) -> Vec<lockbox::proxy::SessionInfo> {
    let mut list = Vec::new();
    for _ in 0..100 {
        let (now, partial) = client_of(env, server, user)
            .list_sessions_noting()
            .await
            .expect("sessions");
        assert_eq!(partial, None, "a whole list while the store is up");
        list = now;
        if seen(&list) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    list
}

/// `lockbox session list` on any node lists every node's sessions (an operator on node 1
/// saw nothing of a session on node 3 it could end from there), to those who may see them.
#[tokio::test(flavor = "multi_thread")]
async fn every_node_lists_the_sessions_of_every_node() {
    let (env, nodes) = start_fleet("fleet_session_list", "").await;
    let three = &nodes[1];
    let (id, client, connection) = session_through(&env, three).await;
    let on_three = |list: &[lockbox::proxy::SessionInfo]| {
        list.iter()
            .any(|s| s.request_id == id && s.node == "node-3")
    };

    let by_carol = listed_until(&env, node_one(&env), "carol", on_three).await;
    assert!(
        on_three(&by_carol),
        "node 1 does not list node 3's session: {by_carol:?}"
    );
    let by_eve = listed_until(&env, node_one(&env), "eve", on_three).await;
    assert!(
        on_three(&by_eve),
        "its engineer does not see it on node 1: {by_eve:?}"
    );
    let by_lena = client_of(&env, node_one(&env), "lena")
        .list_sessions()
        .await
        .expect("sessions");
    assert!(
        by_lena.iter().all(|s| s.request_id != id),
        "a support lead sees another engineer's session: {by_lena:?}"
    );

    drop(client);
    let _ = connection.await;
    let after = listed_until(&env, node_one(&env), "carol", |l| !on_three(l)).await;
    assert!(
        !on_three(&after),
        "an ended session is still listed: {after:?}"
    );
}

/// The admin center's `/sessions` page on node 1 lists a session on node 3, with its end
/// button for whom may end it only, and ends it there: what `session list`/`kill` do.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_centers_sessions_page_lists_and_ends_every_nodes_sessions() {
    use crate::web::http;
    let (env, nodes) = start_fleet("fleet_sessions_page", "").await;
    let (id, client, connection) = session_through(&env, &nodes[1]).await;
    let session = listed_until(&env, node_one(&env), "carol", |l| {
        l.iter().any(|s| s.request_id == id)
    })
    .await
    .into_iter()
    .find(|s| s.request_id == id)
    .expect("node 1 lists node 3's session")
    .session_id;
    let base = env.deployment.server_url();
    let page_of = |user: &'static str| {
        let (env, base) = (&env, base.clone());
        async move {
            let key = env.deployment.api_keys.get(user).expect("key");
            let cookie = http::sign_in(&base, key).await;
            let response = http::get(&base, &cookie, "/sessions").await;
            assert_eq!(response.status(), 200, "{user}");
            (cookie, response.text().await.expect("page"))
        }
    };
    let (carol, shown) = page_of("carol").await;
    assert!(
        shown.contains(&session) && shown.contains("node-3") && shown.contains("End session"),
        "{shown}"
    );
    let (_, audited) = page_of("dave").await;
    assert!(
        audited.contains(&session) && !audited.contains("End session"),
        "{audited}"
    );
    let (_, other) = page_of("lena").await;
    assert!(!other.contains(&session), "{other}");

    let csrf = http::hidden_field(&shown, "csrf").expect("csrf");
    let response = http::post(
        &base,
        &carol,
        &format!("/sessions/{session}/end"),
        &[
            ("csrf", csrf.as_str()),
            ("reason", "done here"),
            ("back", "sessions"),
        ],
    )
    .await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/sessions");
    let (code, _) = wait_until_dropped(&client, connection).await;
    assert_eq!(code, "57P01");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_lists_its_nodes_and_a_kill_on_one_node_ends_a_session_on_another() {
    let (env, nodes) = start_fleet("fleet_kill", "").await;
    let three = &nodes[1];
    let (id, client, connection) = session_through(&env, three).await;

    let on_three = client_of(&env, three, "carol")
        .list_sessions()
        .await
        .expect("sessions");
    assert_eq!(on_three.len(), 1);
    assert_eq!(on_three[0].node, "node-3");
    assert_eq!(on_three[0].request_id, id);
    // Every node's heartbeat (and node 3's session) reaches node 1.
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = client_of(&env, node_one(&env), "carol")
            .cluster()
            .await
            .expect("cluster");
        let ids: Vec<&str> = listed.iter().map(|n| n.id.as_str()).collect();
        let three_live = listed
            .iter()
            .any(|n| n.id == "node-3" && n.live_sessions == 1);
        if ids == ["node-1", "node-2", "node-3"] && three_live {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<&str> = listed.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["node-1", "node-2", "node-3"], "{listed:?}");
    assert!(listed.iter().any(|n| n.id == "node-1" && n.this_node));

    let killed = client_of(&env, node_one(&env), "carol")
        .kill_session(&on_three[0].session_id, "enough")
        .await
        .expect("kill through node 1");
    assert_eq!(killed.node, "node-3");
    let (code, message) = wait_until_dropped(&client, connection).await;
    assert_eq!(code, "57P01", "{message}");
    // Relayed as an approver's end, not the engineer's own.
    assert!(
        message.contains("enough") && message.contains("by an operator"),
        "{message}"
    );
    // Node 1 recorded the kill; node 3 the drop, each record naming its node.
    let node_of = |file: &str, event: &str| -> Option<String> {
        let text = std::fs::read_to_string(env.audit_path.with_file_name(file)).ok()?;
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
            .find(|r| r["event"] == event)
            .map(|r| r["node"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(
        node_of("audit.jsonl", "session_killed").as_deref(),
        Some("node-1")
    );
    let mut dropped = None;
    for _ in 0..100 {
        dropped = node_of("node3.jsonl", "dropped_killed");
        if dropped.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dropped.as_deref(), Some("node-3"));
    for node in nodes {
        node.shutdown().await;
    }
}

/// A kill ordered while the session's node is not listening (its listener cut, as by a
/// restarted state database) still ends the session: the order is kept in the store and
/// the node's reconcile carries it out (an attack review's session ran on for as long as it
/// watched, while the trail said it was killed).
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_announced_while_the_sessions_node_was_not_listening_is_carried_out() {
    let (env, nodes) = start_fleet("fleet_kill_unheard", "").await;
    let three = &nodes[1];
    let (_, client, connection) = session_through(&env, three).await;
    let session = client_of(&env, three, "carol")
        .list_sessions()
        .await
        .expect("sessions")
        .pop()
        .expect("the session on node 3")
        .session_id;
    // Node 1 learns of node 3's session from its heartbeat.
    let mut heard = false;
    for _ in 0..100 {
        let nodes = client_of(&env, node_one(&env), "carol")
            .cluster()
            .await
            .expect("cluster");
        if nodes
            .iter()
            .any(|n| n.id == "node-3" && n.live_sessions == 1)
        {
            heard = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(heard, "node 3's session never reached the cluster list");

    // Every node's listener cut; each waits before it listens again.
    let state_db = "s_fleet_kill_unheard";
    let listeners = format!(
        "FROM pg_stat_activity WHERE datname = '{state_db}' AND query LIKE 'LISTEN%' \
         AND state = 'idle'"
    );
    crate::harness::cluster()
        .psql(
            "postgres",
            &format!("SELECT pg_terminate_backend(pid) {listeners}"),
        )
        .expect("cut the listeners");
    for _ in 0..100 {
        let left = crate::harness::cluster()
            .psql("postgres", &format!("SELECT count(*) {listeners}"))
            .expect("count listeners");
        if left.trim() == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client_of(&env, node_one(&env), "carol")
        .kill_session(&session, "unheard")
        .await
        .expect("kill through node 1");
    let (code, message) = wait_until_dropped(&client, connection).await;
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("unheard"), "{message}");
    for node in nodes {
        node.shutdown().await;
    }
}

/// A window another node's sweep recorded as ended (its clock ahead of this node's) ends
/// this node's sessions at the next reconcile, not when this node's own clock reaches the
/// end (here the stored request is changed as such a sweep changes it, an hour early).
#[tokio::test(flavor = "multi_thread")]
async fn a_window_another_node_recorded_as_ended_ends_the_sessions_here() {
    let (env, nodes) = start_fleet("fleet_ended_elsewhere", "").await;
    let three = &nodes[1];
    let (id, client, connection) = session_through(&env, three).await;
    crate::harness::cluster()
        .psql(
            "s_fleet_ended_elsewhere",
            &format!(
                "UPDATE lockbox_requests SET status = 'completed', version = version + 1, \
                 body = jsonb_set(jsonb_set(body::jsonb, '{{status}}', '\"completed\"'), \
                 '{{version}}', to_jsonb(version + 1))::text WHERE id = '{id}'"
            ),
        )
        .expect("record the window as ended");
    let (code, message) = wait_until_dropped(&client, connection).await;
    assert_eq!(code, "57P01", "{message}");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_with_sigkill_leaves_the_others_serving_and_its_work_to_them() {
    let (env, nodes) = start_fleet("fleet_sigkill", "").await;
    // Node 4 is a process of its own, to be killed with SIGKILL.
    let (path, port) = node_config(&env, 4);
    let mut node4 = std::process::Command::new(env!("CARGO_BIN_EXE_lockbox"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("lockbox serve");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "node 4 did not start");

    // A grant whose window ends soon: its completion is work for whichever node sweeps.
    // Approved last, so that its window covers only the login through node 4.
    let (_, token) = env.approved_token("eve", "1h").await;
    let (short_id, short_token) = env.approved_token("eve", "4s").await;
    let (on_four, four_connection) = connect_via(&env, port, &short_token)
        .await
        .expect("connect through node 4");
    on_four.simple_query("SELECT 1").await.expect("query");
    let (on_two, _two_connection) = connect_via(&env, nodes[0].proxy_addr.port(), &token)
        .await
        .expect("connect through node 2");

    node4.kill().expect("SIGKILL node 4");
    let _ = node4.wait();
    let gone = tokio::time::timeout(Duration::from_secs(10), four_connection)
        .await
        .expect("node 4's session ends with it");
    assert!(gone.is_ok());

    // The others go on: a live session on node 2, a new one through node 3, decisions.
    on_two
        .simple_query("SELECT 1")
        .await
        .expect("node 2's session goes on");
    let (_, fresh) = env.approved_token("eve", "1h").await;
    let (on_three, _) = connect_via(&env, nodes[1].proxy_addr.port(), &fresh)
        .await
        .expect("connect through node 3");
    on_three.simple_query("SELECT 1").await.expect("query");
    // The short grant's completion is recorded by a node still running.
    let trails = ["audit.jsonl", "node2.jsonl", "node3.jsonl"];
    let completed = |trails: &[&str]| {
        trails.iter().any(|t| {
            std::fs::read_to_string(env.audit_path.with_file_name(t))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|r| r["event"] == "completed" && r["request_id"] == short_id.as_str())
        })
    };
    let mut done = false;
    for _ in 0..100 {
        if completed(&trails) {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "no surviving node recorded the grant's completion");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extension_approved_on_one_node_keeps_a_session_on_another_alive() {
    let (env, nodes) = start_fleet("fleet_extend", "").await;
    // The window outlasts the login and the extension's request and approval.
    let (id, token) = env.approved_token("eve", "8s").await;
    let first_end = env.window_end(&id).await;
    let (client, _connection) = connect_via(&env, nodes[0].proxy_addr.port(), &token)
        .await
        .expect("connect through node 2");
    let extension = client_of(&env, &nodes[1], "eve")
        .extend(&id, "1h", "the fix needs longer")
        .await
        .expect("extend on node 3");
    client_of(&env, node_one(&env), "carol")
        .approve(&extension.id.0, "ok")
        .await
        .expect("approve on node 1");
    // Past the original window's end the session on node 2 still works.
    Env::sleep_past(first_end).await;
    client
        .simple_query("SELECT 'still here'")
        .await
        .expect("the session on node 2 was extended");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite_the_cluster_is_this_node_alone() {
    let env = Env::with(
        "fleet_single",
        Options {
            state_postgres: false,
            ..Options::default()
        },
    )
    .await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _connection) = env.connect("eve", &token).await.expect("connect");
    client.simple_query("SELECT 1").await.expect("query");
    let nodes = env.client("dave").cluster().await.expect("cluster");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(nodes[0].this_node);
    assert_eq!(nodes[0].live_sessions, 1);
    assert!(nodes[0].audit_seq.is_some_and(|seq| seq > 0));
    // Live sessions and the audit sink's state are for those who may read the trail, as
    // in `/v1/health`: not for an engineer.
    let refused = env.client("eve").cluster().await.expect_err("eve");
    assert_eq!(refused.code(), Some("forbidden"), "{refused}");
}

/// The other nodes' sessions unreadable (their table locked by another transaction): the
/// API's list, the sessions page and a request's page list this node's sessions and say the
/// list is this node's only (the request page said "No session is connected now" while
/// sessions were live on other nodes, an attack review's finding).
#[tokio::test(flavor = "multi_thread")]
async fn a_session_list_without_the_other_nodes_says_so_everywhere() {
    use crate::web::http;
    let env = Env::with(
        "fleet_nodes_locked",
        Options {
            state_postgres: true,
            ..Options::default()
        },
    )
    .await;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, _connection) = env.connect("eve", &token).await.expect("connect");
    client.simple_query("SELECT 1").await.expect("query");
    let base = env.deployment.server_url();
    let key = env.deployment.api_keys.get("carol").expect("key");
    let cookie = http::sign_in(&base, key).await;
    let page = |path: String| {
        let (base, cookie) = (base.clone(), cookie.clone());
        async move {
            let response = http::get(&base, &cookie, &path).await;
            assert_eq!(response.status(), 200, "{path}");
            response.text().await.expect("page")
        }
    };
    let notice = "This list may be incomplete: only this node's sessions";
    assert!(!page(format!("/requests/{id}")).await.contains(notice));

    let locker = lock_state_table("s_fleet_nodes_locked", "lockbox_nodes").await;
    let (listed, partial) = env
        .client("carol")
        .list_sessions_noting()
        .await
        .expect("sessions");
    assert!(listed.iter().any(|s| s.request_id == id), "{listed:?}");
    assert!(partial.is_some(), "a partial list passed for whole");
    for path in [format!("/requests/{id}"), "/sessions".to_owned()] {
        let shown = page(path.clone()).await;
        assert!(shown.contains(notice), "{path}: {shown}");
        assert!(shown.contains("End session"), "{path}: {shown}");
    }
    locker.batch_execute("ROLLBACK").await.expect("unlock");
}

/// Heartbeats are judged by the store's clock: a node silent for longer than 30 s is not
/// listed, and is named by every session list as one whose sessions may be missing (a node
/// cut off from the store runs its sessions on: they vanished from the list without a word,
/// an attack review's finding; a re-attack's had admitted its session since its last
/// heartbeat). A node that stops cleanly marks its row stopped, and is never named.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_node_is_named_and_one_that_stopped_is_not() {
    let env = Env::with(
        "fleet_silent",
        Options {
            state_postgres: true,
            ..Options::default()
        },
    )
    .await;
    let two = start_node(&env, 2).await;
    let state = crate::harness::cluster();
    let rows = |sql: &str| state.psql("s_fleet_silent", sql).expect("state store");
    for _ in 0..100 {
        if rows("SELECT count(*) FROM lockbox_nodes WHERE id = 'node-2'").trim() == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    two.shutdown().await;
    assert_eq!(
        rows("SELECT stopped FROM lockbox_nodes WHERE id = 'node-2'").trim(),
        "t",
        "a node that stopped cleanly did not say so"
    );
    // However long ago it stopped, it is not named as silent.
    rows("UPDATE lockbox_nodes SET last_seen = last_seen - 60000 WHERE id = 'node-2'");

    // Two nodes last heard from a minute ago by the store's clock (whatever theirs said),
    // one that had a session then and one that had none.
    let session = r#"[{"session_id":"s-gone","request_id":"req-gone","engineer":"eve","database":"x","client_addr":"10.0.0.9:5000","since":"2026-01-01T00:00:00Z","statements":3}]"#;
    rows(&format!(
        "INSERT INTO lockbox_nodes (id, last_seen, live_sessions, sessions) VALUES
           ('node-8', (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 60000, 1, '{session}'),
           ('node-9', (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 60000, 0, '[]')"
    ));
    let (listed, partial) = env
        .client("carol")
        .list_sessions_noting()
        .await
        .expect("sessions");
    assert!(
        listed.iter().all(|s| s.session_id != "s-gone"),
        "a silent node's session is listed as live: {listed:?}"
    );
    let partial = partial.expect("a list that may miss a silent node's sessions says so");
    // Both silent nodes: one admitted since its last heartbeat would be missing too.
    assert!(
        partial.contains("node node-8") && partial.contains("node node-9"),
        "{partial}"
    );
    assert!(!partial.contains("node-2"), "{partial}");
    let cluster = env.client("carol").cluster().await.expect("cluster");
    assert!(
        cluster.iter().all(|n| n.id != "node-8" && n.id != "node-9"),
        "{cluster:?}"
    );
}

/// Opens a transaction on the state store `database` that holds `table` locked (nothing else
/// reads or writes it) until the returned client rolls it back or is dropped.
async fn lock_state_table(database: &str, table: &str) -> tokio_postgres::Client {
    let (locker, connection) = tokio_postgres::connect(
        &crate::harness::cluster().url(database),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the state store");
    tokio::spawn(connection);
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap_or_else(|e| panic!("lock {table}: {e}"));
    locker
}
