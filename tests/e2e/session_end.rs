//! The record of a session's end gates nothing (the session is over), so it costs no fsync
//! of its own: like an outcome, it reaches the file at once and is fsynced with what
//! follows. In `fsync` mode that is one fsync less per connection.

use crate::harness::{Env, Options};

/// The test's deployment with fsyncs only when someone waits for one: the periodic sync of
/// records nobody waits for is an hour away.
async fn env_without_periodic_sync(name: &str) -> Env {
    let mut env = Env::prepare(name, Options::default());
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = text.replacen(
        "durability = \"fsync\"\n",
        "durability = \"fsync\"\nsync_interval = \"1h\"\n",
        1,
    );
    assert!(text.contains("sync_interval = \"1h\""), "{text}");
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    env
}

#[tokio::test]
async fn the_end_of_a_session_is_recorded_without_an_fsync_of_its_own() {
    let env = env_without_periodic_sync("session_end_no_fsync").await;
    let audit = &env.server.as_ref().expect("running").lockbox.audit;
    let (id, token) = env.approved_token("eve", "1h").await;
    let (client, connection) = env.connect("eve", &token).await.expect("login");
    client.simple_query("SELECT 1").await.expect("select");
    let before = audit.sync_count();
    drop(client);
    let _ = connection.await;
    env.wait_for_audit("the session's end", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["event"] == "disconnected")
    })
    .await;
    assert_eq!(
        audit.sync_count(),
        before,
        "the end record was fsynced on its own"
    );
    // It becomes durable with the next record someone waits for.
    let (_, token) = env.approved_token("bob", "1h").await;
    let (next, _) = env.connect("bob", &token).await.expect("login");
    next.simple_query("SELECT 1").await.expect("select");
    assert!(audit.sync_count() > before);
}

/// Nor does its start: the `connected` record rides the first statement's write, and the
/// fsync that statement waits for, before it goes upstream, covers both.
#[tokio::test]
async fn the_start_of_a_session_is_made_durable_by_its_first_statements_fsync() {
    let env = env_without_periodic_sync("session_start_no_fsync").await;
    let audit = &env.server.as_ref().expect("running").lockbox.audit;
    let (id, token) = env.approved_token("eve", "1h").await;
    let before = audit.sync_count();
    let (client, _connection) = env.connect("eve", &token).await.expect("login");
    env.wait_for_audit("the session's start", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["event"] == "connected")
    })
    .await;
    assert_eq!(
        audit.sync_count(),
        before,
        "the connected record was fsynced on its own"
    );
    client
        .simple_query("SELECT 'first statement'")
        .await
        .expect("select");
    assert!(
        audit.sync_count() > before,
        "the statement waited for an fsync"
    );
    let records = env.audit();
    let position = |wanted: &dyn Fn(&serde_json::Value) -> bool| {
        records
            .iter()
            .position(|r| r["request_id"] == id.as_str() && wanted(r))
    };
    let connected = position(&|r| r["event"] == "connected").expect("connected record");
    let statement =
        position(&|r| r["statement"] == "SELECT 'first statement'").expect("statement record");
    assert!(
        connected < statement,
        "the connected record precedes the statement"
    );
}
