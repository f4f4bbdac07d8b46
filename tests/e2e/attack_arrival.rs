//! Attacks on the fleet's trail in the sink table's arrival order (`src/audit/arrival.rs`):
//! findings of a review, each a test that failed before its fix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::attack_review::{get_audit, wait_shipped};
use crate::harness::{cluster, query, Env, Options, Raw};

/// A lockbox shipping as `node-1` to table `lockbox_audit` of a fresh database `a_<name>`,
/// made by `setup` first, through port `port` (the cluster's, or a relay's).
async fn sink_env_with(name: &str, setup: &str, port: Option<u16>) -> (Env, String) {
    let mut env = Env::prepare(name, Options::default());
    let pg = cluster();
    let audit_db = format!("a_{name}");
    pg.psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {audit_db} WITH (FORCE)"),
    )
    .expect("drop audit database");
    pg.psql("postgres", &format!("CREATE DATABASE {audit_db}"))
        .expect("create audit database");
    if !setup.is_empty() {
        pg.psql(&audit_db, setup)
            .expect("the table as the customer made it");
    }
    let mut text = std::fs::read_to_string(&env.config_path).expect("config");
    text.push_str(&format!(
        "\n[audit.postgres]\nurl = \"postgres://postgres@127.0.0.1:{}/{audit_db}\"\nproxy_id = \"node-1\"\nbatch_size = 50\n",
        port.unwrap_or(pg.port)
    ));
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    (env, audit_db)
}

/// The table as an earlier lockbox made it, without the arrival column.
const OLD_TABLE: &str = "CREATE TABLE lockbox_audit (proxy_id text NOT NULL, seq bigint NOT NULL, \
     \"time\" timestamptz NOT NULL, \"type\" text NOT NULL, request_id text, \
     session_id text, engineer text, \"database\" text, record jsonb NOT NULL, \
     line text NOT NULL, PRIMARY KEY (proxy_id, seq))";

async fn session(env: &Env) -> Raw {
    let (_, token) = env.approved_token("eve", "30m").await;
    let mut raw = Raw::login(env, "eve", &token).await;
    raw.read_until_ready().await;
    raw
}

async fn run(raw: &mut Raw, sql: &str) {
    raw.send(&query(sql)).await;
    raw.read_until_ready().await;
}

async fn connect(audit_db: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&cluster().url(audit_db), tokio_postgres::NoTls)
            .await
            .expect("connect to the audit database");
    tokio::spawn(connection);
    client
}

/// The cursor of a page's last record.
fn cursor_after(page: &Value) -> Option<String> {
    let last = page.as_array()?.last()?;
    Some(format!(
        "after_node={}&after_seq={}",
        last["node"].as_str()?,
        last["seq"]
    ))
}

/// Every record a reader sees paging `limit` at a time (bounded).
async fn paged(env: &Env, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    for _ in 0..200 {
        let (status, page) = get_audit(env, "dave", &format!("limit={limit}&{cursor}")).await;
        assert_eq!(status, 200, "{page}");
        let Some(records) = page.as_array().filter(|r| !r.is_empty()) else {
            break;
        };
        all.extend(records.iter().cloned());
        match cursor_after(&page) {
            Some(next) => cursor = next,
            None => break,
        }
    }
    all
}

fn rows(audit_db: &str) -> usize {
    cluster()
        .psql(audit_db, "SELECT count(*) FROM lockbox_audit")
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(0)
}

/// Attack 12, finding 1: any column named `arrival` was taken for the arrival order. A
/// customer who had added one of their own (here a plain nullable `bigint`, filled by
/// nothing) had every row at NULL: `arrival > NULL` is never true, so a reader paging the
/// fleet's trail saw its first page and then nothing, ever.
#[tokio::test]
async fn a_customers_own_arrival_column_does_not_end_paging_after_one_page() {
    let setup = format!("{OLD_TABLE}; ALTER TABLE lockbox_audit ADD COLUMN arrival bigint");
    let (env, audit_db) = sink_env_with("arrival_nullable", &setup, None).await;
    let mut raw = session(&env).await;
    for i in 0..3 {
        run(&mut raw, &format!("SELECT 'nullable probe {i}'")).await;
    }
    wait_shipped(&audit_db, "nullable probe 2").await;
    let total = rows(&audit_db);
    let seen = paged(&env, 2).await;
    assert!(
        seen.len() >= total,
        "paging showed {} of the table's {total} records",
        seen.len()
    );
}

/// Attack 12, finding 2: an identity column whose sequence caches values (`CACHE 100`, as
/// a DBA may set for insert speed) numbers rows per connection, not in the order they
/// commit: the sink's connection keeps 1..100, another shipper's gets 101. A row numbered
/// 3 committed after row 101, and a reader whose cursor stood at 101 never saw it.
#[tokio::test]
async fn a_cached_identity_column_cannot_hide_a_record_behind_a_cursor() {
    let setup = format!(
        "{OLD_TABLE}; ALTER TABLE lockbox_audit ADD COLUMN arrival bigint \
         GENERATED BY DEFAULT AS IDENTITY (CACHE 100) UNIQUE"
    );
    let (env, audit_db) = sink_env_with("arrival_cached", &setup, None).await;
    let mut raw = session(&env).await;
    run(&mut raw, "SELECT 'cached probe one'").await;
    wait_shipped(&audit_db, "cached probe one").await;
    // Another node ships a record now, on its own connection.
    let line = serde_json::json!({
        "seq": 1, "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "prev": "00".repeat(32), "node": "node-2", "type": "statement",
        "statement": "SELECT 'node two'", "kind": "select",
    })
    .to_string();
    connect(&audit_db)
        .await
        .execute(
            "INSERT INTO lockbox_audit (proxy_id, seq, \"time\", \"type\", record, line) \
             VALUES ('node-2', 1, now(), 'statement', $1::text::jsonb, $1)",
            &[&line],
        )
        .await
        .expect("node-2's record");
    let (_, page) = get_audit(&env, "dave", "limit=10000").await;
    let cursor = cursor_after(&page).expect("a record");
    run(&mut raw, "SELECT 'cached probe two'").await;
    wait_shipped(&audit_db, "cached probe two").await;
    let (status, next) = get_audit(&env, "dave", &cursor).await;
    assert_eq!(status, 200, "{next}");
    assert!(
        next.to_string().contains("cached probe two"),
        "paging on from {cursor} never shows the new record: {next}"
    );
}

/// Attack 12, finding 3: the sink adds the arrival column at its start with an `ALTER
/// TABLE` that waits for the table's ACCESS EXCLUSIVE lock with no limit. Behind any
/// reader of the table (a long download of the fleet's trail, a report) it waited, and
/// every shipper's INSERT and every reader queued behind it: the whole fleet's trail
/// stopped reaching the table for as long as the reader ran.
#[tokio::test]
async fn adding_the_arrival_column_does_not_stop_shipping_behind_a_reader() {
    let audit_db = "a_arrival_alter_wait".to_string();
    // The table exists before the reader and the lockbox start.
    let pg = cluster();
    pg.psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {audit_db} WITH (FORCE)"),
    )
    .expect("drop audit database");
    pg.psql("postgres", &format!("CREATE DATABASE {audit_db}"))
        .expect("create audit database");
    pg.psql(&audit_db, OLD_TABLE).expect("the old table");
    let reader = connect(&audit_db).await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM lockbox_audit")
        .await
        .expect("a reader inside the table");

    let mut env = Env::prepare("arrival_alter_wait", Options::default());
    let mut text = std::fs::read_to_string(&env.config_path).expect("config");
    text.push_str(&format!(
        "\n[audit.postgres]\nurl = \"postgres://postgres@127.0.0.1:{}/{audit_db}\"\nproxy_id = \"node-1\"\nbatch_size = 50\n",
        pg.port
    ));
    std::fs::write(&env.config_path, text).expect("config");
    let config = lockbox::config::Config::load(&env.config_path).expect("config loads");
    env.audit_path = config.audit_path.clone();
    env.server = Some(lockbox::server::start(config).await.expect("server starts"));
    let mut raw = session(&env).await;
    run(&mut raw, "SELECT 'behind a reader'").await;
    // Looked for without queueing behind the ALTER itself (psql would wait with it).
    let db = connect(&audit_db).await;
    db.batch_execute("SET lock_timeout = '1s'")
        .await
        .expect("lock_timeout");
    let mut found = false;
    for _ in 0..100 {
        let shipped = db
            .query_one(
                "SELECT count(*) FROM lockbox_audit WHERE line LIKE '%behind a reader%'",
                &[],
            )
            .await
            .ok()
            .map(|r| r.get::<_, i64>(0));
        if shipped > Some(0) {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    reader
        .batch_execute("COMMIT")
        .await
        .expect("the reader ends");
    assert!(found, "nothing shipped while a reader was in the table");
}

/// A TCP relay to the cluster that, once armed, stops passing the client's bytes right
/// after the first message taking the arrival lock: the shipper stalls holding it, as a
/// proxy whose network or process froze mid-batch would.
async fn freezing_relay(armed: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("relay listens");
    let port = listener.local_addr().expect("address").port();
    let upstream = cluster().port;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let armed = armed.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let to_client = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    let _ = client_write.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let locks = buf[..n]
                        .windows(b"pg_advisory_xact_lock".len())
                        .any(|w| w == b"pg_advisory_xact_lock");
                    if locks && armed.swap(false, Ordering::SeqCst) {
                        // Frozen: nothing more of the client's reaches the server.
                        let _ = to_client.await;
                        return;
                    }
                }
                to_client.abort();
            });
        }
    });
    port
}

/// Attack 12, finding 4: a shipper that stalls between taking the arrival lock and its
/// COMMIT (a frozen process, a network that drops packets without a reset) held the lock
/// for as long as its idle session lived, hours until TCP keepalive noticed: every other
/// shipper of the table timed out on the lock, retried and timed out again, and the
/// fleet's trail stopped reaching the table.
#[tokio::test]
async fn a_shipper_stalled_holding_the_arrival_lock_does_not_hold_it_forever() {
    let armed = Arc::new(AtomicBool::new(false));
    let port = freezing_relay(armed.clone()).await;
    let (env, audit_db) = sink_env_with("arrival_stall", OLD_TABLE, Some(port)).await;
    let mut raw = session(&env).await;
    run(&mut raw, "SELECT 'before the stall'").await;
    wait_shipped(&audit_db, "before the stall").await;
    armed.store(true, Ordering::SeqCst);
    run(&mut raw, "SELECT 'during the stall'").await;
    let db = connect(&audit_db).await;
    let held = || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
                &[],
            )
            .await
            .expect("locks")
            .get(0);
        n > 0
    };
    // The stall happens: the lock is taken and kept.
    let mut stalled = false;
    for _ in 0..150 {
        if !armed.load(Ordering::SeqCst) && held().await {
            stalled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stalled, "the relay never froze a shipper holding the lock");
    // Another shipper (here the test) gets the lock in the end.
    let mut released = false;
    for _ in 0..120 {
        if !held().await {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(released, "a stalled shipper keeps the table's arrival lock");
    // And the stalled node ships again once its connection is gone.
    wait_shipped(&audit_db, "during the stall").await;
}
